"""Structural re-parameterization math (paper §3.2.2): exact identities between training and deploy forms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bn_scale_shift(bn: nn.BatchNorm2d | nn.BatchNorm1d | nn.SyncBatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference-time BatchNorm as ``y = scale * x + shift``; returns (scale, shift), each (C,)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def fuse_bn(kernel: torch.Tensor, bn: nn.Module, conv_bias: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an inference BatchNorm that follows a conv into the conv.

    kernel (C_out, C_in/groups, k, k), conv_bias (C_out,) or None -> (kernel', bias').
    """
    scale, shift = bn_scale_shift(bn)
    bias = shift if conv_bias is None else shift + conv_bias * scale
    return kernel * scale.reshape(-1, 1, 1, 1), bias


def dilate_kernel(kernel: torch.Tensor, dilation: int) -> torch.Tensor:
    """The non-dilated kernel equal to ``kernel`` applied with ``dilation`` (paper eq. 1).

    (C, 1, k, k) -> (C, 1, (k-1)r+1, (k-1)r+1), with zeros between the taps. Same result as
    ``conv_transpose2d(kernel, ones(1,1,1,1), stride=r)``, written as a strided write.
    """
    if dilation == 1:
        return kernel
    c, i, kh, kw = kernel.shape
    out = kernel.new_zeros(c, i, (kh - 1) * dilation + 1, (kw - 1) * dilation + 1)
    out[:, :, ::dilation, ::dilation] = kernel
    return out


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a centred (C, 1, k, k) kernel to (C, 1, size, size); ``size - k`` must be even and >= 0."""
    k = kernel.shape[-1]
    if size < k or (size - k) % 2:
        raise ValueError(f"cannot centre a {k}x{k} kernel in {size}x{size}")
    p = (size - k) // 2
    return F.pad(kernel, [p, p, p, p]) if p else kernel


def merge_bn_into_linear(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.Module
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a BatchNorm over the outputs of a Linear into it: weight (C_out, C_in), bias (C_out,) or None."""
    scale, shift = bn_scale_shift(bn)
    new_bias = shift if bias is None else shift + bias * scale
    return weight * scale[:, None], new_bias
