"""Training configuration as plain data: a dataclass whose defaults are the paper's ImageNet-1K recipe.

A run's configuration is resolved in three layers, later ones winning:

1. the defaults below (paper Table 16, common to every variant),
2. a named recipe in ``unireplknet/configs/<name>.json`` or any JSON file (``--config NAME|FILE``),
3. command-line flags.

The resolved config (with the learning rate already scaled to the global batch) is written to
``config.json`` in the run folder and stored in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from unireplknet.errors import UserError

DEFAULT_CONFIG = "digits"


@dataclass
class TrainConfig:
    """Every knob of a training run. Field comments give the paper's value where it has one."""

    # --- task ---
    task: str = "classification"  # classification (images) | audio | forecast | ... (unireplknet.tasks)
    task_args: dict[str, Any] = field(default_factory=dict)  # task-specific settings (see docs/modalities.md)
    # --- model ---
    model: str | None = "unireplknet_t"  # registered name; None = build UniRepLKNet from `arch`
    arch: dict[str, Any] | None = None  # UniRepLKNet constructor kwargs (depths, dims, kernel_sizes, ...)
    pretrained: bool = False  # start from the official weights of `model`
    finetune: str | None = None  # checkpoint to start from (a new head when the class count differs)
    drop_path: float = 0.2  # stochastic depth (Table 16: per variant)
    layer_scale_init_value: float = 1e-6
    head_init_scale: float = 1.0
    # --- data ---
    data: str | None = "digits"  # "digits" (embedded) or an ImageFolder root with train/ and val/
    img_size: int = 224
    in_chans: int = 3
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
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
    min_lr: float = 1e-6
    warmup_lr: float = 1e-6
    warmup_epochs: float = 5
    weight_decay: float = 0.05
    layer_decay: float | None = None  # layer-wise lr decay (fine-tuning); None = off
    clip_grad: float | None = None
    model_ema: bool = False
    model_ema_decay: float = 0.9999
    # --- performance ---
    amp: str = "none"  # none | bf16 | fp16
    channels_last: bool = False
    grad_checkpointing: bool = False
    compile: bool = False
    sync_bn: bool = True  # SyncBatchNorm when running under DDP with more than one process
    threads: int | None = None  # CPU threads per process (torch.set_num_threads); None = torch's default
    # --- run ---
    seed: int = 0
    device: str | None = None  # cpu | cuda; None = cuda when available
    output: str | None = None  # run folder; None = runs/<timestamp>
    save_interval_steps: int = 0  # also checkpoint every N optimizer steps (0 = at epoch ends only)
    max_steps: int | None = None  # stop after this many optimizer steps in total (smoke tests)
    limit_train_batches: int | None = None  # per epoch
    limit_val_batches: int | None = None
    export_onnx: bool = True
    log_interval: int = 50

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def global_batch(self, world_size: int) -> int:
        return self.batch_size * world_size * self.accum_steps


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


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
    """Build a ``TrainConfig`` from a recipe dict and overrides (``None`` values in overrides are ignored)."""
    values: dict[str, Any] = {}
    for source in (base or {}, {k: v for k, v in (overrides or {}).items() if v is not None}):
        unknown = sorted(set(source) - FIELDS)
        if unknown:
            raise UserError(f"unknown config key(s) {', '.join(unknown)}; valid keys are the fields of "
                            "TrainConfig (see docs/training.md)")
        values.update(source)
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def load_config(name_or_path: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the recipe ``name_or_path`` (default: the embedded ``digits``), then overrides."""
    return make_config(read_config_file(name_or_path or DEFAULT_CONFIG), overrides)


def validate(cfg: TrainConfig) -> None:
    """Reject impossible values with a one-line ``UserError``."""
    if not cfg.data:
        raise UserError("this recipe needs a dataset: pass --data DIR (an ImageFolder root with train/ "
                        "and val/)")
    checks = [
        (cfg.epochs >= 1, "epochs must be at least 1"),
        (cfg.batch_size >= 1, "batch size must be at least 1"),
        (cfg.accum_steps >= 1, "accum_steps must be at least 1"),
        (cfg.img_size >= 8, "img_size must be at least 8"),
        (cfg.amp in ("none", "bf16", "fp16"), f"amp must be none, bf16 or fp16, not '{cfg.amp}'"),
        (cfg.device in (None, "cpu", "cuda"), f"device must be cpu or cuda, not '{cfg.device}'"),
        (cfg.workers >= 0, "workers must be >= 0"),
        (cfg.threads is None or cfg.threads >= 1, "threads must be at least 1"),
        (0 <= cfg.drop_path < 1, "drop_path must be in [0, 1)"),
        (cfg.lr is None or cfg.lr > 0, "lr must be positive"),
        (cfg.max_steps is None or cfg.max_steps >= 1, "max_steps must be at least 1"),
        (cfg.limit_train_batches is None or cfg.limit_train_batches >= 1, "limit_train_batches must be >= 1"),
        (cfg.limit_val_batches is None or cfg.limit_val_batches >= 1, "limit_val_batches must be >= 1"),
        (cfg.model is not None or cfg.arch is not None,
         "set either model (a name) or arch (constructor kwargs)"),
        (isinstance(cfg.task_args, dict), "task_args must be a JSON object"),
        (len(cfg.mean) == cfg.in_chans and len(cfg.std) == cfg.in_chans, "mean and std need in_chans values"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(f"bad setting: {message}")
