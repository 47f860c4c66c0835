"""Auxiliary training-only losses for the detectors: a semantic-segmentation branch and image-level labels.

Hybrid Task Cascade (Chen et al., CVPR 2019) adds a semantic head on the FPN whose per-pixel loss gives the
shared features dense supervision; this is that head without its feature fusion into the RoI heads, so the
detector at test time is the paper's Cascade Mask R-CNN unchanged (the branch is skipped in eval mode and adds
no inference cost). Every pixel of an annotated instance is labelled with its class, the rest is background,
padding is ignored. Off by default (``semantic_weight=0``).

levels P2…P5 ((N, C, H/4, W/4) … (N, C, H/32, W/32)) -> 1×1 conv each, bilinear to the stride-8 grid, sum ->
``num_convs`` × (3×3 conv, ReLU) -> 1×1 conv -> logits (N, K+1, H/8, W/8).

:func:`image_label_loss` is the image-level counterpart: a multi-label loss on the image-averaged top backbone
map (which classes are present in the image), the supervision a plain image classifier gets. It is derived
from the instance labels alone, so any COCO set has it. Off by default (``image_label_weight=0``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = 255


def semantic_targets(masks: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], padded_hw: tuple[int, int],
                     stride: int) -> torch.Tensor:
    """Per-image instance ``masks`` (n_i, H_i, W_i) and ``labels`` (n_i,) in 1..K -> (N, H/stride, W/stride)
    int64 label maps on the padded batch grid: 0 background, the instance's label on its pixels (later
    instances drawn over earlier ones), :data:`IGNORE` on padding. Downsampled by nearest sampling."""
    height, width = padded_hw
    full = torch.full((len(masks), height, width), IGNORE, dtype=torch.int64, device=labels[0].device)
    for i, (m, lab) in enumerate(zip(masks, labels)):
        h, w = m.shape[-2:]
        canvas = full[i, :h, :w]
        canvas.zero_()
        for mask, label in zip(m, lab):
            canvas[mask.bool()] = int(label)
    offset = stride // 2  # the centre pixel of each stride × stride cell
    return full[:, offset::stride, offset::stride][:, :height // stride, :width // stride].contiguous()


class SemanticAuxHead(nn.Module):
    """HTC's semantic branch (fused at stride 8) as an auxiliary loss; see the module docstring."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 128, num_convs: int = 2,
                 num_levels: int = 4, fusion_level: int = 1) -> None:
        super().__init__()
        self.fusion_level, self.stride = fusion_level, 4 * 2 ** fusion_level
        self.lateral = nn.ModuleList(nn.Conv2d(in_channels, channels, 1) for _ in range(num_levels))
        self.convs = nn.Sequential(*[m for _ in range(num_convs)
                                     for m in (nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))])
        self.classifier = nn.Conv2d(channels, num_classes + 1, 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """FPN levels P2… (strides 4, 8, …) -> logits (N, K+1, H/8, W/8) at the fusion level's size."""
        size = levels[self.fusion_level].shape[-2:]
        fused = sum(F.interpolate(conv(x), size=size, mode="bilinear", align_corners=False)
                    if x.shape[-2:] != size else conv(x) for conv, x in zip(self.lateral, levels))
        return self.classifier(self.convs(fused))

    def loss(self, levels: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], labels: Sequence[torch.Tensor],
             padded_hw: tuple[int, int]) -> torch.Tensor:
        """Mean per-pixel cross-entropy over the non-padding pixels of the stride-8 grid."""
        logits = self(levels)
        target = semantic_targets(masks, labels, padded_hw, self.stride)[:, :logits.shape[-2], :logits.shape[-1]]
        return F.cross_entropy(logits, target, ignore_index=IGNORE)


def image_label_targets(labels: Sequence[torch.Tensor], num_classes: int) -> torch.Tensor:
    """Per-image instance ``labels`` (n_i,) in 1..K -> (N, K) float multi-hot: 1 where the class is present."""
    out = torch.zeros(len(labels), num_classes, device=labels[0].device if len(labels) else None)
    for i, lab in enumerate(labels):
        out[i, lab.long() - 1] = 1.0
    return out


def image_label_loss(logits: torch.Tensor, labels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Binary cross-entropy between ``logits`` (N, K) and the images' class presence, mean over N and K."""
    return F.binary_cross_entropy_with_logits(logits, image_label_targets(labels, logits.shape[1]))
