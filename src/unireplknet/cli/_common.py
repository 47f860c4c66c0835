"""Helpers shared by the deployment and analysis sub-commands: flags, models from checkpoints, devices,
atomic outputs and image loading. Every user mistake becomes a one-line :class:`UserError`."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unireplknet.errors import UserError

log = logging.getLogger(__name__)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


# -- flags ---------------------------------------------------------------------------------------------------
def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def json_dict(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object (like {{...}}), got {text!r}")
    return value


def add_model_args(p: argparse.ArgumentParser, checkpoint: bool = True,
                   checkpoint_required: bool = False) -> None:
    """``--checkpoint``, ``--model``, ``--num-classes``, ``--model-kwargs``."""
    if checkpoint:
        p.add_argument("--checkpoint", metavar="PATH", required=checkpoint_required,
                       help="checkpoint: a run's (with meta) or an official one (then give --model)")
    p.add_argument("--model", metavar="NAME",
                   help="model name (unireplknet_a … unireplknet_h); required for official checkpoints")
    p.add_argument("--num-classes", type=positive_int, metavar="N",
                   help="classes of an official checkpoint's head (default 1000)")
    p.add_argument("--model-kwargs", type=json_dict, metavar="JSON", default=None,
                   help="extra UniRepLKNet constructor arguments as JSON, e.g. '{\"kernel_sizes\": 3}'")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="device (default: cuda when available, else cpu)")


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def existing_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} '{p}' does not exist; check the path")
    if not p.is_file():
        raise UserError(f"{what} '{p}' is not a file; give the path of a file")
    return p


def output_file(output: str | None, default: Path, suffix: str, default_name: str) -> Path:
    """``--output``: a file path (with a suffix) or a folder (existing, or a path without suffix)."""
    if output is None:
        return default
    p = Path(output)
    if p.is_dir() or output.endswith(("/", os.sep)) or not p.suffix:
        return p / default_name
    if p.suffix != suffix:
        log.warning("output %s does not end with %s", p, suffix)
    return p


def write_json(obj: Any, path: Path) -> Path:
    from unireplknet.engine.atomic import atomic_path

    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(obj, indent=2) + "\n")
    except OSError as err:
        raise UserError(f"cannot write {path} ({err.strerror}); choose a writable --output") from err
    return path


def save_checkpoint(obj: Mapping[str, Any], path: Path) -> Path:
    """``torch.save`` to a temp file next to ``path``, then rename (atomic)."""
    from unireplknet.engine.atomic import atomic_path

    try:
        with atomic_path(path) as tmp:
            torch.save(dict(obj), tmp)
    except OSError as err:
        raise UserError(f"cannot write {path} ({err.strerror}); choose a writable --output") from err
    return path


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


# -- models ------------------------------------------------------------------------------------------------
def default_class_names(n: int) -> list[str]:
    """ImageNet-1k names when timm has them and n == 1000, else ``class_<i>``."""
    if n == 1000:
        try:
            from timm.data import ImageNetInfo

            return [str(d) for d in ImageNetInfo().label_descriptions()]
        except Exception:  # timm missing or without the info: plain names
            pass
    return [f"class_{i}" for i in range(n)]


def is_deploy_state(state: Mapping[str, torch.Tensor]) -> bool:
    """A state dict in deploy form has no BatchNorm statistics inside the stages."""
    return not any(k.startswith("stages.") and k.endswith("running_mean") for k in state)


def _create(name: str, **kwargs: Any) -> nn.Module:
    from unireplknet.models.registry import create_model

    try:
        return create_model(name, **kwargs)
    except UserError:
        raise
    except (TypeError, ValueError) as err:
        raise UserError(f"cannot build {name} with {kwargs} ({err}); check --model-kwargs") from err


def base_meta(name: str | None, model: nn.Module, model_kwargs: Mapping[str, Any], deploy: bool,
              img_size: int = 224) -> dict[str, Any]:
    head = getattr(model, "head", None)
    n = head.out_features if isinstance(head, nn.Linear) else int(model_kwargs.get("num_classes", 1000))
    in_chans = int(model_kwargs.get("in_chans", 3))
    kwargs = {k: v for k, v in model_kwargs.items() if k != "deploy"}
    return {"model": name, "model_kwargs": kwargs, "deploy": deploy, "task": "classification",
            "class_names": default_class_names(n), "input_size": [in_chans, img_size, img_size],
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def load_model(checkpoint: str | None, model_name: str | None = None, num_classes: int | None = None,
               model_kwargs: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model (on the CPU, eval mode) and its meta, from a run checkpoint, an official checkpoint with
    ``--model``, or (no checkpoint) a freshly initialized ``--model``."""
    from unireplknet.models.checkpoint import build_model_from_checkpoint, load_checkpoint, read_checkpoint
    from unireplknet.models.registry import list_models

    if model_name is not None and model_name not in list_models():
        raise UserError(f"unknown model '{model_name}'; choose one of {', '.join(list_models())}")
    extra = dict(model_kwargs or {})
    if checkpoint is None:
        if model_name is None:
            raise UserError("no model given; pass --checkpoint PATH (or --model NAME for a fresh model)")
        kwargs = dict(extra, **({"num_classes": num_classes} if num_classes else {}))
        model = _create(model_name, **kwargs)
        return model.eval(), base_meta(model_name, model, kwargs, deploy=bool(kwargs.get("deploy")))

    path = existing_file(checkpoint, "checkpoint")
    obj = read_checkpoint(path)
    meta = obj.get("meta")
    if isinstance(meta, Mapping):
        ck_name = meta.get("model")
        if model_name is not None and ck_name is not None and model_name != ck_name:
            raise UserError(f"checkpoint '{path}' is a {ck_name}, not a {model_name}; drop --model "
                            "(a run checkpoint knows its model) or pass the right checkpoint")
        n_ck = len(meta.get("class_names") or []) or (meta.get("model_kwargs") or {}).get("num_classes")
        if num_classes is not None and n_ck and num_classes != n_ck:
            raise UserError(f"checkpoint '{path}' has {n_ck} classes, not {num_classes}; drop --num-classes")
        if extra:
            log.warning("--model-kwargs ignored: the checkpoint's meta describes the model")
        model, meta = build_model_from_checkpoint(obj)
        meta = dict(meta)
        config = obj.get("config")
        if isinstance(config, Mapping):  # a training run's eval preprocessing
            for key in ("crop_pct", "interpolation"):
                if key in config and key not in meta:
                    meta[key] = config[key]
        return model.eval(), meta

    if model_name is None:
        raise UserError(f"checkpoint '{path}' has no metadata (an official checkpoint?); pass --model NAME "
                        f"(one of {', '.join(list_models())}) and --num-classes N if its head is not 1000")
    from unireplknet.models.checkpoint import extract_state_dict

    state = extract_state_dict(obj)
    deploy = is_deploy_state(state)
    n = num_classes
    if n is None and "head.weight" in state:
        n = int(state["head.weight"].shape[0])
    kwargs = dict(extra, deploy=deploy, num_classes=n or 1000)
    model = _create(model_name, **kwargs)
    try:
        load_checkpoint(model, state, strict=True)
    except UserError as err:
        raise UserError(f"checkpoint '{path}' does not fit {model_name}: {_mismatch(model, state)}") from err
    return model.eval(), base_meta(model_name, model, kwargs, deploy=deploy)


def _mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """Why ``state`` does not load into ``model``, in a few words, with what to do."""
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if wrong and all(k.startswith("head.") for k in wrong) and not missing and not unexpected:
        n = int(state["head.weight"].shape[0]) if "head.weight" in state else "another number of"
        return f"its head has {n} classes; pass --num-classes {n}"
    if wrong:
        k = wrong[0]
        return (f"{len(wrong)} tensors differ in shape (e.g. {k}: {tuple(state[k].shape)} vs "
                f"{tuple(own[k].shape)}); it is another model: pass the --model it was trained with")
    k = (missing or unexpected)[0]
    return (f"{len(missing)} missing and {len(unexpected)} unexpected keys (e.g. {k}); it is another model: "
            "pass the --model (and --model-kwargs) it was trained with")


def model_input_size(meta: Mapping[str, Any], img_size: int | None = None) -> tuple[int, int, int]:
    size = list(meta.get("input_size") or [3, 224, 224])
    c, h, w = int(size[0]), int(size[1]), int(size[2])
    if img_size is not None:
        h = w = img_size
    return c, h, w


def is_deploy(model: nn.Module) -> bool:
    return bool(getattr(model, "deploy", False))


def deploy_copy(model: nn.Module) -> nn.Module:
    """A re-parameterized deep copy (the original is kept)."""
    import copy

    from unireplknet.models.registry import reparameterize

    return reparameterize(copy.deepcopy(model)).eval()


# -- images ------------------------------------------------------------------------------------------------
def eval_transform(meta: Mapping[str, Any], img_size: int | None = None):
    """Resize to size / crop_pct, center-crop, normalize with the checkpoint's mean/std -> (C, H, W)."""
    from types import SimpleNamespace

    from unireplknet.data.loader import build_transform

    c, h, _ = model_input_size(meta, img_size)
    cfg = SimpleNamespace(in_chans=c, img_size=h, interpolation=meta.get("interpolation", "bicubic"),
                          mean=list(meta.get("mean") or IMAGENET_MEAN),
                          std=list(meta.get("std") or IMAGENET_STD),
                          crop_pct=float(meta.get("crop_pct", 0.875)))
    return build_transform(cfg, is_training=False)


def collect_images(paths: Sequence[str]) -> list[Path]:
    """Image files from files and folders (searched recursively), in the given order."""
    out: list[Path] = []
    for text in paths:
        p = Path(text)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"folder '{p}' has no image files ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"image '{p}' does not exist; check the path")
    if not out:
        raise UserError("no images given; pass image files or folders")
    return out


def load_image(path: Path, transform: Any, in_chans: int = 3) -> torch.Tensor:
    """Decode ``path`` and apply ``transform`` -> (C, H, W); an unreadable file is a UserError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if in_chans == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"cannot read image '{path}' ({type(err).__name__}); "
                        "is it a valid image file?") from err
    return transform(img)
