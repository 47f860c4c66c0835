"""UniRepLKNet as a multi-scale backbone for dense prediction (FPN/UPerNet-style heads), the mixin the dense
models share for what they pass through to it, and a timm model in the same role (the peer in the studies)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from unireplknet.layers import LayerNorm2d
from unireplknet.models.unireplknet import UniRepLKNet


class FeatureInfo(list):
    """List of ``dict(num_chs, reduction, module)`` per returned map, with timm's accessor methods."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]


class UniRepLKNetFeatures(UniRepLKNet):
    """(N, C_in, H, W) -> list of stage maps (N, dims[i], H/2^(i+2), W/2^(i+2)) for i in ``out_indices``.

    Each map goes through its own channels-first LayerNorm ``norm{i}`` (the official detection and
    segmentation backbone's layout); the classification norm and head are dropped.
    """

    def __init__(self, out_indices: Sequence[int] = (0, 1, 2, 3), **kwargs: Any) -> None:
        kwargs["num_classes"] = 0
        super().__init__(**kwargs)
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(i not in range(4) for i in out_indices):
            raise ValueError(f"out_indices must be a non-empty subset of (0, 1, 2, 3), got {out_indices}")
        self.out_indices = out_indices
        del self.norm, self.head_drop, self.head
        for i in out_indices:
            self.add_module(f"norm{i}", LayerNorm2d(self.dims[i]))
        self.feature_info = FeatureInfo(
            dict(num_chs=self.dims[i], reduction=4 * 2 ** i, module=f"stages.{i}") for i in out_indices)
        self.last = max(out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        outs = []
        for i in range(self.last + 1):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(x))
        return outs

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise RuntimeError("a features_only model has no head: use forward() for the stage maps")

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        raise RuntimeError("a features_only model has no classifier")

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        matcher = super().group_matcher(coarse)
        if not coarse:
            matcher["blocks"] = matcher["blocks"][:-1] + [(r"^norm(\d+)\.", (99999,))]
        return matcher


class OnBackbone:
    """What a dense model built on ``self.backbone`` (:class:`UniRepLKNetFeatures` or a peer) passes through:
    the deploy form, gradient checkpointing, no-decay names and the backbone's lr-decay groups under
    ``backbone.``. Mixed into an ``nn.Module``; the heads have nothing to fold."""

    backbone: Any

    def reparameterize(self) -> Any:
        """The backbone's blocks to their deploy form, in place (exact)."""
        self.backbone.reparameterize()
        return self

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    def backbone_groups(self, coarse: bool = False) -> dict[str, Any]:
        """The backbone's ``group_matcher`` with every pattern under ``backbone.``; ``blocks`` as a list of
        ``(pattern, order)`` (timm's ``param_groups_layer_decay`` format)."""
        def prefixed(pattern: str) -> str:
            return "^backbone\\." + pattern.removeprefix("^")

        matcher = self.backbone.group_matcher(coarse)
        blocks = matcher["blocks"]
        blocks = [(blocks, None)] if isinstance(blocks, str) else blocks
        return {"stem": prefixed(matcher["stem"]), "blocks": [(prefixed(p), order) for p, order in blocks]}


class TimmFeatures(nn.Module):
    """A timm model's four stride-4…32 maps (``features_only``), each through its own channels-first LayerNorm
    as :class:`UniRepLKNetFeatures` has (and ConvNeXt's dense-prediction backbones): (N, 3, H, W) -> list of
    (N, dims[i], H/2^(i+2), W/2^(i+2)). The peer backbone of the dense heads; nothing to re-parameterize.
    ``model_kwargs`` go to ``timm.create_model`` (e.g. ConvNeXt's ``depths`` / ``dims`` to match a backbone)."""

    deploy = False

    def __init__(self, name: str, pretrained: bool = False, drop_path_rate: float = 0.0,
                 **model_kwargs: Any) -> None:
        import timm

        super().__init__()
        self.body = timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=(0, 1, 2, 3),
                                      drop_path_rate=drop_path_rate, **model_kwargs)
        if self.body.feature_info.reduction() != [4, 8, 16, 32]:
            raise ValueError(f"timm model {name!r} gives features at strides {self.body.feature_info.reduction()}; "
                             "the dense heads need 4, 8, 16, 32 (e.g. a ConvNeXt)")
        self.dims, self.out_indices = self.body.feature_info.channels(), (0, 1, 2, 3)
        self.norms = nn.ModuleList(LayerNorm2d(c) for c in self.dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [norm(f) for norm, f in zip(self.norms, self.body(x))]

    def reparameterize(self) -> TimmFeatures:
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.body.set_grad_checkpointing(enable)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"stem": r"^body\.stem", "blocks": r"^body\.stages_(\d+)"}

    def no_weight_decay(self) -> set[str]:
        return set()
