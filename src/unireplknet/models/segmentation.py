"""UPerNet on a UniRepLKNet backbone for semantic segmentation (paper §4, Table 7; spec: dense_prediction.md).

backbone (:class:`UniRepLKNetFeatures`: 4 maps at strides 4, 8, 16, 32, each through ``norm{i}``)
-> :class:`UPerHead` (pyramid pooling on the last map, FPN over all four, fused at stride 4) -> logits,
upsampled (bilinear, ``align_corners=False``) to the input size. An auxiliary :class:`FCNHead` on stage
index 2 adds a second loss in training (weight 0.4). ``MMSEG_KEY_MAP`` renames MMSegmentation's head keys
to ours; :func:`load_segmenter` and :func:`load_backbone` load official and classification checkpoints.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unireplknet.errors import CheckpointError
from unireplknet.models.checkpoint import StateDict, extract_state_dict, load_checkpoint, read_checkpoint
from unireplknet.models.features import OnBackbone, TimmFeatures, UniRepLKNetFeatures
from unireplknet.models.variants import VARIANTS

IGNORE_INDEX = 255


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) to ``size`` with ``align_corners=False`` (MMSeg's ``resize``)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def adaptive_avg_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)``; while exporting to ONNX, which cannot pool to a size that does not
    divide the input's, the same bins as two constant averaging matrices: (size, H) @ x @ (W, size)."""
    if not torch.onnx.is_in_onnx_export():
        return F.adaptive_avg_pool2d(x, size)

    def bins(n: int) -> torch.Tensor:
        i, j = torch.arange(size, device=x.device)[:, None], torch.arange(n, device=x.device)
        start, end = i * n // size, -(-(i + 1) * n // size)  # floor and ceil, as adaptive pooling
        return ((j >= start) & (j < end)).to(x.dtype) / (end - start).to(x.dtype)

    h, w = (int(n) for n in x.shape[-2:])
    return bins(h) @ x @ bins(w).T


class ConvBNReLU(nn.Sequential):
    """k×k conv (no bias, 'same' padding) + BatchNorm + ReLU; children ``conv``/``bn`` as in mmcv's ConvModule."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            bn=nn.BatchNorm2d(out_channels), act=nn.ReLU(inplace=True)))
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")




class UPerHead(nn.Module):
    """UPerNet decode head: maps (N, C_i, H/2^(i+2), W/2^(i+2)) for i = 0..3 -> logits (N, K, H/4, W/4).

    Pyramid pooling (pool scales 1, 2, 3, 6) on the last map, fused by a 3×3 conv (``ppm_fuse``); 1×1
    lateral convs on the other maps; top-down sums; 3×3 FPN convs; every level upsampled to stride 4,
    concatenated and fused by a 3×3 conv (``fpn_fuse``); dropout; 1×1 ``classifier``.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1) -> None:
        super().__init__()
        top = in_channels[-1]
        self.pool_scales = tuple(pool_scales)
        self.ppm_convs = nn.ModuleList(ConvBNReLU(top, channels, 1) for _ in self.pool_scales)
        self.ppm_fuse = ConvBNReLU(top + len(self.pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_fuse = ConvBNReLU(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        # PyTorch's default init, not MMSeg's N(0, 0.01): with that and AdamW, the rows of the rarer classes
        # start (and, on background-heavy data, stay) tied, so a short run predicts one class only.
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def pyramid_pooling(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (N, channels, h, w): x concatenated with its pooled-and-upsampled context, fused."""
        pooled = [resize(conv(adaptive_avg_pool(x, scale)), x.shape[-2:])
                  for scale, conv in zip(self.pool_scales, self.ppm_convs)]
        return self.ppm_fuse(torch.cat([x, *pooled], dim=1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        levels.append(self.pyramid_pooling(features[-1]))
        for i in range(len(levels) - 1, 0, -1):  # top-down: each level adds the coarser one
            levels[i - 1] = levels[i - 1] + resize(levels[i], levels[i - 1].shape[-2:])
        outs = [conv(level) for conv, level in zip(self.fpn_convs, levels)] + [levels[-1]]
        size = outs[0].shape[-2:]
        fused = self.fpn_fuse(torch.cat([resize(o, size) for o in outs], dim=1))
        return self.classifier(self.dropout(fused))


class FCNHead(nn.Module):
    """Auxiliary head: one 3×3 conv+BN+ReLU, dropout, 1×1 classifier; (N, C, h, w) -> (N, K, h, w)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))


class UPerNet(OnBackbone, nn.Module):
    """UniRepLKNet + UPerHead (+ auxiliary FCNHead): (N, 3, H, W) -> logits (N, num_classes, H, W).

    In training mode with an auxiliary head, ``forward`` returns ``(logits, aux_logits)``, both at the input
    size (:class:`SegmentationLoss` takes either form); in eval mode, the logits alone. ``backbone_kwargs`` go
    to :class:`UniRepLKNetFeatures` (``depths``, ``dims``, ``kernel_sizes``, ``drop_path_rate``, ``deploy`` ...).
    ``aux_channels=0`` drops the auxiliary head. ``backbone``: another four-map backbone instead (e.g. a
    :class:`TimmFeatures` ConvNeXt for the peer study); then ``backbone_kwargs`` must be empty.
    """

    def __init__(self, num_classes: int = 150, channels: int = 512, aux_channels: int = 256, aux_index: int = 2,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1,
                 backbone: UniRepLKNetFeatures | TimmFeatures | None = None, **backbone_kwargs: Any) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if backbone is not None and backbone_kwargs:
            raise ValueError(f"backbone settings {sorted(backbone_kwargs)} apply to UniRepLKNet, not to a given "
                             "backbone")
        self.backbone = backbone or UniRepLKNetFeatures(out_indices=(0, 1, 2, 3), **backbone_kwargs)
        dims = self.backbone.dims
        self.num_classes = num_classes
        self.aux_index = aux_index
        self.decode_head = UPerHead(dims, num_classes, channels, pool_scales, dropout)
        self.aux_head = FCNHead(dims[aux_index], num_classes, aux_channels, dropout) if aux_channels else None

    @property
    def deploy(self) -> bool:
        return self.backbone.deploy

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        logits = resize(self.decode_head(features), x.shape[-2:])
        if self.training and self.aux_head is not None:
            return logits, resize(self.aux_head(features[self.aux_index]), x.shape[-2:])
        return logits

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last map (N, C_3, H/32, W/32), e.g. for the effective receptive field (Fig. 2)."""
        return self.backbone(x)[-1]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer groups for layer-wise lr decay: the backbone's (stem, blocks ...), then both heads last."""
        groups = self.backbone_groups(coarse)
        groups["blocks"].append((r"^(?:decode_head|aux_head)\.", (100000,)))
        return groups


class SegmentationLoss(nn.Module):
    """Cross-entropy over labelled pixels (``ignore_index`` excluded from sum and count), main + 0.4 × aux.

    ``outputs``: logits (N, K, H, W) or ``(logits, aux_logits)``; ``target``: (N, H, W) int64.
    A batch without a single labelled pixel gives a zero loss that still reaches every logit.

    ``ohem_thresh`` turns on online hard example mining for the main head (MMSegmentation's
    ``OHEMPixelSampler`` semantics): only pixels whose predicted probability of their true class is below
    ``max(ohem_thresh, p_k)`` count, where ``p_k`` is the ``ohem_min_kept × N``-th smallest such probability,
    so at least that many pixels always count. The auxiliary head keeps plain cross-entropy.
    """

    def __init__(self, aux_weight: float = 0.4, ignore_index: int = IGNORE_INDEX,
                 ohem_thresh: float | None = None, ohem_min_kept: int = 100_000) -> None:
        super().__init__()
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = ohem_min_kept

    def _ce(self, logits: torch.Tensor, target: torch.Tensor, hard_only: bool = False) -> torch.Tensor:
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if hard_only and self.ohem_thresh is not None and (target != self.ignore_index).any():
            target = self._hard_pixels(logits, target)
        if not (target != self.ignore_index).any():  # nothing labelled, or (OHEM) every pixel certain
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target, ignore_index=self.ignore_index)

    @torch.no_grad()
    def _hard_pixels(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``target`` with every labelled pixel that is not hard set to ``ignore_index`` (N, H, W)."""
        valid = target != self.ignore_index
        safe = target.masked_fill(~valid, 0)
        p_true = logits.softmax(dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)  # (N, H, W)
        p_valid = p_true[valid]
        kept = min(self.ohem_min_kept * target.shape[0], p_valid.numel() - 1)
        cutoff = max(float(self.ohem_thresh), float(p_valid.kthvalue(kept + 1).values))
        return target.masked_fill(valid & (p_true >= cutoff), self.ignore_index)

    def forward(self, outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self._ce(outputs, target, hard_only=True)
        logits, aux = outputs
        return self._ce(logits, target, hard_only=True) + self.aux_weight * self._ce(aux, target)


# -- checkpoints -------------------------------------------------------------------------------------------------

#: MMSegmentation UPerHead / FCNHead key -> ours (regex, replacement), applied in order. The ``backbone.*`` keys
#: and ``decode_head.lateral_convs.*`` / ``fpn_convs.*`` are the same in both; ConvModule's ``.conv``/``.bn``
#: children keep their names.
MMSEG_KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"^decode_head\.psp_modules\.(\d+)\.1\.", r"decode_head.ppm_convs.\1."),
    (r"^decode_head\.bottleneck\.", "decode_head.ppm_fuse."),
    (r"^decode_head\.fpn_bottleneck\.", "decode_head.fpn_fuse."),
    (r"^decode_head\.conv_seg\.", "decode_head.classifier."),
    (r"^auxiliary_head\.convs\.0\.", "aux_head.conv."),
    (r"^auxiliary_head\.conv_seg\.", "aux_head.classifier."),
)


def from_mmseg(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename an MMSegmentation UPerNet state dict's head keys to ours (others pass through unchanged)."""
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in MMSEG_KEY_MAP:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def _state_of(source: str | Path | Mapping[str, Any]) -> StateDict:
    obj = source if isinstance(source, Mapping) else read_checkpoint(source)
    return extract_state_dict(obj)


def _is_dense(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("backbone.", "decode_head.", "auxiliary_head.", "aux_head.")) for k in state)


def load_segmenter(model: UPerNet, source: str | Path | Mapping[str, Any], strict: bool = True) -> Any:
    """Load a whole segmenter: ours, or an official MMSegmentation UPerNet checkpoint (``state_dict`` ->
    ``backbone.*``, ``decode_head.*``, ``auxiliary_head.*``, renamed by ``MMSEG_KEY_MAP``).

    A checkpoint without an auxiliary head loads into a model with one (that head stays fresh) and
    vice versa; everything else must match. Returns load_state_dict's (missing, unexpected) keys.
    """
    state = from_mmseg(_state_of(source))
    if not _is_dense(state):
        raise CheckpointError("this checkpoint has no backbone./decode_head. keys (a classification checkpoint?): "
                              "load it into the backbone with pretrained_backbone=PATH or load_backbone()")
    if not any(k.startswith("decode_head.") for k in state):
        raise CheckpointError("this checkpoint holds a backbone only (no decode_head. keys): load it with "
                              "pretrained_backbone=PATH or load_backbone()")
    if model.aux_head is None:
        state = {k: v for k, v in state.items() if not k.startswith("aux_head.")}
    if model.aux_head is None or any(k.startswith("aux_head.") for k in state):
        return load_checkpoint(model, state, strict=strict)
    result = load_checkpoint(model, state, strict=False)  # no auxiliary head in the file: ours stays fresh
    other = [k for k in result.missing_keys if not k.startswith("aux_head.")] + list(result.unexpected_keys)
    if strict and other:
        raise CheckpointError(f"checkpoint does not fit the segmenter: missing or unexpected keys {other[:5]}")
    return result


def backbone_state_dict(state: Mapping[str, torch.Tensor]) -> StateDict:
    """The backbone's weights from a dense checkpoint (``backbone.*``) or a classification one (no prefix;
    its final ``norm.*`` and ``head.*`` are dropped)."""
    if _is_dense(state):
        return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return {k: v for k, v in state.items() if not k.startswith(("norm.", "head."))}


def load_backbone(model: UPerNet, source: str | Path | Mapping[str, Any]) -> None:
    """Load the backbone from a classification checkpoint (ours or official) or a dense one's ``backbone.*``.

    Only the per-stage norms ``norm0``…``norm3`` may be missing (a classification checkpoint has none);
    they then keep their fresh initialization. Every other key must match.
    """
    state = backbone_state_dict(_state_of(source))
    if not state:
        raise CheckpointError("the checkpoint has no backbone weights (no backbone.* keys)")
    result = load_checkpoint(model.backbone, state, strict=False)
    missing = [k for k in result.missing_keys if not re.match(r"norm\d\.", k)]
    if missing or result.unexpected_keys:
        parts = [f"missing {sorted(missing)[:5]}" if missing else "",
                 f"unexpected {sorted(result.unexpected_keys)[:5]}" if result.unexpected_keys else ""]
        raise CheckpointError("backbone weights do not fit this model (another size or form?): "
                              + "; ".join(p for p in parts if p))


# -- builders ----------------------------------------------------------------------------------------------------

def _builder(variant: str) -> Callable[..., UPerNet]:
    def build(num_classes: int = 150, pretrained_backbone: bool | str | Path = False, **kwargs: Any) -> UPerNet:
        spec = VARIANTS[variant]
        deploy = bool(kwargs.pop("deploy", False))
        kwargs = dict(depths=spec.depths, dims=spec.dims) | kwargs
        model = UPerNet(num_classes=num_classes, deploy=deploy and not pretrained_backbone, **kwargs)
        if pretrained_backbone is not False and pretrained_backbone is not None:
            source: Any = pretrained_backbone
            if pretrained_backbone is True or str(pretrained_backbone) in ("in1k", "in22k", "in22k_to_in1k"):
                from unireplknet.models.pretrained import download_pretrained, resolve_pretrained

                tag, local = resolve_pretrained(variant, pretrained_backbone)
                source = local or download_pretrained(variant, tag)
            load_backbone(model, source)
            if deploy:
                model.reparameterize()
        return model

    build.__name__ = f"upernet_{variant}"
    build.__doc__ = (f"UPerNet with a {variant} backbone; ``pretrained_backbone``: False, True or a tag "
                     "(released classification weights), or a checkpoint path (classification or dense).")
    return build


def upernet_timm(num_classes: int = 150, timm_backbone: str = "convnext_atto", pretrained_backbone: bool = False,
                 drop_path_rate: float = 0.0, deploy: bool = False, timm_kwargs: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> UPerNet:
    """UPerNet on the timm model ``timm_backbone`` (any with stride-4…32 features, e.g. ``convnext_atto``),
    built with ``timm_kwargs`` (e.g. ``{"depths": [2, 2, 4, 2], "dims": [24, 48, 96, 192]}``): the same heads on
    a peer backbone. ``kwargs`` go to :class:`UPerNet` (channels, aux_channels ...); ``deploy`` is accepted and
    changes nothing (there is no branch to fold)."""
    if not isinstance(pretrained_backbone, bool):
        raise ValueError(f"a timm backbone takes pretrained_backbone=True|False, not {pretrained_backbone!r}")
    backbone = TimmFeatures(timm_backbone, pretrained_backbone, drop_path_rate, **dict(timm_kwargs or {}))
    return UPerNet(num_classes=num_classes, backbone=backbone, **kwargs)


#: ``upernet_unireplknet_{a,f,p,n,t,s,b,l,xl}`` -> builder(num_classes=150, pretrained_backbone=False, **kwargs);
#: ``upernet_timm`` -> :func:`upernet_timm`.
MODELS: dict[str, Callable[..., UPerNet]] = {
    **{f"upernet_{name}": _builder(name) for name in VARIANTS if name != "unireplknet_h"},
    "upernet_timm": upernet_timm}
