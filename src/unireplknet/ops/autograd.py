"""Autograd for the Triton backend: forward, grad w.r.t. input (flipped-kernel conv), weight and bias."""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

__all__ = ["TritonDepthwiseConv2d", "dwconv2d_triton"]


class TritonDepthwiseConv2d(torch.autograd.Function):
    """y = x ⋆ w + b with x (N, C, H, W), w (C, 1, K, K), b (C,) or None; 'same' padding, stride 1."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        from unireplknet.ops import triton_kernels as tk

        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return tk.dwconv_fwd(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        from unireplknet.ops import triton_kernels as tk

        x, weight = ctx.saved_tensors
        K = weight.shape[-1]
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = tk.dwconv_fwd(grad_out, weight, None, flip=True)
        if ctx.needs_input_grad[1]:
            gw = tk.dwconv_wgrad(x, grad_out, K).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            acc = torch.promote_types(grad_out.dtype, torch.float32)  # fp32 sums; fp64 stays fp64
            gb = grad_out.sum(dim=(0, 2, 3), dtype=acc).to(grad_out.dtype)
        return gx, gw, gb


def dwconv2d_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Triton depthwise 'same' conv with autograd; x (N, C, H, W), weight (C, 1, K, K), bias (C,)."""
    return TritonDepthwiseConv2d.apply(x, weight, bias)
