"""Flags shared by the sub-commands, and printing/writing their JSON reports."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from unireplknet.models import LoadedModel, load_model
from unireplknet.utils.atomic import atomic_write_text


def _int_at_least(text: str, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}…{maximum}"
        raise argparse.ArgumentTypeError(f"expected a number {bound}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def image_size(text: str) -> int:
    """argparse type: an image side in pixels (8…4096)."""
    from unireplknet.engine.config import MAX_IMG_SIZE

    return _int_at_least(text, 8, MAX_IMG_SIZE)


def json_dict(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object (like {{...}}), got {text!r}")
    return value


def add_model_args(p: argparse.ArgumentParser, checkpoint: bool = True, checkpoint_required: bool = False) -> None:
    """``--checkpoint``, ``--model``, ``--num-classes``, ``--model-kwargs``."""
    if checkpoint:
        p.add_argument("--checkpoint", metavar="PATH", required=checkpoint_required,
                       help="checkpoint: a run's (with meta) or an official one (then give --model)")
    p.add_argument("--model", metavar="NAME", help="model name (unireplknet_a … unireplknet_h); required for "
                                                   "official checkpoints")
    p.add_argument("--num-classes", type=positive_int, metavar="N",
                   help="classes of an official checkpoint's head (default 1000)")
    p.add_argument("--model-kwargs", type=json_dict, metavar="JSON", default=None,
                   help="extra UniRepLKNet constructor arguments as JSON, e.g. '{\"kernel_sizes\": 3}'")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="device (default: cuda when available, else cpu)")


def model_from_args(args: argparse.Namespace, checkpoint: str | None = None) -> LoadedModel:
    """The model that ``--checkpoint`` / ``--model`` / ``--num-classes`` / ``--model-kwargs`` describe."""
    return load_model(checkpoint if checkpoint is not None else getattr(args, "checkpoint", None), args.model,
                      args.num_classes, args.model_kwargs)


def output_file(output: str | None, default: Path, suffix: str, default_name: str) -> Path:
    """``--output``: a file path (with a suffix) or a folder (existing, or a path ending in / or without suffix)."""
    if output is None:
        return default
    p = Path(output)
    if p.is_dir() or output.endswith(("/", os.sep)) or not p.suffix:
        return p / default_name
    return p


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def report(obj: Any, output: str | None, name: str) -> None:
    """Print ``obj`` as JSON and, with ``--output DIR``, also write it to ``DIR/<name>`` (atomically)."""
    if output:
        atomic_write_text(json.dumps(obj, indent=2) + "\n", Path(output) / name)
    print_json(obj)
