"""`unireplknet train`: train a UniRepLKNet classifier (single process, or DDP under torchrun).

With no arguments it trains a small UniRepLKNet on the built-in digits dataset (the ``digits`` recipe),
then evaluates, re-parameterizes, exports to ONNX and writes a report into ``runs/train-<time>/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from unireplknet.cli._common import image_size, nonneg_int, positive_int
from unireplknet.errors import UserError

# flags that set the config field of the same name (flags left unset keep the recipe's value)
_FIELD_FLAGS = ("task", "data", "model", "epochs", "batch_size", "output", "device", "lr", "weight_decay",
                "warmup_epochs", "workers", "img_size", "amp", "accum_steps", "drop_path", "mixup", "cutmix",
                "smoothing", "layer_decay", "seed", "finetune", "pretrained", "grad_checkpointing", "channels_last",
                "compile", "model_ema", "model_ema_decay", "max_steps", "limit_train_batches", "limit_val_batches",
                "save_interval_steps", "export_onnx", "clip_grad", "tensorboard")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a classifier (default: a small UniRepLKNet on the built-in digits dataset)",
        description="Train UniRepLKNet. With no arguments: the built-in digits dataset, then evaluation, "
                    "re-parameterization, ONNX export and a report. Run under `torchrun --nproc_per_node N "
                    "-m unireplknet train ...` for DDP.")
    g = p.add_argument_group("run")
    g.add_argument("--task", metavar="NAME",
                   help="classification (images, default), audio, forecast, ... (docs/modalities.md); "
                        "without --config, the task's default recipe")
    g.add_argument("--config", metavar="NAME|FILE",
                   help="recipe: a name from unireplknet/configs (digits, unireplknet_t_in1k, ...) or a JSON "
                        "file "
                        "(default: digits)")
    g.add_argument("--data", metavar="DIR",
                   help="ImageFolder root with train/ and val/ class folders, or 'digits'")
    g.add_argument("--model", metavar="NAME", help="model name, e.g. unireplknet_a ... unireplknet_h")
    g.add_argument("--epochs", type=positive_int, metavar="N")
    g.add_argument("--batch-size", type=positive_int, metavar="N", help="per process")
    g.add_argument("--output", metavar="DIR", help="run folder (default: runs/train-<time>)")
    g.add_argument("--resume", nargs="?", const="auto", metavar="CKPT",
                   help="continue a run: from <output>/last.pt, or from the checkpoint/run folder given")
    g.add_argument("--overwrite", action="store_true", help="replace the run already in --output")
    g.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    g.add_argument("--seed", type=int)
    g.add_argument("--workers", type=nonneg_int, metavar="N", help="data loader processes per rank")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key (VALUE parsed as JSON when it can be; task_args.NAME=VALUE sets "
                        "one task setting), repeatable")
    g.add_argument("--text-encoder", metavar="NAME",
                   help="--task referring: 'words' (a small transformer from scratch, default) or any Hugging "
                        "Face text model by name or folder (extra: text); = --set task_args.text_encoder=NAME")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--no-export", dest="export_onnx", action="store_false", default=None,
                   help="skip the ONNX export at the end")
    g.add_argument("--tensorboard", action="store_true", default=None,
                   help="also write TensorBoard event files to <output>/tensorboard (extra: tensorboard)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--lr", type=float, help="absolute lr (default: lr_base x global batch / lr_base_size)")
    o.add_argument("--weight-decay", type=float)
    o.add_argument("--warmup-epochs", type=float)
    o.add_argument("--layer-decay", type=float, help="layer-wise lr decay (fine-tuning)")
    o.add_argument("--clip-grad", type=float)
    o.add_argument("--accum-steps", type=positive_int, metavar="N", help="gradient accumulation")
    o.add_argument("--drop-path", type=float)
    o.add_argument("--mixup", type=float)
    o.add_argument("--cutmix", type=float)
    o.add_argument("--smoothing", type=float)
    o.add_argument("--img-size", type=image_size, metavar="N", help="input resolution (8…4096)")
    o.add_argument("--model-ema", action="store_true", default=None)
    o.add_argument("--model-ema-decay", type=float)
    o.add_argument("--pretrained", action="store_true", default=None, help="start from the official weights")
    o.add_argument("--finetune", metavar="CKPT", help="start from a checkpoint (new head if classes differ)")
    f = p.add_argument_group("performance")
    f.add_argument("--amp", choices=["none", "bf16", "fp16"], help="mixed precision")
    f.add_argument("--grad-checkpointing", action="store_true", default=None)
    f.add_argument("--channels-last", action="store_true", default=None)
    f.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    s = p.add_argument_group("short runs")
    s.add_argument("--max-steps", type=positive_int, metavar="N",
                   help="stop after N optimizer steps in total")
    s.add_argument("--limit-train-batches", type=positive_int, metavar="N")
    s.add_argument("--limit-val-batches", type=positive_int, metavar="N")
    s.add_argument("--save-interval-steps", type=nonneg_int, metavar="N",
                   help="also checkpoint every N steps (default: at epoch ends)")
    p.set_defaults(func=run)


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (VALUE parsed as JSON when it can be); ``task_args.NAME=VALUE`` sets one task setting."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE, got '{item}'")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        if key.startswith("task_args."):
            out.setdefault("task_args.", {})[key[len("task_args."):]] = parsed
        else:
            out[key] = parsed
    return out


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from the flags that were given (unset flags are absent)."""
    out = _parse_set(getattr(args, "set", []) or [])
    if getattr(args, "text_encoder", None) is not None:
        out.setdefault("task_args.", {})["text_encoder"] = args.text_encoder
    out.update({key: getattr(args, key) for key in _FIELD_FLAGS if getattr(args, key, None) is not None})
    return out


def _resume_path(output: str | None, resume: str) -> Path:
    """``--resume`` (``auto``: ``<output>/last.pt``) or a checkpoint file / run folder -> the file to resume."""
    if resume == "auto":
        if output is None:
            raise UserError("--resume needs --output DIR (the run folder to continue) or a checkpoint path")
        path = Path(output) / "last.pt"
    else:
        path = Path(resume) / "last.pt" if Path(resume).is_dir() else Path(resume)
    if not path.is_file():
        raise UserError(f"nothing to resume: '{path}' does not exist; start a new run without --resume")
    return path


def run(args: argparse.Namespace) -> int:
    from unireplknet.engine.config import load_config
    from unireplknet.engine.finalize import summary_text
    from unireplknet.engine.run import config_from_checkpoint, train
    from unireplknet.models.checkpoint import read_checkpoint
    from unireplknet.tasks import get_task

    overrides = overrides_from_args(args)
    task_args = overrides.pop("task_args.", {})
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --output and --overwrite replaces it: choose one")
    checkpoint = None
    if args.resume:
        path = _resume_path(args.output, args.resume)
        if args.config:
            logging.getLogger(__name__).warning("--config is ignored with --resume: the run's stored config is used "
                                                "(flags given now still override it)")
        checkpoint = read_checkpoint(path)
        cfg = config_from_checkpoint(checkpoint, overrides)
        if args.output is None:
            cfg.output = str(path.parent)
    else:
        cfg = load_config(_recipe(args.config, args.task), overrides)
    if args.model is not None and "arch" not in overrides:
        cfg = dataclasses.replace(cfg, arch=None)  # a named model replaces the recipe's custom architecture
    if task_args:
        cfg = dataclasses.replace(cfg, task_args={**cfg.task_args, **task_args})
    task = get_task(cfg.task)
    summary = train(task, cfg, resume=checkpoint, overwrite=args.overwrite, progress=not args.no_progress)
    if summary:
        print(summary_text(task, summary))
    return 0


def _recipe(config: str | None, task_name: str | None) -> str | None:
    """The recipe to load: ``--config``, else the default recipe of ``--task`` (``None``: digits).
    A recipe written for another task than ``--task`` is refused."""
    if task_name is None:
        return config
    from unireplknet.engine.config import read_config_file
    from unireplknet.tasks import get_task

    task = get_task(task_name)
    if config is None:
        return task.default_config
    recipe_task = read_config_file(config).get("task", "classification")
    if recipe_task != task.name:
        raise UserError(f"config '{config}' is a {recipe_task} recipe, not {task.name}; drop --task or "
                        "pass a recipe of that task")
    return config
