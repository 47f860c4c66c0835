"""Test-time inference of a segmenter, as MMSegmentation does it (paper Table 7's SS and MS columns).

- ``whole``: the image (resized to the test scale) padded to a multiple of ``size_divisor``, one forward pass,
  the logits cropped back to the unpadded size.
- ``slide``: windows of ``crop`` every ``stride`` pixels (the last one flush with the border), logits of
  overlapping windows averaged.
- multi-scale + flip: the above at every ratio (× the test scale), with and without a horizontal flip; the
  softmax probabilities, each resized to the original size, are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unireplknet.models.segmentation import resize

MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def rescale_size(hw: tuple[int, int], scale: tuple[float, float]) -> tuple[int, int]:
    """(h, w) resized, keeping the ratio, as large as fits ``scale`` = (long edge, short edge) bounds."""
    h, w = hw
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits (the main ones if it returns a tuple), in float32 at least (under AMP too)."""
    out = model(x)
    out = out[0] if isinstance(out, tuple) else out
    return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out


def predict_whole(model: nn.Module, x: torch.Tensor, size_divisor: int | None = 32) -> torch.Tensor:
    """(N, 3, h, w) -> logits (N, K, h, w): zero-pad bottom/right to a multiple of ``size_divisor``, predict, crop."""
    h, w = x.shape[-2:]
    if size_divisor:
        pad_h, pad_w = -h % size_divisor, -w % size_divisor
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return _logits(model, x)[..., :h, :w]


def sliding_windows(hw: tuple[int, int], crop: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of MMSeg's windows: every ``stride``, the last flush with the border."""
    corners = []
    for size, c, s in zip(hw, crop, stride):
        grids = max(size - c + s - 1, 0) // s + 1
        corners.append([max(min(i * s + c, size) - c, 0) for i in range(grids)])
    return [(y, x) for y in corners[0] for x in corners[1]]


def predict_slide(model: nn.Module, x: torch.Tensor, crop: int | tuple[int, int] = 512,
                  stride: int | tuple[int, int] = 341) -> torch.Tensor:
    """(N, 3, h, w) -> logits (N, K, h, w), the average over the overlapping windows that cover each pixel."""
    crop = (crop, crop) if isinstance(crop, int) else tuple(crop)
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    h, w = x.shape[-2:]
    total = count = None
    for y0, x0 in sliding_windows((h, w), crop, stride):
        y1, x1 = min(y0 + crop[0], h), min(x0 + crop[1], w)
        logits = _logits(model, x[..., y0:y1, x0:x1])
        if total is None:
            total = logits.new_zeros(*logits.shape[:2], h, w)
            count = logits.new_zeros(1, 1, h, w)
        total[..., y0:y1, x0:x1] += logits
        count[..., y0:y1, x0:x1] += 1
    return total / count


@torch.no_grad()
def segment(model: nn.Module, image: torch.Tensor, scale: tuple[int, int] | None = (2048, 512),
            mode: str = "whole", ratios: Sequence[float] = (1.0,), flip: bool = False,
            crop: int | tuple[int, int] = 512, stride: int | tuple[int, int] = 341,
            size_divisor: int | None = 32) -> torch.Tensor:
    """Class probabilities (N, K, H, W) of normalized images (N, 3, H, W), at their own size.

    For each ratio r the image is resized to fit ``scale`` × r ((long, short) edge bounds, ratio kept; with
    ``scale=None``, by r itself), predicted in ``mode`` ('whole' or 'slide'), optionally also flipped,
    and the softmax of the logits resized back to (H, W) is averaged over all passes. Single scale:
    ``ratios=(1.0,), flip=False``; Table 7's MS column: ``ratios=MS_RATIOS, flip=True``.
    The model should be in eval mode.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    size = tuple(image.shape[-2:])
    probs, passes = None, 0
    for ratio in ratios:
        hw = rescale_size(size, (scale[0] * ratio, scale[1] * ratio)) if scale else \
            (int(size[0] * ratio + 0.5), int(size[1] * ratio + 0.5))
        scaled = resize(image, hw)
        for flipped in (False, True) if flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            logits = predict_whole(model, x, size_divisor) if mode == "whole" else predict_slide(model, x, crop, stride)
            logits = resize(logits, size)
            p = torch.softmax(logits.flip(-1) if flipped else logits, dim=1)
            probs = p if probs is None else probs + p
            passes += 1
    return probs / passes


class Segmenter(nn.Module):
    """A segmentation model with its test-time inference: images (N, 3, H, W), or a list of (3, H_i, W_i) of
    different sizes, -> class probabilities (N, K, H, W), or a list of (K, H_i, W_i). ``settings`` go to
    :func:`segment` (``scale``, ``mode``, ``ratios``, ``flip``, ``crop``, ``stride``, ``size_divisor``)."""

    def __init__(self, model: nn.Module, **settings) -> None:
        super().__init__()
        self.model, self.settings = model, settings

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(images, torch.Tensor):
            return segment(self.model, images, **self.settings)
        return [segment(self.model, image[None], **self.settings)[0] for image in images]
