"""Training configuration as plain data: a dataclass whose defaults are the paper's ImageNet-1K recipe.

A run's configuration is resolved in three layers, later ones winning:

1. the defaults below (paper Table 16, common to every variant),
2. a named recipe in ``unireplknet/configs/<name>.json`` or any JSON file (``--config NAME|FILE``),
3. command-line flags and ``--set KEY=VALUE``.

Every value is checked against its field's type and range (one-line errors). The resolved config (with the
learning rate already scaled to the global batch) is written to ``config.json`` in the run folder and stored in
every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from unireplknet.errors import UserError
from unireplknet.models.pretrained import IMAGENET_MEAN, IMAGENET_STD
from unireplknet.utils.typed import check, from_dict

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "digits"
MAX_IMG_SIZE = 4096  # beyond every setting of the paper (224…1024; 2048 long side for dense tasks)
RETIRED_KEYS = {"log_interval": "the per-epoch log line and the progress display replace it"}


@dataclass
class TrainConfig:
    """Every knob of a training run. Field comments give the paper's value where it has one."""

    # --- task ---
    task: str = "classification"  # classification (images) | audio | forecast | ... (unireplknet.tasks)
    task_args: dict[str, Any] = field(default_factory=dict)  # the task's own settings (its Args dataclass)
    # --- model ---
    model: str | None = "unireplknet_t"  # registered name; None = build UniRepLKNet from `arch`
    arch: dict[str, Any] | None = None  # UniRepLKNet constructor kwargs (depths, dims, kernel_sizes, ...)
    pretrained: bool = False  # start from the official weights of `model`
    finetune: str | None = None  # checkpoint to start from (a new head when the class count differs)
    drop_path: float = 0.2  # stochastic depth (Table 16: per variant)
    layer_scale_init_value: float = 1e-6
    head_init_scale: float = 1.0
    # --- data ---
    data: str | None = "digits"  # a built-in dataset name or a folder/file of the task's layout
    img_size: int = 224
    in_chans: int = 3
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    crop_pct: float = 0.875  # eval: resize to img_size / crop_pct, center crop img_size
    interpolation: str = "bicubic"
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # random resized crop area range
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5
    color_jitter: float = 0.4
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # RandAugment (timm syntax); None = off
    reprob: float = 0.25  # random erasing probability
    remode: str = "pixel"
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1  # label smoothing
    workers: int = 8
    pin_memory: bool = True
    # --- optimisation ---
    epochs: int = 300
    batch_size: int = 128  # per process; global = batch_size * world_size * accum_steps
    accum_steps: int = 1
    opt: str = "adamw"
    lr: float | None = None  # absolute lr; None = lr_base * global_batch / lr_base_size
    lr_base: float = 4e-3
    lr_base_size: int = 4096
    sched: Literal["cosine", "poly", "step"] = "cosine"  # lr schedule after the linear warm-up
    min_lr: float = 1e-6
    warmup_lr: float = 1e-6
    warmup_epochs: float = 5  # fractional: e.g. 1,500 iterations = 1500 / iterations per epoch
    poly_power: float = 1.0  # poly: lr = base * (1 - t / epochs) ** power (UPerNet's schedule)
    decay_epochs: list[float] = field(default_factory=list)  # step: multiply the lr by decay_rate at these epochs
    decay_rate: float = 0.1
    weight_decay: float = 0.05
    layer_decay: float | None = None  # layer-wise lr decay (fine-tuning); None = off
    clip_grad: float | None = None
    model_ema: bool = False
    model_ema_decay: float = 0.9999
    # --- performance ---
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    grad_checkpointing: bool = False
    compile: bool = False
    sync_bn: bool = True  # SyncBatchNorm when running under DDP with more than one process
    threads: int | None = None  # CPU threads per process (torch.set_num_threads); None = torch's default
    # --- run ---
    seed: int = 0
    device: Literal["cpu", "cuda"] | None = None  # None = cuda when available
    output: str | None = None  # run folder; None = runs/train-<time>
    save_interval_steps: int = 0  # also checkpoint every N optimizer steps (0 = at epoch ends only)
    max_steps: int | None = None  # stop after this many optimizer steps in total (smoke tests)
    limit_train_batches: int | None = None  # per epoch
    limit_val_batches: int | None = None
    export_onnx: bool = True
    tensorboard: bool = False  # also write TensorBoard event files to <output>/tensorboard (extra: tensorboard)

    def __post_init__(self) -> None:
        in_range = lambda v, lo, hi: v is None or lo <= v <= hi  # noqa: E731
        check([
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.accum_steps >= 1, "accum_steps must be at least 1"),
            (8 <= self.img_size <= MAX_IMG_SIZE, f"img_size must be in 8…{MAX_IMG_SIZE}, got {self.img_size}"),
            (self.in_chans >= 1, "in_chans must be at least 1"),
            (self.workers >= 0, "workers must be 0 or more"),
            (self.threads is None or self.threads >= 1, "threads must be at least 1"),
            (0 <= self.drop_path < 1, "drop_path must be in [0, 1)"),
            (self.lr is None or self.lr > 0, "lr must be positive"),
            (self.lr_base > 0 and self.lr_base_size >= 1, "lr_base must be positive"),
            (self.min_lr >= 0 and self.warmup_lr >= 0, "min_lr and warmup_lr must be 0 or more"),
            (self.warmup_epochs >= 0, "warmup_epochs must be 0 or more"),
            (self.poly_power > 0 and 0 < self.decay_rate <= 1, "poly_power must be positive, decay_rate in (0, 1]"),
            (self.sched != "step" or bool(self.decay_epochs), "sched step needs decay_epochs (e.g. [27, 33])"),
            (self.weight_decay >= 0, "weight_decay must be 0 or more"),
            (self.layer_decay is None or 0 < self.layer_decay <= 1, "layer_decay must be in (0, 1]"),
            (self.clip_grad is None or self.clip_grad > 0, "clip_grad must be positive (or null: off)"),
            (0 <= self.model_ema_decay < 1, "model_ema_decay must be in [0, 1)"),
            (0 <= self.smoothing < 1, "smoothing must be in [0, 1)"),
            (self.mixup >= 0 and self.cutmix >= 0, "mixup and cutmix must be 0 (off) or more"),
            (in_range(self.mixup_prob, 0, 1) and in_range(self.mixup_switch_prob, 0, 1),
             "mixup_prob and mixup_switch_prob must be in [0, 1]"),
            (in_range(self.hflip, 0, 1) and in_range(self.reprob, 0, 1), "hflip and reprob must be in [0, 1]"),
            (self.color_jitter >= 0, "color_jitter must be 0 or more"),
            (0 < self.crop_pct <= 1, "crop_pct must be in (0, 1]"),
            (self.save_interval_steps >= 0, "save_interval_steps must be 0 or more"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be at least 1"),
            (self.limit_train_batches is None or self.limit_train_batches >= 1, "limit_train_batches must be >= 1"),
            (self.limit_val_batches is None or self.limit_val_batches >= 1, "limit_val_batches must be >= 1"),
            (self.model is not None or self.arch is not None, "set either model (a name) or arch (kwargs)"),
            (len(self.mean) == self.in_chans and len(self.std) == self.in_chans, "mean and std need in_chans values"),
            (not (self.pretrained and self.model is None),
             "pretrained weights exist for the registered variants only: set model (e.g. unireplknet_a) or drop "
             "pretrained"),
        ])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def global_batch(self, world_size: int) -> int:
        return self.batch_size * world_size * self.accum_steps


def available_configs() -> list[str]:
    """Names of the recipes shipped in ``unireplknet/configs``."""
    root = resources.files("unireplknet") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def read_config_file(name_or_path: str) -> dict[str, Any]:
    """Return the dict of a named recipe or a JSON file; a clear ``UserError`` for anything else."""
    path = Path(name_or_path)
    if name_or_path.endswith(".json") or path.is_file():
        if not path.is_file():
            raise UserError(f"config file '{name_or_path}' does not exist; pass a JSON file or one of: "
                            f"{', '.join(available_configs())}")
        text = path.read_text()
    else:
        res = resources.files("unireplknet") / "configs" / f"{name_or_path}.json"
        if not res.is_file():
            raise UserError(f"unknown config '{name_or_path}'; use one of: {', '.join(available_configs())} "
                            "or a path to a JSON file")
        text = res.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"config '{name_or_path}' is not valid JSON ({err}); fix the file") from None
    if not isinstance(data, dict):
        raise UserError(f"config '{name_or_path}' must hold a JSON object of settings")
    data.pop("_comment", None)
    return data


def make_config(base: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A checked ``TrainConfig`` from a recipe dict and overrides (``None`` values in overrides are ignored)."""
    values = {**(base or {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    for key in sorted(set(values) & set(RETIRED_KEYS)):
        log.warning("config key %s is no longer used (%s); ignored", key, RETIRED_KEYS[key])
        values.pop(key)
    return from_dict(TrainConfig, values, "config")


def load_config(name_or_path: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the recipe ``name_or_path`` (default: the built-in ``digits``), then overrides."""
    return make_config(read_config_file(name_or_path or DEFAULT_CONFIG), overrides)
