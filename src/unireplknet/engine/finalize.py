"""End of a training run (rank 0): evaluate the best weights, re-parameterize and check the deploy form
predicts the same labels, save the deploy checkpoint, export and verify ONNX, write the report and
``summary.json``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from unireplknet.data.datasets import drop_corrupt
from unireplknet.engine.checkpoint import atomic_write_text
from unireplknet.engine.report import confusion_matrix, read_metrics, write_report
from unireplknet.tasks.classification import model_label, topk_correct

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_both(model: nn.Module, deploy: nn.Module, loader: Any, device: torch.device,
                  progress: bool = False) -> dict[str, Any]:
    """One pass over ``loader``: the training form's metrics and predictions, and how far the deploy form's
    logits and labels are from them."""
    from tqdm import tqdm

    model.eval()
    deploy.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss_sum, n, c1, c5, agree, max_diff = 0.0, 0, 0, 0, 0, 0.0
    preds: list[int] = []
    trues: list[int] = []
    for images, targets in tqdm(loader, desc="final eval", disable=not progress, leave=False,
                                dynamic_ncols=True):
        images, targets, _ = drop_corrupt(images, targets)
        if len(images) == 0:
            continue
        images, targets = images.to(device), targets.to(device)
        logits, logits_d = model(images).float(), deploy(images).float()
        loss_sum += float(loss_fn(logits, targets))
        k1, k5 = topk_correct(logits, targets)
        c1, c5, n = c1 + k1, c5 + k5, n + len(targets)
        agree += int((logits.argmax(1) == logits_d.argmax(1)).sum())
        max_diff = max(max_diff, float((logits - logits_d).abs().max()))
        preds += logits.argmax(1).tolist()
        trues += targets.tolist()
    n_ = max(n, 1)
    return {"val_loss": loss_sum / n_, "val_acc1": 100.0 * c1 / n_, "val_acc5": 100.0 * c5 / n_,
            "val_samples": n, "preds": preds, "targets": trues, "deploy_label_agreement": agree / n_,
            "deploy_max_abs_diff": max_diff}


def finalize(*, cfg: Any, model: nn.Module, meta: dict[str, Any], val_set: Any, class_names: list[str],
             run_dir: Path, state: Any, device: torch.device, t_start: float, progress: bool,
             world_size: int = 1) -> dict[str, Any]:
    """Write the deploy checkpoint, ONNX file, report and summary; returns the summary."""
    from unireplknet.tasks.base import best_and_deploy

    # the best weights rebuilt as users load them (plain BatchNorm, no DDP/compile wrappers), and the deploy
    # form (re-parameterized; saved as deploy.pt), which must predict the same labels
    model, deploy, paths = best_and_deploy(model, meta, run_dir, device)
    loader = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers)
    if cfg.limit_val_batches:
        loader = list(_take(loader, cfg.limit_val_batches))  # type: ignore[assignment]

    final = evaluate_both(model, deploy, loader, device, progress)
    same, deploy_diff = final["deploy_label_agreement"], final["deploy_max_abs_diff"]
    if same < 1.0:
        log.warning("deploy form disagrees with the training form on %.2f%% of the labels (max |diff| %.2e)",
                    100 * (1 - same), deploy_diff)
    else:
        log.info("deploy form predicts the same labels (max |logit diff| %.2e)", deploy_diff)

    summary: dict[str, Any] = {
        "status": "completed",
        "task": "classification",
        "model": model_label(cfg),
        "data": cfg.data,
        "val_acc1": final["val_acc1"],
        "val_acc5": final["val_acc5"],
        "val_loss": final["val_loss"],
        "val_samples": final["val_samples"],
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "world_size": world_size,
        "global_batch": cfg.global_batch(world_size),
        "steps": state.step,
        "deploy_same_labels": same == 1.0,
        "deploy_label_agreement": same,
        "deploy_max_abs_diff": deploy_diff,
        "corrupt_images": state.corrupt_images,
    }
    if cfg.export_onnx:
        from unireplknet.engine.export import export_onnx, verify_onnx

        onnx_path = export_onnx(deploy.cpu(), run_dir / "model.onnx", input_size=tuple(meta["input_size"]))
        sample = next(iter(loader))[0][:8].cpu()
        summary["onnx_max_abs_diff"] = float(verify_onnx(deploy, onnx_path, sample))
        paths["onnx"] = str(onnx_path)
        log.info("ONNX export %s: max |onnxruntime - PyTorch| = %.2e", onnx_path,
                 summary["onnx_max_abs_diff"])

    summary["wall_time_s"] = round(time.time() - t_start, 1)
    cm = confusion_matrix(final["preds"], final["targets"], len(class_names))
    report = write_report(run_dir, read_metrics(run_dir / "metrics.jsonl"), cm, class_names, summary)
    paths.update({f"report_{k}" if k != "report" else "report": str(v) for k, v in report.items()})
    summary["paths"] = paths
    atomic_write_text(json.dumps(summary, indent=2) + "\n", run_dir / "summary.json")
    return summary


def _take(loader: DataLoader, n: int):
    for i, batch in enumerate(loader):
        if i >= n:
            return
        yield batch
