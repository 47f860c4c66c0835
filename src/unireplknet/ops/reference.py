"""The reference backend: plain ``F.conv2d`` (cuDNN on GPU, oneDNN on CPU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dwconv2d_torch"]


def dwconv2d_torch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (N, C, H, W) * weight (C, 1, K, K) [+ bias (C,)] -> (N, C, H, W); stride 1, zero padding K // 2."""
    return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=weight.shape[0])
