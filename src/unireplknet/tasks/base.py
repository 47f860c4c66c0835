"""The task interface: what a modality supplies to the one training engine (paper §3.3).

A task turns a :class:`~unireplknet.engine.config.TrainConfig` into the pieces the trainer orchestrates:

- ``build_data(cfg)`` -> :class:`TaskData`: train / val / test datasets and ``info`` (``class_names``,
  ``variables`` ...). A batch is ``(inputs, targets)`` with ``inputs`` one tensor.
- ``build_model(cfg, data)``: embedder -> ``UniRepLKNet(in_chans=C')`` backbone -> head
  (:class:`unireplknet.models.multimodal.EmbedderModel`); images use the bare backbone.
- ``build_losses(cfg, data, mixup_active)`` -> (train loss, eval loss).
- ``build_batch_transform(cfg, data)``: ``(inputs, targets) -> (inputs, targets)`` on training batches
  (timm ``Mixup``), or ``None``.
- ``evaluate(model, loader, ...)`` -> ``{'val_<metric>': float, ...}`` over every rank's shard; holds
  ``primary_metric``, which picks ``best.pt`` in the direction ``mode`` (``'max'`` or ``'min'``).
- ``build_meta(cfg, data)``: the checkpoint ``meta``, with ``task`` and what rebuilds the model.
- ``check_resume(meta, data, path, cfg)``: refuse resuming a checkpoint on incompatible data.
- ``finalize(...)``: the end of a run (rank 0): test metrics, deploy check, ``summary.json``.

The trainer never looks inside a batch or a metric beyond these.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset


@dataclass
class TaskData:
    """Datasets of a run. ``test`` may be ``None`` (image classification evaluates on ``val``)."""

    train: Dataset
    val: Dataset
    test: Dataset | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Task:
    """Base class of a task; subclasses override the ``build_*``/``evaluate``/``finalize`` pieces."""

    name: str = ""
    primary_metric: str = "val_loss"  # key of evaluate()'s result used to pick best.pt
    mode: str = "min"  # "max" (accuracy) or "min" (loss, MSE)
    default_config: str = ""  # recipe used by `unireplknet train --task NAME` without --config

    # -- data / model ------------------------------------------------------------------------------------
    def build_data(self, cfg: Any) -> TaskData:
        raise NotImplementedError

    def build_model(self, cfg: Any, data: TaskData) -> nn.Module:
        raise NotImplementedError

    def build_losses(self, cfg: Any, data: TaskData, mixup_active: bool) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    def build_batch_transform(self, cfg: Any, data: TaskData) -> Callable[..., Any] | None:
        return None

    def build_meta(self, cfg: Any, data: TaskData, deploy: bool = False) -> dict[str, Any]:
        raise NotImplementedError

    def check_resume(self, meta: dict[str, Any], data: TaskData, path: Path | None, cfg: Any) -> None:
        if meta.get("task", "classification") != self.name:
            from unireplknet.errors import UserError

            raise UserError(f"'{path}' is a {meta.get('task', 'classification')} run, not {self.name}; "
                            "resume with the same --task")

    def model_label(self, cfg: Any) -> str:
        from unireplknet.tasks.classification import model_label

        return model_label(cfg)

    # -- metrics -----------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, loader: Any, *, device: torch.device, amp: str = "none",
                 channels_last: bool = False, limit_batches: int | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def is_better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` of the primary metric beats ``best`` (``None``: nothing yet)."""
        if best is None or math.isnan(best):
            return not math.isnan(value)
        return value > best if self.mode == "max" else value < best

    def epoch_line(self, row: dict[str, Any]) -> str:
        """The metric part of the per-epoch log line."""
        return "  ".join(f"{k} {v:.4g}" for k, v in row.items()
                         if k.startswith("val_") and isinstance(v, float))

    # -- end of run --------------------------------------------------------------------------------------
    def finalize(self, *, cfg: Any, model: nn.Module, meta: dict[str, Any], data: TaskData, run_dir: Path,
                 state: Any, device: torch.device, t_start: float, progress: bool,
                 world_size: int = 1) -> dict[str, Any]:
        raise NotImplementedError

    def print_summary(self, summary: dict[str, Any]) -> None:
        import json

        print(json.dumps({k: v for k, v in summary.items() if k != "paths"}, indent=2))


def task_args(cfg: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """``cfg.task_args`` over the task's ``defaults``; an unknown key is a UserError."""
    from unireplknet.errors import UserError

    given = dict(cfg.task_args or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise UserError(f"unknown task_args key(s) {', '.join(unknown)} for task '{cfg.task}'; valid: "
                        f"{', '.join(sorted(defaults))}")
    return {**defaults, **given}


def best_and_deploy(model: nn.Module, meta: dict[str, Any], run_dir: Path,
                    device: torch.device) -> tuple[nn.Module, nn.Module, dict[str, str]]:
    """The end-of-run models: the training form rebuilt from ``best.pt`` (as users load it) and its
    re-parameterized copy, which is saved as ``deploy.pt``. Returns (model, deploy, paths)."""
    import copy

    from unireplknet.engine.checkpoint import atomic_save, load_run_checkpoint, unwrap_model
    from unireplknet.models.checkpoint import build_model_from_checkpoint

    paths = {"run_dir": str(run_dir), "config": str(run_dir / "config.json"),
             "metrics": str(run_dir / "metrics.jsonl"), "last": str(run_dir / "last.pt"),
             "log": str(run_dir / "train.log")}
    best_path = run_dir / "best.pt"
    if best_path.is_file():
        model, _ = build_model_from_checkpoint(load_run_checkpoint(best_path))
        paths["best"] = str(best_path)
    else:
        model = unwrap_model(model)
    model.to(device).eval()
    deploy = copy.deepcopy(model)
    deploy.reparameterize()
    deploy.eval()
    state = {k: v.detach().cpu() for k, v in deploy.state_dict().items()}
    atomic_save({"model": state, "meta": dict(meta, deploy=True)}, run_dir / "deploy.pt")
    paths["deploy"] = str(run_dir / "deploy.pt")
    return model, deploy, paths


def write_summary(summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    import json

    from unireplknet.engine.checkpoint import atomic_write_text

    atomic_write_text(json.dumps(summary, indent=2) + "\n", run_dir / "summary.json")
    return summary
