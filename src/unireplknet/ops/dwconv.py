"""Depthwise 'same' convolution: functional entry point and module (paper §3.1.1, Guideline 1).

x (N, C, H, W) * weight (C, 1, K, K) [+ bias (C,)] -> (N, C, H, W), stride 1, zero padding K // 2.
Backends and how "auto" chooses: ops/dispatch.py; algorithm and roofline: docs/ops.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unireplknet.ops import dispatch
from unireplknet.ops.compiled_cpu import dwconv2d_cpu_compiled
from unireplknet.ops.cpu import dilated_dwconv2d_cpu, dwconv2d_cpu
from unireplknet.ops.reference import dwconv2d_torch

__all__ = ["DepthwiseConv2d", "dwconv2d"]

_FAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _validate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if x.dim() != 4:
        raise ValueError(f"dwconv2d: x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[1] != 1:
        raise ValueError(f"dwconv2d: weight must be (C, 1, K, K), got shape {tuple(weight.shape)}")
    kh, kw = weight.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"dwconv2d: kernel must be odd for 'same' padding, got {kh}x{kw}; use an odd K")
    if weight.shape[0] != x.shape[1]:
        raise ValueError(f"dwconv2d: weight has {weight.shape[0]} channels but x has {x.shape[1]}; "
                         "weight must be (C, 1, K, K) with C = x.shape[1]")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"dwconv2d: bias must be ({weight.shape[0]},), got shape {tuple(bias.shape)}")
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(f"dwconv2d: x ({x.dtype}), weight ({weight.dtype}) and bias must share a dtype; "
                         "cast them (or use autocast) first")


def _autocast(x: torch.Tensor, weight: torch.Tensor,
              bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Under autocast, cast like F.conv2d does (to the autocast dtype); autograd sees the casts."""
    dev = x.device.type
    if dev not in ("cpu", "cuda") or not torch.is_autocast_enabled(dev):
        return x, weight, bias
    dt = torch.get_autocast_dtype(dev)
    if not (x.is_floating_point() and weight.is_floating_point()):
        return x, weight, bias
    return x.to(dt), weight.to(dt), None if bias is None else bias.to(dt)


def dwconv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
             backend: str = "auto", stride: int | tuple[int, int] = 1,
             padding: int | tuple[int, int] | None = None,
             dilation: int | tuple[int, int] = 1) -> torch.Tensor:
    """Depthwise convolution with an odd square kernel, stride 1 and 'same' zero padding.

    x (N, C, H, W) in any memory format, weight (C, 1, K, K), bias (C,) or None -> (N, C, H, W) (same format
    as x for the fast backends). float32/float16/bfloat16 (float64 too: reference and Triton).
    ``backend``: "auto" | "torch" | "cpu" | "triton" (see ops/dispatch.py). A non-default stride or padding or
    a non-square kernel is passed to F.conv2d (default padding = dilation·(K//2), 'same'); a square dilation
    takes the CPU backend's backward (ops/cpu.py) where that backend is chosen, F.conv2d otherwise.
    """
    dispatch.check_backend_name(backend)
    if weight.dim() != 4:
        raise ValueError(f"dwconv2d: weight must be (C, 1, K, K), got shape {tuple(weight.shape)}")
    C = weight.shape[0]
    kh, kw = int(weight.shape[-2]), int(weight.shape[-1])
    stride, dilation = _pair(stride), _pair(dilation)
    same = (dilation[0] * (kh // 2), dilation[1] * (kw // 2))
    pad = same if padding is None else _pair(padding)
    if dispatch.tracing():  # jit.trace / ONNX export: one plain convolution node, no Python-side checks
        return F.conv2d(x, weight, bias, stride=stride, padding=pad, dilation=dilation, groups=C)
    x, weight, bias = _autocast(x, weight, bias)
    _validate(x, weight, bias)
    if kh != kw or stride != (1, 1) or pad != same or x.dtype not in _FAST_DTYPES \
            or dilation[0] != dilation[1]:
        return F.conv2d(x, weight, bias, stride=stride, padding=pad, dilation=dilation, groups=C)
    chosen = dispatch.resolve_backend(x, kh, backend)
    if chosen == "cpu" and dispatch.compiling():
        return dwconv2d_cpu_compiled(x, weight, bias, dilation[0], dispatch.CPU_NCHW_STRATEGY)
    if dilation != (1, 1):  # the Dilated Reparam Block's branches: only the CPU path has its own backward
        if chosen == "cpu":
            return dilated_dwconv2d_cpu(x, weight, bias, dilation[0])
        return F.conv2d(x, weight, bias, padding=pad, dilation=dilation, groups=C)
    if chosen == "cpu":
        return dwconv2d_cpu(x, weight, bias, wide_nchw=dispatch.CPU_NCHW_STRATEGY)
    if chosen == "triton":
        from unireplknet.ops.autograd import dwconv2d_triton

        if backend == "auto" and x.device.type == "cuda":
            try:
                return dwconv2d_triton(x, weight, bias)
            except Exception as err:  # compile/launch failure on an unmeasured GPU: never a wrong answer
                dispatch.mark_failed(x, kh, err)
                return dwconv2d_torch(x, weight, bias)
        return dwconv2d_triton(x, weight, bias)
    return dwconv2d_torch(x, weight, bias)


class DepthwiseConv2d(nn.Module):
    """Depthwise K×K convolution, stride 1, 'same' padding; parameters ``weight`` (C, 1, K, K), ``bias`` (C,).

    Input / output (N, C, H, W). The backend is chosen per call (ops/dispatch.py) unless fixed here;
    TorchScript gets plain F.conv2d, and timm's FX tracers keep the module as a leaf (models/timm_registry.py).
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True, backend: str = "auto") -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}; use an odd kernel size")
        if channels <= 0:
            raise ValueError(f"channels must be positive, got {channels}")
        dispatch.check_backend_name(backend)
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
        if torch.jit.is_scripting():  # TorchScript compiles only this branch: the plain convolution
            return F.conv2d(x, self.weight, self.bias, padding=self.kernel_size // 2, groups=self.channels)
        return dwconv2d(x, self.weight, self.bias, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"{self.channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}, "
                f"backend={self.backend!r}")
