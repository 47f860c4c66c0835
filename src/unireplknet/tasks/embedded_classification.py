"""Classification of a non-image modality (point clouds, video): embedder -> unchanged UniRepLKNet backbone
(with its own pooled classifier) -> logits, cross-entropy, overall and mean class accuracy (Table 10).

Subclasses supply the datasets (``build_data``) and the embedder (``embedder_spec``). The end of a run
evaluates the best weights on the test split (``test_acc1``, ``test_macc`` in percent, Table 10's OA and
mAcc), checks the re-parameterized deploy form predicts the same labels, and writes ``deploy.pt``, the
report and ``summary.json``. No ONNX export: the point scatter has no portable ONNX form yet.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from unireplknet.errors import UserError
from unireplknet.tasks.base import Task, TaskData, best_and_deploy

log = logging.getLogger(__name__)


def mean_class_accuracy(preds: list[int], targets: list[int], num_classes: int) -> float:
    """Mean over the classes present in ``targets`` of their recall, in percent (Table 10's mAcc)."""
    p, t = np.asarray(preds), np.asarray(targets)
    accs = [float((p[t == c] == c).mean()) for c in range(num_classes) if (t == c).any()]
    return 100.0 * float(np.mean(accs)) if accs else 0.0


class EmbeddedClassificationTask(Task):
    """Shared pieces; subclasses set ``name``, ``default_config`` and implement ``build_data`` and
    ``embedder_spec``."""

    primary_metric = "val_acc1"
    mode = "max"

    # -- to override ---------------------------------------------------------------------------------------
    def embedder_spec(self, cfg: Any, data: TaskData) -> tuple[str, dict[str, Any]]:
        """(registered embedder name, constructor kwargs)."""
        raise NotImplementedError

    def input_shape(self, cfg: Any) -> list[int]:
        """Shape of one raw sample (without the batch), recorded in the checkpoint meta."""
        raise NotImplementedError

    # -- model ------------------------------------------------------------------------------------------------
    def _backbone_kwargs(self, cfg: Any, num_classes: int) -> dict[str, Any]:
        if cfg.model is not None:
            from unireplknet.models.variants import VARIANTS

            if cfg.model not in VARIANTS:
                raise UserError(f"unknown model '{cfg.model}' for task {self.name}; use one of "
                                f"{', '.join(VARIANTS)} or set arch")
            kwargs = {"depths": list(VARIANTS[cfg.model].depths), "dims": list(VARIANTS[cfg.model].dims)}
        else:
            kwargs = dict(cfg.arch or {})
        kwargs.update(num_classes=num_classes, in_chans=3)
        return kwargs

    def build_model(self, cfg: Any, data: TaskData) -> nn.Module:
        from unireplknet.models.multimodal import build_embedder_model

        meta = self.build_meta(cfg, data)
        try:
            model = build_embedder_model(meta)
        except (TypeError, ValueError) as err:
            raise UserError(f"bad model settings for task {self.name}: {err}") from None
        backbone = model.backbone
        if cfg.drop_path:  # stochastic depth is a training-only setting: rebuild the backbone with it
            from unireplknet.models.unireplknet import UniRepLKNet

            model.backbone = UniRepLKNet(**meta["model_kwargs"], drop_path_rate=cfg.drop_path,
                                         layer_scale_init_value=cfg.layer_scale_init_value)
            del backbone
        if cfg.finetune:
            from unireplknet.tasks.classification import load_finetune

            load_finetune(model, cfg.finetune)
        return model

    def build_losses(self, cfg: Any, data: TaskData, mixup_active: bool) -> tuple[nn.Module, nn.Module]:
        return nn.CrossEntropyLoss(label_smoothing=cfg.smoothing), nn.CrossEntropyLoss()

    def build_meta(self, cfg: Any, data: TaskData, deploy: bool = False) -> dict[str, Any]:
        names = list(data.info["class_names"])
        emb_name, emb_kwargs = self.embedder_spec(cfg, data)
        return {"task": self.name, "model": None, "model_kwargs": self._backbone_kwargs(cfg, len(names)),
                "deploy": deploy, "embedder": {"name": emb_name, "kwargs": emb_kwargs}, "head": None,
                "class_names": names, "input_size": self.input_shape(cfg)}

    def check_resume(self, meta: dict[str, Any], data: TaskData, path: Path | None, cfg: Any) -> None:
        super().check_resume(meta, data, path, cfg)
        if list(meta.get("class_names", [])) != list(data.info["class_names"]):
            raise UserError(f"'{path}' was trained on other classes than {cfg.data} has; resume with the "
                            "same data or start a new run")

    def model_label(self, cfg: Any) -> str:
        from unireplknet.tasks.classification import model_label

        return f"{self.name} embedder + {model_label(cfg)}"

    # -- metrics ----------------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, loader: Any, *, device: torch.device, amp: str = "none",
                 channels_last: bool = False, limit_batches: int | None = None) -> dict[str, Any]:
        from unireplknet.engine.loops import evaluate

        out = evaluate(model, loader, device=device, amp=amp, limit_batches=limit_batches, gather=True)
        num_classes = int(max(out["targets"] + out["preds"] + [0])) + 1
        out["val_macc"] = mean_class_accuracy(out.pop("preds"), out.pop("targets"), num_classes)
        return out

    def epoch_line(self, row: dict[str, Any]) -> str:
        return (f"val_acc1 {row['val_acc1']:.2f}%  val_macc {row.get('val_macc', float('nan')):.2f}%  "
                f"val_loss {row['val_loss']:.4f}")

    # -- end of run -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _final_pass(self, model: nn.Module, deploy: nn.Module, loader: Any, device: torch.device,
                    num_classes: int) -> dict[str, Any]:
        from unireplknet.data.datasets import drop_corrupt

        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        loss, preds, trues, agree, diff = 0.0, [], [], 0, 0.0
        for x, y in loader:
            x, y, _ = drop_corrupt(x, y)
            if len(x) == 0:
                continue
            x, y = x.to(device), y.to(device)
            logits, logits_d = model(x).float(), deploy(x).float()
            loss += float(loss_fn(logits, y))
            preds += logits.argmax(1).tolist()
            trues += y.tolist()
            agree += int((logits.argmax(1) == logits_d.argmax(1)).sum())
            diff = max(diff, float((logits - logits_d).abs().max()))
        n = max(len(trues), 1)
        acc = 100.0 * float(np.mean(np.asarray(preds) == np.asarray(trues))) if trues else 0.0
        return {"acc1": acc, "macc": mean_class_accuracy(preds, trues, num_classes), "loss": loss / n,
                "samples": len(trues), "agree": agree / n, "diff": diff, "preds": preds, "targets": trues}

    def finalize(self, *, cfg: Any, model: nn.Module, meta: dict[str, Any], data: TaskData, run_dir: Path,
                 state: Any, device: torch.device, t_start: float, progress: bool,
                 world_size: int = 1) -> dict[str, Any]:
        from unireplknet.engine.checkpoint import atomic_write_text
        from unireplknet.engine.report import confusion_matrix, read_metrics, write_report

        run_dir = Path(run_dir)
        names = list(data.info["class_names"])
        model, deploy, paths = best_and_deploy(model, meta, run_dir, device)
        splits = {"val": data.val} | ({"test": data.test} if data.test is not None else {})
        results = {}
        for split, ds in splits.items():
            loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers)
            results[split] = self._final_pass(model, deploy, loader, device, len(names))
        test = results.get("test", results["val"])
        agree = min(r["agree"] for r in results.values())
        diff = max(r["diff"] for r in results.values())
        if agree < 1.0:
            log.warning("deploy form disagrees on %.2f%% of the labels (max |diff| %.2e)", 100 * (1 - agree), diff)
        summary: dict[str, Any] = {
            "status": "completed", "task": self.name, "model": self.model_label(cfg), "data": cfg.data,
            "test_acc1": test["acc1"], "test_macc": test["macc"], "test_loss": test["loss"],
            "test_samples": test["samples"],
            "test_split": "test" if "test" in results else data.info.get("val_split", "val"),
            "val_acc1": results["val"]["acc1"], "val_macc": results["val"]["macc"],
            "val_loss": results["val"]["loss"], "val_samples": results["val"]["samples"],
            "best_epoch": state.best_epoch, "epochs": state.epoch, "steps": state.step,
            "world_size": world_size, "global_batch": cfg.global_batch(world_size),
            "deploy_same_labels": agree == 1.0, "deploy_label_agreement": agree, "deploy_max_abs_diff": diff,
            "corrupt_samples": state.corrupt_images,
        }
        summary["wall_time_s"] = round(time.time() - t_start, 1)
        try:
            cm = confusion_matrix(test["preds"], test["targets"], len(names))
            report = write_report(run_dir, read_metrics(run_dir / "metrics.jsonl"), cm, names, summary)
            paths.update({f"report_{k}" if k != "report" else "report": str(v) for k, v in report.items()})
        except ImportError as err:  # matplotlib missing: the metrics are what matters
            log.warning("no report plots (%s)", err)
        summary["paths"] = paths
        atomic_write_text(json.dumps(summary, indent=2) + "\n", run_dir / "summary.json")
        log.info("%s: test top-1 %.2f%%, mean class accuracy %.2f%% (%d samples)", self.name, test["acc1"],
                 test["macc"], test["samples"])
        return summary

    def print_summary(self, summary: dict[str, Any]) -> None:
        lines = ["", f"Training finished: {summary['model']} on {summary['data']}, {summary['epochs']} epochs, "
                     f"{summary['steps']} steps, {summary['wall_time_s']:.0f} s",
                 f"  held-out ({summary['test_split']}) overall accuracy {summary['test_acc1']:.2f}%  mean class "
                 f"accuracy {summary['test_macc']:.2f}%  ({summary['test_samples']} samples)",
                 f"  deploy form: same labels {summary['deploy_same_labels']} (max |logit diff| "
                 f"{summary['deploy_max_abs_diff']:.2e})",
                 f"  run folder: {summary['paths']['run_dir']}  (summary.json)"]
        print("\n".join(lines))
