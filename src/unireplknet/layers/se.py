"""Squeeze-and-Excitation block (paper §3.2.1, Guideline 6)."""

import torch
import torch.nn.functional as F
from torch import nn


class SEBlock(nn.Module):
    """(N, C, H, W) -> same: global average pool, 1×1 conv C→C/4, ReLU, 1×1 conv C/4→C, sigmoid, scale.

    The 1×1 convs keep the official parameter shapes (C', C, 1, 1) but run as matrix products on the
    pooled (N, C) vector; :meth:`channel_weights` gives the (N, C) factors alone so a caller can fold them
    into the next linear layer instead of scaling the whole map.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.up = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> sigmoid excitation weights (N, C)."""
        s = x.mean(dim=(2, 3))
        s = F.relu(F.linear(s, self.down.weight.flatten(1), self.down.bias))
        return torch.sigmoid(F.linear(s, self.up.weight.flatten(1), self.up.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel_weights(x)[:, :, None, None]
