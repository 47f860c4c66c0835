"""Global Response Normalization (ConvNeXt V2), as used inside the UniRepLKNet FFN."""

import torch
from torch import nn


class GRN(nn.Module):
    """GRN on (N, H, W, C): ``(gamma * N(x) + 1) * x + beta`` with ``N = G / (mean_C G + 1e-6)``,
    ``G`` the L2 norm over H and W. ``use_bias=False`` is the deploy form (beta folded into the next Linear).
    """

    def __init__(self, dim: int, use_bias: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim)) if use_bias else None

    def channel_scale(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H, W, C) -> the per-sample factor ``gamma * N(x) + 1`` (N, C) that multiplies x."""
        n_, h, w, c = x.shape
        # L2 norm over H and W, on the (N, H·W, C) view: one reduction over a single strided dimension runs
        # several times faster on CPU than the same reduction over two dimensions or a square-then-sum.
        return self.scale_from_norms(torch.linalg.vector_norm(x.reshape(n_, h * w, c), ord=2, dim=1))

    def scale_from_norms(self, g: torch.Tensor) -> torch.Tensor:
        """The per-channel L2 norms over H and W, ``g`` (N, C) -> the factor ``gamma * N + 1`` (N, C)."""
        return self.gamma.view(1, -1) * (g / (g.mean(dim=-1, keepdim=True) + self.eps)) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x * self.channel_scale(x)[:, None, None, :]
        return out if self.beta is None else out + self.beta
