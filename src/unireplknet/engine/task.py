"""The one seam between the engine and a task (paper §3.3: one backbone for every modality; a task supplies the
embedder, the data, the head, the loss and the metrics).

The engine owns a run's life-cycle — run folder, seeds, loaders, optimizer, schedule, AMP, EMA, DDP,
checkpoints and resume, metric records, the end of the run (best weights, deploy-form check, summary, report,
ONNX) — and knows a task only through the :class:`Task` protocol below. A task is one file in ``tasks/``.

A training batch is ``(inputs, targets)``; ``inputs`` is a tensor or anything the task's model takes.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from unireplknet.errors import UserError
from unireplknet.utils.typed import from_dict

if TYPE_CHECKING:
    from unireplknet.engine.config import TrainConfig

#: ``criterion(model, inputs, targets) -> scalar loss`` (the training step's forward and loss).
Criterion = Callable[[nn.Module, Any, Any], torch.Tensor]


@dataclass
class TaskData:
    """Datasets of a run and what the task learned about them (``info``: class names, statistics, ...).
    ``test`` is the held-out split when the data has one; otherwise ``val`` is. ``collate`` batches samples when
    stacking does not (e.g. images of different sizes: lists)."""

    train: Dataset
    val: Dataset
    test: Dataset | None = None
    info: dict[str, Any] = field(default_factory=dict)
    collate: Callable[[list[Any]], Any] | None = None

    @property
    def held_out(self) -> str:
        return "test" if self.test is not None else "val"


@dataclass(frozen=True)
class EvalContext:
    """How to run a model over a loader."""

    device: torch.device
    amp: str = "none"
    channels_last: bool = False
    limit_batches: int | None = None
    distributed: bool = True  # sum over every rank's shard (per-epoch validation); False: this process only
    detailed: bool = False  # also return details for the report (confusion matrix, per-class tables)
    progress: bool = False


@dataclass(frozen=True)
class Request:
    """``unireplknet eval`` / ``predict`` on a checkpoint: ``data`` None means the data it was trained on;
    ``inputs`` are predict's files or folders, ``output`` where a task writes files (masks, drawings), ``text`` a
    sentence for tasks that take one (e.g. the object to segment)."""

    batch_size: int
    device: torch.device
    data: str | None = None
    workers: int = 0
    img_size: int | None = None
    inputs: list[str] = field(default_factory=list)
    topk: int = 5
    output: Path | None = None
    text: str | None = None


@dataclass
class NoArgs:
    """A task without settings of its own."""


def outputs_criterion(loss_fn: Callable[[Any, Any], torch.Tensor]) -> Criterion:
    """The usual criterion: ``loss_fn(model(inputs), targets)``."""
    return lambda model, inputs, targets: loss_fn(model(inputs), targets)


def eval_loader(dataset: Dataset, batch_size: int, workers: int = 0,
                collate: Callable[[list[Any]], Any] | None = None) -> DataLoader:
    """An in-order evaluation loader over ``dataset`` (one process)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)


class Task(Protocol):
    """What a task gives the engine. Subclass it (``class MyTask(Task)``) and register the class with
    :func:`unireplknet.tasks.register_task`; the methods with a body have defaults that fit most tasks."""

    name: ClassVar[str]
    Args: ClassVar[type] = NoArgs  # dataclass of the task's settings (``task_args`` in a config)
    default_config: ClassVar[str] = ""  # recipe of `unireplknet train --task NAME` without --config
    builtin_data: ClassVar[tuple[str, ...]] = ()  # names of datasets generated in the package
    primary_metric: ClassVar[str] = "loss"  # key of evaluate()'s result that picks best.pt
    mode: ClassVar[str] = "min"  # "max" (accuracy) or "min" (loss, MSE)
    labels_from_outputs: ClassVar[bool] = False  # outputs are class scores on dim 1 (the deploy check compares labels)
    curves: ClassVar[dict[str, str]] = {}  # report plots: file name -> metric key (default: the primary metric)
    resizable_input: ClassVar[bool] = False  # images: eval/predict may run at another size (img_size)

    def parse_args(self, raw: Mapping[str, Any]) -> Any:
        """``task_args`` of a config as the typed ``Args`` dataclass (unknown keys and wrong types refused)."""
        return from_dict(self.Args, dict(raw or {}), "task_args")

    # -- building a run ------------------------------------------------------------------------------------------
    @abstractmethod
    def build_data(self, cfg: TrainConfig, args: Any) -> TaskData:
        """Train / val / (test) datasets for ``cfg.data`` (a UserError names what is wrong with user data)."""

    @abstractmethod
    def build_model(self, cfg: TrainConfig, args: Any, data: TaskData) -> nn.Module:
        """The training-form model: fresh, from pretrained weights, or from ``cfg.finetune``."""

    @abstractmethod
    def model_meta(self, cfg: TrainConfig, args: Any, data: TaskData) -> dict[str, Any]:
        """What rebuilds the model from a checkpoint (``model``/``model_kwargs``, ``embedder``, ``head``,
        ``class_names``, ``input_size`` = one raw sample's shape, ...); the engine adds ``task``, ``deploy``,
        ``data`` and ``task_args``."""

    @abstractmethod
    def criterion(self, cfg: TrainConfig, args: Any, data: TaskData) -> Criterion:
        """The training loss of a batch (:func:`outputs_criterion` wraps a plain loss function)."""

    def batch_transform(self, cfg: TrainConfig, args: Any, data: TaskData) -> Callable[[Any, Any], Any] | None:
        """``(inputs, targets) -> (inputs, targets)`` on training batches (e.g. mixup), or None."""
        return None

    def resume_mismatch(self, meta: Mapping[str, Any], data: TaskData) -> str | None:
        """Why a checkpoint with ``meta`` cannot continue on ``data`` (None: it can)."""
        return None

    def model_label(self, cfg: TrainConfig) -> str:
        """A short name of the model for logs and the summary."""
        if cfg.model:
            return cfg.model
        arch = cfg.arch or {}
        return "UniRepLKNet(depths {}, dims {})".format(*("-".join(str(d) for d in arch.get(k, ()))
                                                           for k in ("depths", "dims")))

    # -- metrics -------------------------------------------------------------------------------------------------
    @abstractmethod
    def evaluate(self, model: nn.Module, loader: Any, ctx: EvalContext) -> dict[str, Any]:
        """Metrics of ``model`` over ``loader``: numbers (percent for accuracies) under plain names (``acc1``,
        ``loss``, ``samples``, ``corrupt``); the engine prefixes ``val_`` / ``test_``. With ``ctx.detailed``, also
        non-scalar details for :meth:`report_figures`."""

    def extra_summary(self, model: nn.Module, cfg: TrainConfig, args: Any, data: TaskData,
                      device: torch.device) -> dict[str, Any]:
        """Task-specific entries of summary.json besides the metrics (e.g. a forecaster's baseline table)."""
        return {}

    def report_figures(self, details: Mapping[str, Any], out_dir: Path, data: TaskData) -> dict[str, Path]:
        """Task-specific report files from the held-out split's detailed metrics (e.g. a confusion matrix)."""
        return {}

    def summary_lines(self, summary: Mapping[str, Any]) -> list[str]:
        """The metric lines printed at the end of ``unireplknet train``."""
        metrics = "  ".join(f"{k[5:]} {v:.4g}" for k, v in summary.items()
                            if k.startswith("test_") and isinstance(v, float))
        return [f"  held-out ({summary.get('test_split', 'val')}): {metrics}"]

    # -- checkpoints: eval / predict / export ----------------------------------------------------------------------
    def checkpoint_data(self, meta: Mapping[str, Any], cfg: TrainConfig, data: str | None) -> tuple[TaskData, Any]:
        """The datasets (and settings) of a checkpoint's task on ``data`` (None: the data it was trained on)."""
        if data is not None:
            cfg = dataclasses.replace(cfg, data=data)
        args = self.parse_args(meta.get("task_args") or {})
        built = self.build_data(cfg, args)
        mismatch = self.resume_mismatch(meta, built)
        if mismatch:
            raise UserError(f"cannot evaluate on {cfg.data}: {mismatch}")
        return built, args

    def evaluate_checkpoint(self, model: nn.Module, meta: Mapping[str, Any], cfg: TrainConfig,
                            request: Request) -> dict[str, Any]:
        """``unireplknet eval``: the held-out metrics of ``model`` on ``request.data`` (default: the checkpoint's
        own data), as ``test_*`` keys."""
        self.check_img_size(request.img_size)
        data, _ = self.checkpoint_data(meta, cfg, request.data)
        held_out = eval_loader(getattr(data, data.held_out), request.batch_size, request.workers, data.collate)
        result = self.evaluate(model.to(request.device), held_out, EvalContext(device=request.device,
                                                                               distributed=False))
        return {"task": self.name, "split": data.held_out, **{f"test_{k}": v for k, v in result.items()}}

    def check_img_size(self, img_size: int | None) -> None:
        """Refuse another input size for a task whose input is not an image to resize."""
        if img_size is not None and not self.resizable_input:
            raise UserError(f"--img-size applies to image models; a {self.name} model takes its own input size")

    def predict(self, model: nn.Module, meta: Mapping[str, Any], request: Request) -> Any:
        """``unireplknet predict``: JSON-able predictions for the input files (writing files under
        ``request.output`` where the task produces images)."""
        raise UserError(f"predict is not available for {self.name} checkpoints")

    def input_shape(self, meta: Mapping[str, Any], img_size: int | None = None) -> list[int]:
        """One input sample's shape: ``meta['input_size']``, an image model's side set to ``img_size``."""
        self.check_img_size(img_size)
        size = [int(v) for v in meta.get("input_size") or (3, 224, 224)]
        return size[:-2] + [img_size, img_size] if img_size is not None else size

    def example_input(self, meta: Mapping[str, Any], batch: int, img_size: int | None = None,
                      seed: int = 0) -> torch.Tensor:
        """A random batch ``(batch, *input_shape)`` for re-parameterization checks, export and benchmarks."""
        return torch.randn(batch, *self.input_shape(meta, img_size), generator=torch.Generator().manual_seed(seed))

    def export_blocker(self, meta: Mapping[str, Any]) -> str | None:
        """Why the model cannot be exported to ONNX (None: it can; its input is ``meta['input_size']``)."""
        return None
