"""The CPU depthwise op as ``torch.library`` custom ops, for graphs that ``torch.compile`` builds.

Under torch.compile a plain F.conv2d becomes inductor's convolution, whose depthwise backward is oneDNN's slow
one (a 13×13 block with its dilated branches, training form, 80×28² maps, batch 8, 1 thread: 110 ms compiled
against 29 ms through these ops; benchmarks/dilated_branch_backward.py). Here the forward and both gradients
of ops/cpu.py are opaque custom ops with fake (shape-only) implementations, so dynamo keeps them in one graph
(no break) and the backward graph calls ours. x (N, C, H, W), weight (C, 1, k, k), 'same' zero padding
r·(k // 2).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from unireplknet.ops.cpu import is_channels_last, same_conv, weight_grad

__all__ = ["dwconv2d_cpu_compiled"]


def _format(x: Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


@torch.library.custom_op("unireplknet::dwconv2d_cpu", mutates_args=(), device_types="cpu")
def _conv(x: Tensor, weight: Tensor, dilation: int, nchw_strategy: str) -> Tensor:
    return same_conv(x, weight, None, "auto", nchw_strategy, dilation).contiguous(memory_format=_format(x))


@_conv.register_fake
def _conv_fake(x: Tensor, weight: Tensor, dilation: int, nchw_strategy: str) -> Tensor:
    return torch.empty_like(x, memory_format=_format(x))


@torch.library.custom_op("unireplknet::dwconv2d_cpu_weight_grad", mutates_args=(), device_types="cpu")
def _weight_grad(x: Tensor, grad_out: Tensor, weight: Tensor, dilation: int) -> Tensor:
    return weight_grad(x, grad_out, weight, dilation)


@_weight_grad.register_fake
def _weight_grad_fake(x: Tensor, grad_out: Tensor, weight: Tensor, dilation: int) -> Tensor:
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def _setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    x, weight, dilation, nchw_strategy = inputs
    ctx.save_for_backward(x, weight)
    ctx.dilation, ctx.nchw_strategy = dilation, nchw_strategy


def _backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
    x, weight = ctx.saved_tensors
    grad_out = grad_out.contiguous(memory_format=_format(x))
    gx = _conv(grad_out, weight.flip(-1, -2), ctx.dilation, ctx.nchw_strategy) if ctx.needs_input_grad[0] else None
    gw = _weight_grad(x, grad_out, weight, ctx.dilation) if ctx.needs_input_grad[1] else None
    return gx, gw, None, None


_conv.register_autograd(_backward, setup_context=_setup_context)


def dwconv2d_cpu_compiled(x: Tensor, weight: Tensor, bias: Tensor | None, dilation: int,
                          nchw_strategy: str) -> Tensor:
    """The CPU op for a graph being compiled: (N, C, H, W) -> (N, C, H, W) in x's memory format."""
    out = _conv(x, weight, dilation, nchw_strategy)
    return out if bias is None else out + bias.view(1, -1, 1, 1)
