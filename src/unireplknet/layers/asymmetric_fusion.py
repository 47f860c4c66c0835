"""Asymmetric large-kernel convolution for fusing two feature maps (paper §3.4).

The paper fuses X ∈ R^{L1×D} and Y ∈ R^{L2×D} by using Y as the convolution kernel applied to X:

    Z_{i,j} = Σ_{k=1..L2} X_{i+k-1} · Y_{k,j}

Where the notation leaves a choice, we implement (docs/modalities.md, "Asymmetric large-kernel fusion"):

* **Depthwise in the feature dimension**: "Z_{i,j} is the correlation between X starting at position i and
  the filter defined by Y_j", so column j of Y filters column j of X:
  ``Z[b, i, j] = Σ_k Xpad[b, i + k, j] · Y[b, k, j]`` (cross-correlation, like ``F.conv1d``). Z has X's
  shape (L1×D); X and Y must share D.
* **'same' padding**: X is zero-padded by ``p = (L2 - 1) // 2`` on the left and ``L2 - 1 - p`` on the right,
  so Z keeps X's length for odd and even L2 (Z_i is centred on X_i; an even L2 leans one step right).
* **Per sample**: each sample's Y is its own kernel (the batch is folded into the channels of one grouped
  convolution, ``groups = B·D``), no Python loop over positions or samples.
* **2-D maps**: X (B, C, H, W) and Y (B, C, Kh, Kw): ``Z[b,c,i,j] = Σ_{m,n} Xpad[b,c,i+m,j+n]·Y[b,c,m,n]``,
  with the same padding rule per axis.
* Optional ``scale`` (default 1): Z is multiplied by it; the module uses 1/L2 so the output does not grow
  with the kernel length.

Two algorithms give the same result: grouped convolution (``method="conv"``; 2-D odd square kernels go
through our large-kernel depthwise op :func:`unireplknet.ops.dwconv2d`) and FFT (``method="fft"``,
O((L1+L2) log(L1+L2)) per channel, which pays for long kernels). ``"auto"`` picks FFT when the kernel is
long (see :data:`FFT_MIN_KERNEL_1D`, :data:`FFT_MIN_KERNEL_2D`). Both are differentiable in X and Y.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AsymmetricFusion", "asymmetric_conv1d", "asymmetric_conv2d", "same_padding"]

#: ``method="auto"`` uses FFT from this kernel length on (1-D) ...
FFT_MIN_KERNEL_1D = 128
#: ... and from this kernel area on (2-D).
FFT_MIN_KERNEL_2D = 31 * 31

_METHODS = ("auto", "conv", "fft")


def same_padding(k: int) -> tuple[int, int]:
    """(left, right) zero padding that keeps the input length for a kernel of length ``k``."""
    left = (k - 1) // 2
    return left, k - 1 - left


def _check(x: torch.Tensor, y: torch.Tensor, dim: int, method: str, layout: str) -> None:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, not {method!r}")
    if x.dim() != dim or y.dim() != dim:
        raise ValueError(f"asymmetric fusion: X and Y must both be {layout}, got shapes {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"asymmetric fusion: X has batch {x.shape[0]} but Y has {y.shape[0]}; every "
                         "sample needs its own kernel Y")
    if x.dtype != y.dtype or x.device != y.device:
        raise ValueError(f"asymmetric fusion: X ({x.dtype}, {x.device}) and Y ({y.dtype}, {y.device}) must "
                         "share dtype and device")
    if any(s == 0 for s in y.shape[1:]) or any(s == 0 for s in x.shape[1:]):
        raise ValueError(f"asymmetric fusion: empty X {tuple(x.shape)} or Y {tuple(y.shape)}")


def asymmetric_conv1d(x: torch.Tensor, y: torch.Tensor, *, method: str = "auto",
                      scale: float = 1.0) -> torch.Tensor:
    """Per-sample, per-channel correlation of X with the kernel Y over the sequence axis (paper §3.4).

    x (B, L1, D), y (B, L2, D) -> z (B, L1, D) with
    ``z[b, i, j] = scale · Σ_k xpad[b, i + k, j] · y[b, k, j]`` ('same' zero padding, :func:`same_padding`).
    """
    _check(x, y, 3, method, "(B, L, D)")
    if x.shape[2] != y.shape[2]:
        raise ValueError(f"asymmetric fusion: X has feature width D={x.shape[2]} but Y has {y.shape[2]}; "
                         "project both to the same D first")
    B, L1, D = x.shape
    L2 = y.shape[1]
    if method == "auto":
        method = "fft" if L2 >= FFT_MIN_KERNEL_1D else "conv"
    xc = x.transpose(1, 2)  # (B, D, L1)
    yc = y.transpose(1, 2)  # (B, D, L2)
    left, right = same_padding(L2)
    xp = F.pad(xc, (left, right))  # (B, D, L1 + L2 - 1)
    if method == "conv":
        z = F.conv1d(xp.reshape(1, B * D, -1), yc.reshape(B * D, 1, L2), groups=B * D).view(B, D, L1)
    else:
        n = xp.shape[-1]
        z = torch.fft.irfft(torch.fft.rfft(xp, n=n) * torch.fft.rfft(yc, n=n).conj(), n=n)[..., :L1]
    if scale != 1.0:
        z = z * scale
    return z.transpose(1, 2)


def asymmetric_conv2d(x: torch.Tensor, y: torch.Tensor, *, method: str = "auto",
                      scale: float = 1.0) -> torch.Tensor:
    """2-D form: each sample's map Y is the depthwise kernel applied to its map X (paper §3.4, X and Y
    reshaped to H×W×C; channels first here).

    x (B, C, H, W), y (B, C, Kh, Kw) -> z (B, C, H, W) with
    ``z[b, c, i, j] = scale · Σ_{m, n} xpad[b, c, i + m, j + n] · y[b, c, m, n]``.
    """
    _check(x, y, 4, method, "(B, C, H, W)")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"asymmetric fusion: X has {x.shape[1]} channels but Y has {y.shape[1]}; project "
                         "both to the same number of channels first")
    B, C, H, W = x.shape
    Kh, Kw = y.shape[-2:]
    if method == "auto":
        method = "fft" if Kh * Kw >= FFT_MIN_KERNEL_2D else "conv"
    (top, bottom), (left, right) = same_padding(Kh), same_padding(Kw)
    if method == "conv":
        xf = x.reshape(1, B * C, H, W)
        wf = y.reshape(B * C, 1, Kh, Kw)
        if Kh == Kw and Kh % 2 == 1:  # odd square kernel: our large-kernel depthwise op ('same' padding)
            from unireplknet.ops.dwconv import dwconv2d

            z = dwconv2d(xf.contiguous(), wf.contiguous())
        else:
            z = F.conv2d(F.pad(xf, (left, right, top, bottom)), wf, groups=B * C)
        z = z.view(B, C, H, W)
    else:
        xp = F.pad(x, (left, right, top, bottom))
        s = xp.shape[-2:]
        z = torch.fft.irfft2(torch.fft.rfft2(xp, s=s) * torch.fft.rfft2(y, s=s).conj(), s=s)[..., :H, :W]
    if scale != 1.0:
        z = z * scale
    return z


class AsymmetricFusion(nn.Module):
    """Fuses X with Y by using (a projection of) Y as a per-sample large kernel over X (paper §3.4).

    Sequences: x (B, L1, D), y (B, L2, D) -> (B, L1, D). Maps: x (B, C, H, W), y (B, C, Kh, Kw) ->
    (B, C, H, W). ``out = x + proj_out(asym(proj_x(x), proj_y(y)) / kernel_size)`` when ``residual``;
    the projections are D×D Linear layers (1×1 convs for maps), so the module has 3·D·(D+1) parameters.
    """

    def __init__(self, dim: int, *, residual: bool = True, method: str = "auto") -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, not {method!r}")
        self.dim, self.residual, self.method = dim, residual, method
        self.proj_x = nn.Linear(dim, dim)
        self.proj_y = nn.Linear(dim, dim)
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            if x.shape[-1] != self.dim or y.dim() != 3 or y.shape[-1] != self.dim:
                raise ValueError(f"AsymmetricFusion({self.dim}): expected X (B, L1, {self.dim}) and "
                                 f"Y (B, L2, {self.dim}), got {tuple(x.shape)} and {tuple(y.shape)}")
            z = asymmetric_conv1d(self.proj_x(x), self.proj_y(y), method=self.method,
                                  scale=1.0 / y.shape[1])
            out = self.proj_out(z)
        elif x.dim() == 4:
            if x.shape[1] != self.dim or y.dim() != 4 or y.shape[1] != self.dim:
                raise ValueError(f"AsymmetricFusion({self.dim}): expected X (B, {self.dim}, H, W) and "
                                 f"Y (B, {self.dim}, Kh, Kw), got {tuple(x.shape)} and {tuple(y.shape)}")
            xp = self.proj_x(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            yp = self.proj_y(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            z = asymmetric_conv2d(xp, yp, method=self.method, scale=1.0 / math.prod(y.shape[-2:]))
            out = self.proj_out(z.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            raise ValueError(f"AsymmetricFusion: X must be (B, L, D) or (B, C, H, W), got {tuple(x.shape)}")
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        return f"dim={self.dim}, residual={self.residual}, method={self.method!r}"
