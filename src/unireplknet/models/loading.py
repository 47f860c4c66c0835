"""Any checkpoint (or a model name) -> a ready model and its ``meta``: run checkpoints rebuild from their meta,
official checkpoints need the model's name, and a bare name gives a fresh model. Mistakes are one-line errors."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from unireplknet.errors import CheckpointError, UserError
from unireplknet.models.checkpoint import (
    build_model_from_checkpoint,
    extract_state_dict,
    load_checkpoint,
    read_checkpoint,
)
from unireplknet.models.pretrained import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


class LoadedModel(NamedTuple):
    """A model in eval mode on the CPU, the ``meta`` that describes it, and the training config when the
    checkpoint carries one (run checkpoints do)."""

    model: nn.Module
    meta: dict[str, Any]
    config: dict[str, Any] | None


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


def image_meta(name: str | None, model: nn.Module, model_kwargs: Mapping[str, Any], deploy: bool,
               img_size: int = 224) -> dict[str, Any]:
    """The meta of an image classifier that came without one (an official checkpoint or a fresh model)."""
    head = getattr(model, "head", None)
    n = head.out_features if isinstance(head, nn.Linear) else int(model_kwargs.get("num_classes", 1000))
    return {"model": name, "model_kwargs": {k: v for k, v in model_kwargs.items() if k != "deploy"},
            "deploy": deploy, "task": "classification", "class_names": default_class_names(n),
            "input_size": [int(model_kwargs.get("in_chans", 3)), img_size, img_size],
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def _create(name: str, **kwargs: Any) -> nn.Module:
    from unireplknet.models.registry import create_model

    try:
        return create_model(name, **kwargs)
    except UserError:
        raise
    except (TypeError, ValueError) as err:
        raise UserError(f"cannot build {name} with {kwargs} ({err}); check the model kwargs") from err


def load_model(checkpoint: str | Path | None, model_name: str | None = None, num_classes: int | None = None,
               model_kwargs: Mapping[str, Any] | None = None) -> LoadedModel:
    """The model of a run checkpoint (rebuilt from its meta), of an official checkpoint (``model_name`` and, for a
    head other than 1000 classes, ``num_classes``), or a fresh ``model_name`` when ``checkpoint`` is None."""
    from unireplknet.models.registry import list_models

    if model_name is not None and model_name not in list_models():
        raise UserError(f"unknown model '{model_name}'; choose one of {', '.join(list_models())}")
    extra = dict(model_kwargs or {})
    if checkpoint is None:
        if model_name is None:
            raise UserError("no model given: pass a checkpoint, or a model name for a fresh model")
        kwargs = dict(extra, **({"num_classes": num_classes} if num_classes else {}))
        model = _create(model_name, **kwargs)
        return LoadedModel(model.eval(), image_meta(model_name, model, kwargs, bool(kwargs.get("deploy"))), None)
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist{'' if not path.exists() else ' as a file'}; check the "
                        "path")
    obj = read_checkpoint(path)
    meta = obj.get("meta")
    if isinstance(meta, Mapping):
        _check_meta(path, meta, model_name, num_classes)
        if extra:
            log.warning("model kwargs ignored: the checkpoint's meta describes the model")
        try:
            model, meta = build_model_from_checkpoint(obj)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"checkpoint '{path}' has a meta this library cannot build a model from "
                                  f"({type(err).__name__}: {err})") from None
        config = obj.get("config")
        return LoadedModel(model.eval(), dict(meta), dict(config) if isinstance(config, Mapping) else None)
    if model_name is None:
        raise UserError(f"checkpoint '{path}' has no metadata (an official checkpoint?); name the model "
                        f"(--model NAME, one of {', '.join(list_models())}) and its classes (--num-classes N) "
                        "if the head is not 1000")
    state = extract_state_dict(obj)
    deploy = is_deploy_state(state)
    n = num_classes or (int(state["head.weight"].shape[0]) if "head.weight" in state else 1000)
    kwargs = dict(extra, deploy=deploy, num_classes=n)
    model = _create(model_name, **kwargs)
    try:
        load_checkpoint(model, state, strict=True)
    except CheckpointError as err:
        reason = str(err).removeprefix("checkpoint does not fit the model: ")
        hint = "" if "num_classes=" in reason else "; name the model it was trained with (--model, --model-kwargs)"
        raise UserError(f"checkpoint '{path}' does not fit {model_name}: {reason}{hint}") from None
    return LoadedModel(model.eval(), image_meta(model_name, model, kwargs, deploy), None)


def _check_meta(path: Path, meta: Mapping[str, Any], model_name: str | None, num_classes: int | None) -> None:
    ck_name = meta.get("model")
    if model_name is not None and ck_name is not None and model_name != ck_name:
        raise UserError(f"checkpoint '{path}' is a {ck_name}, not a {model_name}; drop --model (a run "
                        "checkpoint knows its model) or pass the right checkpoint")
    kwargs = meta.get("model_kwargs") if isinstance(meta.get("model_kwargs"), Mapping) else {}
    n_ck = len(meta.get("class_names") or []) or kwargs.get("num_classes")
    if num_classes is not None and n_ck and num_classes != n_ck:
        raise UserError(f"checkpoint '{path}' has {n_ck} classes, not {num_classes}; drop --num-classes")
