"""Squeeze-and-Excitation block (paper §3.2.1, Guideline 6)."""

import torch
import torch.nn.functional as F
from torch import nn


class SEBlock(nn.Module):
    """(N, C, H, W) -> same: global average pool, 1×1 conv C→C/4, ReLU, 1×1 conv C/4→C, sigmoid, scale."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.up = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = torch.sigmoid(self.up(F.relu(self.down(s))))
        return x * s
