"""The end of a run (rank 0), the same for every task: the best weights rebuilt as users load them, their
re-parameterized deploy form (``deploy.pt``) checked against them on every held-out batch, the metrics of both
splits, ``summary.json`` with the same base keys for every task, the report, and ONNX where the task can export."""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unireplknet.engine.checkpoint import model_state_dict, unwrap_model
from unireplknet.engine.metrics import read_metrics
from unireplknet.engine.report import plot_curves, write_report
from unireplknet.engine.task import EvalContext, Task, eval_loader
from unireplknet.models import build_model_from_checkpoint, read_checkpoint, reparameterize
from unireplknet.utils.atomic import atomic_save, atomic_write_text

if TYPE_CHECKING:
    from unireplknet.engine.run import Run
    from unireplknet.engine.run_folder import RunFolder

log = logging.getLogger(__name__)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


DETECTION_KEYS = ("boxes", "labels", "scores")


def _match_detections(out: dict, ref: dict) -> dict | None:
    """``ref``'s detections reordered to pair with ``out``'s (torchvision's per-image dicts: boxes (K, 4), labels
    (K,), scores (K,), masks ...): each of ``out``'s, best score first, takes the closest unused box of ``ref``
    with the same label. Two detections whose scores nearly tie can swap ranks between the training and the
    deploy form; compared position by position they would look like a difference of a whole box. None when
    the counts differ or some detection has no partner of its label."""
    n = len(out["scores"])
    if len(ref["scores"]) != n:
        return None
    dist = (out["boxes"][:, None].float() - ref["boxes"][None].float()).abs().amax(-1) if n else None  # (K, K)
    order, used = [0] * n, set()
    for i in torch.argsort(out["scores"], descending=True).tolist():
        same = [j for j in range(n) if j not in used and int(ref["labels"][j]) == int(out["labels"][i])]
        if not same:
            return None
        j = min(same, key=lambda j: float(dist[i, j]))
        order[i] = j
        used.add(j)
    index = torch.tensor(order, dtype=torch.long)
    return {k: v[index] if isinstance(v, torch.Tensor) and len(v) == n else v for k, v in ref.items()}


def _paired(out: Any, ref: Any) -> Any:
    """``ref`` with each per-image detection dict reordered to pair with ``out``'s (:func:`_match_detections`);
    anything else unchanged."""
    if isinstance(out, (list, tuple)) and isinstance(ref, (list, tuple)) and len(out) == len(ref):
        return [_match_detections(o, r) or r if isinstance(o, dict) and isinstance(r, dict)
                and all(k in o and k in r for k in DETECTION_KEYS) else r for o, r in zip(out, ref)]
    return ref


def output_difference(out: Any, ref: Any) -> float:
    """The largest absolute difference between two model outputs (tensors, or lists / dicts of them); infinite
    when their structure or shapes differ (e.g. a detector keeping another number of boxes). Detections
    (dicts with boxes, labels and scores) are paired by label and box first, not by rank. Boolean tensors (a
    detector's thresholded masks) are left out: they differ by whole pixels where a probability sits at the
    threshold, which :func:`mask_disagreement` counts instead."""
    return _largest_difference(out, _paired(out, ref))


def mask_disagreement(out: Any, ref: Any) -> tuple[int, int]:
    """(pixels that differ, pixels compared) over the boolean tensors of two outputs, detections paired first."""
    return _mask_counts(out, _paired(out, ref))


def _largest_difference(out: Any, ref: Any) -> float:
    pairs = list(zip(_tensors(out), _tensors(ref)))
    if len(pairs) != len(list(_tensors(out))) or len(pairs) != len(list(_tensors(ref))):
        return math.inf
    diff = 0.0
    for a, b in pairs:
        if a.shape != b.shape:
            return math.inf
        if a.numel() and a.dtype != torch.bool:
            diff = max(diff, float((a.float() - b.float()).abs().max()))
    return diff


def _mask_counts(out: Any, ref: Any) -> tuple[int, int]:
    differ = total = 0
    for a, b in zip(_tensors(out), _tensors(ref)):
        if a.dtype == torch.bool and b.dtype == torch.bool and a.shape == b.shape:
            differ, total = differ + int((a != b).sum()), total + a.numel()
    return differ, total


class DeployCheck(nn.Module):
    """Runs the training form and the deploy form on every batch and returns the training form's output, keeping
    the largest output difference, the share of binary mask pixels that agree (detectors) and, for class scores
    on dim 1, how many predicted labels agree.

    A label that flips where the training form's two best scores lie within ``TIE`` of each other (a near-tie
    that float rounding decides, common over the many pixels of a segmentation) is counted apart from a real flip;
    ``deploy_same_labels`` holds when every flip is such a tie."""

    TIE = 1e-4

    def __init__(self, model: nn.Module, deploy: nn.Module, labels: bool) -> None:
        super().__init__()
        self.model, self.deploy, self.labels = model, deploy, labels
        self.max_diff, self.agree, self.tied, self.total = 0.0, 0, 0, 0
        self.mask_differ, self.mask_total = 0, 0

    def forward(self, *args: Any) -> Any:
        out, ref = self.model(*args), self.deploy(*args)
        paired = _paired(out, ref)  # detections paired once for both measures
        self.max_diff = max(self.max_diff, _largest_difference(out, paired))
        differ, total = _mask_counts(out, paired)
        self.mask_differ, self.mask_total = self.mask_differ + differ, self.mask_total + total
        for a, b in zip(_tensors(out), _tensors(ref)):
            if self.labels and a.is_floating_point() and a.dim() >= 2 and a.shape == b.shape:
                ours, theirs = a.argmax(1), b.argmax(1)
                flipped = ours != theirs
                margin = a.amax(1) - a.gather(1, theirs.unsqueeze(1)).squeeze(1)  # training-form score lost
                self.agree += int((~flipped).sum())
                self.tied += int((flipped & (margin.float() < self.TIE)).sum())
                self.total += ours.numel()
        return out

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"deploy_max_abs_diff": self.max_diff}
        if self.mask_total:
            out["deploy_mask_pixel_agreement"] = 1 - self.mask_differ / self.mask_total
        if self.labels:
            agreement = self.agree / max(self.total, 1)
            real_flips = self.total - self.agree - self.tied
            out |= {"deploy_same_labels": real_flips == 0, "deploy_label_agreement": agreement,
                    "deploy_tied_label_flips": self.tied}
            if real_flips:
                log.warning("deploy form disagrees with the training form on %.2f%% of the labels (max |diff| "
                            "%.2e)", 100 * real_flips / max(self.total, 1), self.max_diff)
        return out


def finalize(run: Run, folder: RunFolder) -> dict[str, Any]:
    """Write ``deploy.pt``, the metrics, ``model.onnx``, the report and ``summary.json``; returns the summary."""
    task, cfg, data, device = run.task, run.cfg, run.data, run.dist.device
    paths = {"run_dir": folder.path, **{k: folder.file(f"{k}.pt") for k in ("last", "best", "deploy")},
             "config": folder.file("config.json"), "metrics": folder.file("metrics.jsonl"),
             "log": folder.file("train.log")}
    if folder.file("best.pt").is_file():  # the best weights rebuilt as users load them (no DDP/compile wrappers)
        model, _ = build_model_from_checkpoint(read_checkpoint(folder.file("best.pt")))
    else:
        model = unwrap_model(run.model)
        del paths["best"]
    model.to(device).eval()
    deploy = reparameterize(copy.deepcopy(model)).eval()
    atomic_save({"model": model_state_dict(deploy), "meta": dict(run.meta, deploy=True), "config": cfg.to_dict()},
                paths["deploy"])
    check = DeployCheck(model, deploy, task.labels_from_outputs)
    summary: dict[str, Any] = {
        "status": "completed", "task": task.name, "model": task.model_label(cfg), "data": cfg.data,
        "epochs": run.state.epoch, "steps": run.state.step, "best_epoch": run.state.best_epoch,
        "world_size": run.dist.world_size, "global_batch": cfg.global_batch(run.dist.world_size),
        "corrupt_samples": run.state.corrupt_samples, "test_split": data.held_out,
    }
    details: dict[str, Any] = {}
    for split in ("val", "test"):
        dataset = getattr(data, split)
        if dataset is None:
            continue
        ctx = EvalContext(device=device, limit_batches=cfg.limit_val_batches, distributed=False,
                          detailed=split == data.held_out, progress=run.progress)
        result = task.evaluate(check, eval_loader(dataset, cfg.batch_size, cfg.workers, data.collate), ctx)
        scalars = {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool))}
        summary |= {f"{split}_{k}": v for k, v in scalars.items()}
        if split == data.held_out:  # test_* always holds the held-out split's metrics (val when there is no test)
            summary |= {f"test_{k}": v for k, v in scalars.items()}
            details = result
    summary |= check.summary() | task.extra_summary(model, cfg, run.args, data, device)
    if cfg.export_onnx:
        summary |= _export(run, deploy, folder.file("model.onnx"), paths)
    summary["wall_time_s"] = round(time.time() - run.t_start, 1)
    out_dir = folder.file("report")
    figures = plot_curves(read_metrics(paths["metrics"]), out_dir, task.curves or {task.primary_metric:
                                                                                   task.primary_metric})
    figures |= task.report_figures(details, out_dir, data)
    paths |= {f"report_{name}": p for name, p in figures.items()}
    paths["report"] = write_report(out_dir, summary, figures)
    summary["paths"] = {k: str(v) for k, v in paths.items()}
    atomic_write_text(json.dumps(summary, indent=2) + "\n", folder.file("summary.json"))
    return summary


def _export(run: Run, deploy: nn.Module, path: Any, paths: dict[str, Any]) -> dict[str, Any]:
    from unireplknet.engine.export import export_onnx, verify_onnx

    blocker = run.task.export_blocker(run.meta)
    if blocker:
        log.info("no ONNX export: %s", blocker)
        return {"onnx_skipped": blocker}
    deploy = deploy.cpu()
    export_onnx(deploy, path, input_size=tuple(run.meta["input_size"]))
    sample = next(iter(eval_loader(getattr(run.data, run.data.held_out), 8, collate=run.data.collate)))[0]
    if not isinstance(sample, torch.Tensor) or list(sample.shape[1:]) != list(run.meta["input_size"]):
        sample = run.task.example_input(run.meta, 2)  # held-out images of their own sizes: a batch of the export's
    diff = verify_onnx(deploy, path, sample)
    paths["onnx"] = path
    log.info("ONNX export %s: max |onnxruntime - PyTorch| = %.2e", path, diff)
    return {"onnx_max_abs_diff": diff}


def summary_text(task: Task, summary: dict[str, Any]) -> str:
    """The lines ``unireplknet train`` prints at the end: run, the task's metrics, deploy and ONNX checks."""
    lines = ["", f"Training finished: {summary['model']} on {summary['data']}, {summary['epochs']} epochs, "
                 f"{summary['steps']} steps, {summary['wall_time_s']:.0f} s", *task.summary_lines(summary)]
    deploy = f"max |output diff| {summary['deploy_max_abs_diff']:.2e}"
    if "deploy_same_labels" in summary:
        ties = summary.get("deploy_tied_label_flips", 0)
        tied = f", {ties} flips at near-ties < {DeployCheck.TIE:g}" if ties else ""
        deploy = f"same labels {summary['deploy_same_labels']} ({deploy}{tied})"
    lines.append(f"  deploy form: {deploy}")
    if "onnx_max_abs_diff" in summary:
        lines.append(f"  ONNX: max |onnxruntime - PyTorch| {summary['onnx_max_abs_diff']:.2e}")
    elif "onnx_skipped" in summary:
        lines.append(f"  ONNX: not exported ({summary['onnx_skipped']})")
    lines.append(f"  run folder: {summary['paths']['run_dir']}  (summary.json, report/report.md)")
    return "\n".join(lines)
