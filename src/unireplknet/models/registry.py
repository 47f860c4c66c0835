"""``create_model`` / ``list_models``: the variants by name, with pretrained weights and feature extraction."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unireplknet.errors import CheckpointError, UnknownModelError
from unireplknet.models.checkpoint import adapt_input_conv, extract_state_dict, load_checkpoint, read_checkpoint
from unireplknet.models.features import UniRepLKNetFeatures
from unireplknet.models.pretrained import download_pretrained, resolve_pretrained
from unireplknet.models.pretrained import pretrained_cfg as default_pretrained_cfg
from unireplknet.models.unireplknet import UniRepLKNet
from unireplknet.models.variants import VARIANTS, Variant

logger = logging.getLogger(__name__)

STEM_CONV = "downsample_layers.0.0"  # the first convolution (timm's ``first_conv``)


#: dense-prediction families: name prefix -> module whose ``MODELS`` maps names to builders (imported on use)
DENSE_FAMILIES = {"cascade_mask_rcnn_": "unireplknet.models.detection", "mask_rcnn_": "unireplknet.models.detection"}
_SIZES = ("a", "f", "p", "n", "t", "s", "b", "l", "xl")


def list_models(pattern: str = "*") -> list[str]:
    """Registered names (the variants, and the dense models on every variant) matching a shell-style pattern."""
    names = [*VARIANTS, *(f"{family}unireplknet_{size}" for family in DENSE_FAMILIES for size in _SIZES)]
    return [name for name in names if fnmatch.fnmatch(name, pattern)]


def _dense_builder(name: str) -> Any:
    import importlib

    family = next((f for f in DENSE_FAMILIES if name.startswith(f)), None)
    return importlib.import_module(DENSE_FAMILIES[family]).MODELS.get(name) if family else None


def _variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise UnknownModelError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    return VARIANTS[name]


def build_variant(name: str, features_only: bool = False, out_indices: Sequence[int] = (0, 1, 2, 3),
                  device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                  **kwargs: Any) -> UniRepLKNet:
    """The architecture ``name`` with random weights, built on ``device`` in ``dtype``; ``kwargs`` go to
    :class:`UniRepLKNet` (or :class:`UniRepLKNetFeatures` with ``features_only``)."""
    variant = _variant(name)
    kwargs = dict(depths=variant.depths, dims=variant.dims) | kwargs
    with torch.device(device) if device is not None else nullcontext():
        model = UniRepLKNetFeatures(out_indices=out_indices, **kwargs) if features_only else UniRepLKNet(**kwargs)
    return model if dtype is None else model.to(dtype)


def _load_pretrained(model: nn.Module, state: dict, features_only: bool) -> None:
    """Load released weights, letting a different head (or a features-only model) start fresh and adapting
    the stem to the model's input channels."""
    own = model.state_dict()
    stem = f"{STEM_CONV}.weight"
    if stem in state and state[stem].shape[1] != own[stem].shape[1]:
        state = dict(state, **{stem: adapt_input_conv(state[stem], own[stem].shape[1])})
    drop = set()
    if features_only:
        drop = {k for k in state if k.startswith(("norm.", "head."))}
    elif "head.weight" in state and (
            "head.weight" not in own or state["head.weight"].shape != own["head.weight"].shape):
        drop = {"head.weight", "head.bias"}
        logger.info("pretrained head (%d classes) replaced by a new one", state["head.weight"].shape[0])
    state = {k: v for k, v in state.items() if k not in drop}
    result = load_checkpoint(model, state, strict=not drop)
    if drop:
        fresh = {k for k in result.missing_keys if not k.startswith(("head.", "norm"))}
        if fresh or result.unexpected_keys:
            raise CheckpointError(f"pretrained weights do not fit: missing {sorted(fresh)[:5]}, "
                                  f"unexpected {sorted(result.unexpected_keys)[:5]}")


def create_model(name: str, pretrained: bool | str = False, features_only: bool = False,
                 out_indices: Sequence[int] = (0, 1, 2, 3), **kwargs: Any) -> nn.Module:
    """Build a variant by name (``unireplknet_a`` … ``unireplknet_h``); needs torch alone.

    ``pretrained``: False, True (default release), a tag (``'in1k'``, ``'in22k'``, ``'in22k_to_in1k'``) or a
    local file; ``cache_dir`` overrides the Hugging Face cache. ``kwargs`` go to :class:`UniRepLKNet`
    (e.g. ``num_classes``, ``in_chans``, ``global_pool``, ``deploy``) or are ``device`` / ``dtype``; with
    ``deploy=True`` and released weights the training-form weights are loaded and then re-parameterized; with
    ``in_chans`` != 3 the released stem is adapted (see :func:`adapt_input_conv`).
    ``features_only=True`` returns the stage maps for ``out_indices`` (see :class:`UniRepLKNetFeatures`).
    ``timm.create_model`` goes through timm's own builder instead (models/timm_registry.py).
    """
    dense = _dense_builder(name)
    if dense is not None:  # a dense-prediction model: pretrained means the backbone's released weights
        return dense(pretrained_backbone=pretrained, **kwargs)
    _variant(name)
    cache_dir = kwargs.pop("cache_dir", None)
    tag, local = resolve_pretrained(name, pretrained)
    state = None
    if tag is not None or local is not None:
        path = local if local is not None else download_pretrained(name, tag, cache_dir)
        state = extract_state_dict(read_checkpoint(Path(path)))
        if "num_classes" not in kwargs and "head.weight" in state and not features_only:
            kwargs["num_classes"] = state["head.weight"].shape[0]

    deploy = bool(kwargs.pop("deploy", False))
    build_deploy = deploy and state is None  # released weights are training form: load, then convert
    model = build_variant(name, features_only, out_indices, deploy=build_deploy, **kwargs)
    if state is not None:
        _load_pretrained(model, state, features_only)
        if deploy:
            model.reparameterize()
    model.pretrained_cfg = model.default_cfg = default_pretrained_cfg(name, tag)
    return model


def reparameterize(model: nn.Module) -> nn.Module:
    """Convert a model (or any module holding UniRepLKNet blocks) to its deploy form in place; returns it."""
    if hasattr(model, "reparameterize") and isinstance(model, UniRepLKNet):
        return model.reparameterize()
    for module in list(model.modules()):
        if module is not model and hasattr(module, "reparameterize"):
            module.reparameterize()
    return model


def is_deploy(model: nn.Module) -> bool:
    """Whether every UniRepLKNet block inside ``model`` is in its deploy form (and there is at least one)."""
    from unireplknet.models.unireplknet import UniRepLKNetBlock

    blocks = [m for m in model.modules() if isinstance(m, UniRepLKNetBlock)]
    return bool(blocks) and all(b.deploy for b in blocks)
