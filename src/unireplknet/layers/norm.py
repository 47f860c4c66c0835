"""LayerNorm over the channels of an (N, C, H, W) map."""

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over C of (N, C, H, W) (the stem, downsampling and feature norms; eps 1e-6).

    Normalizes the channels-last view, so a channels-last input needs no copy; the output is
    channels-last in memory either way, which keeps the rest of the network on the fast layout.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)
