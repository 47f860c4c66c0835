"""Parameter-free layout changes between (N, C, H, W) and (N, H, W, C).

On a channels-last tensor both are free views: the FFN's Linear layers then run on contiguous memory.
"""

import torch
from torch import nn


class ToChannelsLast(nn.Module):
    """(N, C, H, W) -> (N, H, W, C) view."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class ToChannelsFirst(nn.Module):
    """(N, H, W, C) -> (N, C, H, W) view."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)
