"""Depthwise 'same' convolution: functional entry point and module.

x (N, C, H, W) * weight (C, 1, K, K) [+ bias (C,)] -> (N, C, H, W), stride 1, zero padding K // 2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def dwconv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
             backend: str = "auto") -> torch.Tensor:
    """Depthwise convolution with an odd square kernel, stride 1 and 'same' zero padding."""
    k = weight.shape[-1]
    return F.conv2d(x, weight, bias, padding=k // 2, groups=weight.shape[0])


class DepthwiseConv2d(nn.Module):
    """Depthwise K×K convolution, stride 1, 'same' padding; parameters ``weight`` (C, 1, K, K), ``bias`` (C,)."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = True, backend: str = "auto") -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.kernel_size * self.kernel_size)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dwconv2d(x, self.weight, self.bias, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}, backend={self.backend!r}"
