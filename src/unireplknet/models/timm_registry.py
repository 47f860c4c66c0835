"""Registers every variant with timm (imported by ``unireplknet`` when timm is installed).

The entry points build through timm's own ``build_model_with_cfg``, so ``timm.create_model`` treats them as it
treats timm's models: pretrained tags (``'unireplknet_s.in22k'``), ``pretrained_cfg_overlay`` (e.g. ``file=``),
``in_chans`` != 3 with pretrained weights (timm's ``adapt_input_conv`` on the stem), ``num_classes`` /
``global_pool`` / ``drop_rate``, ``device`` / ``dtype``, and ``features_only`` (default ``feature_cls='getter'``:
timm's FeatureGetterNet over ``forward_intermediates``; 'fx' works too, 'list' / 'hook' / 'dict' need one
sequential trunk, which the official layout of separate ``downsample_layers`` and ``stages`` is not).
``deploy=True`` with pretrained weights loads the released (training-form) weights, then re-parameterizes.

timm names a model's module after its entry point's module: the entry points and ``default_cfgs`` are attached
to ``unireplknet.models.unireplknet`` (the architecture's module, as timm's own models are laid out), so the
module is ``unireplknet`` (``timm.list_models(module='unireplknet')``).

FX (timm's tracers): the depthwise conv modules (plain and dilated) choose their backend at run time and stay
leaves; so does DropPath (random mask); ``scaled_linear`` and ``gelu_inplace_inference`` take shape- and
autograd-dependent paths and stay leaf functions.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    register_model,
    register_notrace_function,
    register_notrace_module,
)
from torch import nn

from unireplknet.layers import DropPath, scaled_linear
from unireplknet.layers.dilated_reparam import DilatedDepthwiseConv2d
from unireplknet.models import unireplknet as architecture
from unireplknet.models.checkpoint import extract_state_dict
from unireplknet.models.pretrained import CHECKPOINT_FILES, TAG_ORDER, pretrained_cfg
from unireplknet.models.registry import build_variant, reparameterize
from unireplknet.models.variants import VARIANTS
from unireplknet.ops import DepthwiseConv2d

for _leaf in (DepthwiseConv2d, DilatedDepthwiseConv2d, DropPath):
    register_notrace_module(_leaf)
for _fn in (scaled_linear, architecture.gelu_inplace_inference):
    register_notrace_function(_fn)


def _cfgs() -> dict[str, dict[str, Any]]:
    cfgs = {}
    for name in VARIANTS:
        tags = [t for t in TAG_ORDER if t in CHECKPOINT_FILES.get(name, {})]
        for tag in tags or [None]:
            cfg = pretrained_cfg(name, tag)
            del cfg["architecture"], cfg["tag"]  # timm fills these in from the key
            cfgs[f"{name}.{tag}" if tag else name] = cfg
    return cfgs


def _checkpoint_filter(state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Released files are state dicts, raw or under 'model' (see checkpoint.extract_state_dict)."""
    return extract_state_dict(state)


def _create(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    deploy = bool(kwargs.pop("deploy", False))
    model = build_model_with_cfg(
        partial(build_variant, name, deploy=deploy and not pretrained), name, pretrained,
        pretrained_filter_fn=_checkpoint_filter, feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
        **kwargs)
    return reparameterize(model) if deploy and pretrained else model


def _entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return _create(name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = architecture.__name__
    entrypoint.__doc__ = f"UniRepLKNet variant {name} (timm entry point; see unireplknet.create_model)."
    return entrypoint


architecture.default_cfgs = generate_default_cfgs(_cfgs())
for _name in VARIANTS:
    setattr(architecture, _name, register_model(_entrypoint(_name)))
