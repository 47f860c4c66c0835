"""The fast CPU path for the depthwise 'same' convolution (paper §3.1.1).

What PyTorch's CPU backend (oneDNN) does with a depthwise K×K convolution, measured on this project's CPU
(docs/ops.md): the channels-last (NHWC) kernel runs every K at 150–240 GFLOP/s; the NCHW (blocked) kernel is
as fast while the kernel is at most 13 columns wide, and beyond that drops to a reference loop at ~5–10
GFLOP/s (the "cliff"). Tall kernels (K×13) stay on the fast NCHW kernel.

So, for NCHW input with K > 13, the K×K kernel is split into column blocks of width ≤ 13: with the input
zero-padded by K//2 columns, block b (kernel columns c0 .. c0+kw) is a *valid* convolution in W (and
'same' in H) over the padded input's columns c0 .. c0+W+kw-1, and the output is the sum of the blocks.
(The padding must be built into the input: oneDNN's NCHW kernel also falls off the cliff when the W padding
exceeds ~K//2 of the block, and a sliced weight must be made contiguous.)
No wasted FLOPs, no layout conversion, and autograd comes from the F.conv2d calls themselves.
Channels-last input goes straight to oneDNN's NHWC kernel, except for the kernel sizes in
``SLOW_NHWC_K`` (K = 13: that kernel runs ~3× slower per FLOP than K = 11 or 15 on this CPU), whose weights
are zero-padded by one on each side (K + 2, padding + 1: same result, 1.33× the FLOPs, ~2.5× faster).

Dilated kernels (the Dilated Reparam Block's training-form branches, §3.2.2) keep oneDNN's forward, which is
fast, but not its backward: for a dilated depthwise conv oneDNN's input gradient runs 9–17× slower than the
forward it mirrors (K = 7, r = 2 on 8×80×28×28: 3.45 ms against 0.30 ms, 1 thread), so the input gradient is
that forward with the flipped kernel, and the weight gradient is one product-and-sum per tap where oneDNN's is
slow (k = 3, or a kernel that spans the map: 7.5 ms against 1.4 ms at K = 7, r = 2 on 7×7 maps;
benchmarks/dilated_branch_backward.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["GEMM_WGRAD_MIN_K", "GEMM_WGRAD_MIN_K_NHWC", "MAX_FAST_NCHW_WIDTH", "SLOW_NHWC_K", "column_blocks",
           "dilated_dwconv2d_cpu", "dwconv2d_cpu", "is_channels_last", "same_conv", "weight_grad",
           "weight_grad_gemm", "weight_grad_taps"]

#: widest kernel (columns) that oneDNN's NCHW depthwise kernel runs without falling off the cliff.
MAX_FAST_NCHW_WIDTH = 13
#: kernel sizes oneDNN's NHWC depthwise kernel runs anomalously slowly; run as K + 2 with a zero border.
SLOW_NHWC_K = frozenset({13})
#: smallest K whose CPU backward is ours (weight_grad_gemm), NCHW input: measured 2× faster than oneDNN's at
#: K = 5–13, 7–9× at K = 17–31 (4×384×32×32, 1 thread); at K = 3 oneDNN's is faster.
GEMM_WGRAD_MIN_K = 5
#: the same for channels-last input: oneDNN's NHWC backward is faster up to K = 11 (ours 0.6–0.7× at K = 5–9,
#: even at 11), ours from K = 13 (1.2×, 3× at K = 31; 4×384×32×32, 1 thread, docs/benchmarks.md).
GEMM_WGRAD_MIN_K_NHWC = 13


def _nhwc_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.conv2d on NHWC x (N, C, H, W), 'same' padding, stepping around SLOW_NHWC_K."""
    K = weight.shape[-1]
    if K in SLOW_NHWC_K:
        weight, K = F.pad(weight, (1, 1, 1, 1)), K + 2
    return F.conv2d(x, weight, bias, padding=K // 2, groups=weight.shape[0])


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-D tensor stored NHWC (and not also trivially NCHW-contiguous)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def column_blocks(K: int, max_width: int = MAX_FAST_NCHW_WIDTH) -> list[int]:
    """Balanced widths (each ≤ max_width, summing to K) of the column blocks a K-wide kernel is split into."""
    n = -(-K // max_width)
    base, extra = divmod(K, n)
    return [base + 1] * extra + [base] * (n - extra)


def dwconv2d_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                 strategy: str = "auto", wide_nchw: str = "split") -> torch.Tensor:
    """Depthwise 'same' conv for CPU tensors that never takes oneDNN's slow wide-kernel NCHW path.

    x (N, C, H, W) any memory format, weight (C, 1, K, K), bias (C,) or None -> (N, C, H, W) in x's format.
    strategy: "auto" (``wide_nchw`` for NCHW input with K > 13, direct otherwise), "split" (column blocks),
    "channels_last" (convert the input to NHWC and back), or "direct" (plain F.conv2d).
    With autograd and K ≥ GEMM_WGRAD_MIN_K (GEMM_WGRAD_MIN_K_NHWC for channels-last x) the backward is ours:
    grad input = the same forward with the flipped kernel, grad weight = ``weight_grad_gemm`` (oneDNN's
    depthwise backward is 2–9× slower there).
    """
    if strategy not in ("auto", "split", "channels_last", "direct"):
        raise ValueError(f"unknown CPU strategy {strategy!r}; use 'auto', 'split', 'channels_last', 'direct'")
    min_k = GEMM_WGRAD_MIN_K_NHWC if is_channels_last(x) else GEMM_WGRAD_MIN_K
    if _needs_grad(x, weight, bias) and weight.shape[-1] >= min_k:
        return _CpuDepthwiseConv2d.apply(x, weight, bias, strategy, wide_nchw, 1)
    return _forward(x, weight, bias, strategy, wide_nchw)


def _needs_grad(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))


class _CpuDepthwiseConv2d(torch.autograd.Function):
    """y = x ⋆_r w + b on CPU with our backward (x (N, C, H, W), w (C, 1, K, K), b (C,) or None, dilation r)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, strategy: str,
                wide_nchw: str, dilation: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.opts = (strategy, wide_nchw, dilation)
        return same_conv(x, weight, bias, strategy, wide_nchw, dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if is_channels_last(x) and not is_channels_last(grad_out):  # e.g. an expanded grad from .sum()
            grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        if ctx.needs_input_grad[0]:
            gx = same_conv(grad_out, weight.flip(-1, -2), None, *ctx.opts)
        if ctx.needs_input_grad[1]:
            gw = weight_grad(x, grad_out, weight, ctx.opts[2])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            acc = torch.promote_types(grad_out.dtype, torch.float32)  # fp32 sums; fp64 stays fp64
            gb = grad_out.sum(dim=(0, 2, 3), dtype=acc).to(grad_out.dtype)
        return gx, gw, gb, None, None, None


def same_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, strategy: str, wide_nchw: str,
              dilation: int) -> torch.Tensor:
    """The value (no autograd of ours): ``_forward``'s strategies for r = 1, oneDNN's dilated forward otherwise."""
    if dilation == 1:
        return _forward(x, weight, bias, strategy, wide_nchw)
    return F.conv2d(x, weight, bias, padding=dilation * (weight.shape[-1] // 2), dilation=dilation,
                    groups=weight.shape[0])


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, strategy: str,
             wide_nchw: str) -> torch.Tensor:
    C = weight.shape[0]
    K = weight.shape[-1]
    P = K // 2
    if strategy == "auto":
        strategy = "direct" if (is_channels_last(x) or K <= MAX_FAST_NCHW_WIDTH) else wide_nchw
    if strategy == "direct":
        if is_channels_last(x):
            return _nhwc_conv(x, weight, bias)
        return F.conv2d(x, weight, bias, padding=P, groups=C)
    if strategy == "channels_last":
        y = _nhwc_conv(x.contiguous(memory_format=torch.channels_last), weight, bias)
        return y if is_channels_last(x) else y.contiguous()
    out: torch.Tensor | None = None
    c0 = 0
    for kw in column_blocks(K):
        # input columns c0-P .. c0-P+W+kw-1, zero outside x (negative pads crop): one contiguous copy.
        xb = F.pad(x, (P - c0, c0 + kw - 1 - P))
        y = F.conv2d(xb, weight[..., c0:c0 + kw].contiguous(), bias if out is None else None,
                     padding=(P, 0), groups=C)
        out = y if out is None else out.add_(y)
        c0 += kw
    assert out is not None
    return out.contiguous(memory_format=torch.channels_last) if is_channels_last(x) else out


def weight_grad_gemm(x: torch.Tensor, grad_out: torch.Tensor, K: int) -> torch.Tensor:
    """dW (C, 1, K, K) = Σ_{n,h,w} grad_out[n,c,h,w] · x_pad[n,c,h+i,w+j] as K batched GEMMs over channels.

    x, grad_out (N, C, H, W). Each image is zero-padded to (H+K-1, W+K-1) and the images are stacked along
    the rows, so for kernel row i, ``D_i[c] = Gᵀ[c] @ X[c, i : i + N·Hp]`` (W × Wp, one ``torch.bmm``);
    grad_out rows are padded with K-1 zero rows per image so a shifted window never crosses two images.
    Then dW[c, i, j] = Σ_v D_i[c, v, v + j] (a strided diagonal view). oneDNN's own depthwise weight
    gradient runs at ~5 GFLOP/s for large K on this CPU; this runs on MKL GEMM.
    """
    N, C, H, W = x.shape
    P = K // 2
    Hp, Wp = H + 2 * P, W + 2 * P
    xs = F.pad(x.transpose(0, 1), (P, P, P, P))  # (C, N, Hp, Wp)
    xs = F.pad(xs.reshape(C, N * Hp, Wp), (0, 0, 0, K - 1))  # (C, N*Hp + K-1, Wp)
    gs = F.pad(grad_out.transpose(0, 1), (0, 0, 0, 2 * P)).reshape(C, N * Hp, W)  # (C, N*Hp, W)
    gt = gs.transpose(1, 2)  # (C, W, N*Hp)
    acc = torch.promote_types(x.dtype, torch.float32)  # fp32, fp64 for fp64: never below the input
    out = torch.empty((C, K, K), dtype=acc, device=x.device)
    for i in range(K):
        d = torch.bmm(gt, xs[:, i:i + N * Hp])  # (C, W, Wp)
        diag = d.as_strided((C, W, K), (W * Wp, Wp + 1, 1))
        out[:, i] = diag.sum(dim=1, dtype=out.dtype)
    return out.unsqueeze(1)


def dilated_dwconv2d_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                         dilation: int = 2) -> torch.Tensor:
    """Depthwise 'same' conv with dilation r on CPU: oneDNN's forward, our backward.

    x (N, C, H, W) any memory format, weight (C, 1, k, k) with odd k, bias (C,) or None -> (N, C, H, W),
    zero padding r·(k // 2). The value is F.conv2d's; with autograd the input gradient is the same forward
    with the flipped kernel and the weight gradient ``weight_grad_taps`` where oneDNN's is slow.
    """
    if _needs_grad(x, weight, bias):
        return _CpuDepthwiseConv2d.apply(x, weight, bias, "direct", "split", dilation)
    return same_conv(x, weight, bias, "direct", "split", dilation)


def _taps_are_faster(k: int, dilation: int, H: int, W: int) -> bool:
    """Where ``weight_grad_taps`` beats oneDNN's dilated depthwise weight gradient (measured, 1 thread)."""
    return k <= 3 or (k - 1) * dilation >= min(H, W)


def weight_grad(x: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    """dW (C, 1, k, k) of the 'same' depthwise conv with dilation r, by the route measured fastest for it.

    ``weight_grad_gemm`` for r = 1 from GEMM_WGRAD_MIN_K (NCHW) / GEMM_WGRAD_MIN_K_NHWC (channels-last),
    ``weight_grad_taps`` for a dilated kernel where it beats oneDNN, oneDNN's weight-only backward otherwise.
    """
    k = weight.shape[-1]
    H, W = x.shape[-2:]
    if dilation == 1 and k >= (GEMM_WGRAD_MIN_K_NHWC if is_channels_last(x) else GEMM_WGRAD_MIN_K):
        return weight_grad_gemm(x, grad_out, k).to(weight.dtype)
    if dilation > 1 and _taps_are_faster(k, dilation, H, W):
        return weight_grad_taps(x, grad_out, k, dilation).to(weight.dtype)
    pad = dilation * (k // 2)
    return torch.ops.aten.convolution_backward(
        grad_out, x, weight, None, [1, 1], [pad, pad], [dilation, dilation], False, [0, 0], weight.shape[0],
        [False, True, False])[1]


def weight_grad_taps(x: torch.Tensor, grad_out: torch.Tensor, k: int, dilation: int = 1) -> torch.Tensor:
    """dW (C, 1, k, k) = Σ_{n,h,w} grad_out[n,c,h,w] · x_pad[n,c,h+r·i,w+r·j], one product and sum per tap.

    x, grad_out (N, C, H, W); x_pad is x zero-padded by r·(k // 2). Sums in float32 at least.
    """
    H, W = x.shape[-2:]
    pad = dilation * (k // 2)
    xp = F.pad(x, (pad, pad, pad, pad))
    acc = torch.promote_types(x.dtype, torch.float32)
    out = torch.empty((x.shape[1], k, k), dtype=acc, device=x.device)
    for i in range(k):
        for j in range(k):
            window = xp[:, :, i * dilation:i * dilation + H, j * dilation:j * dilation + W]
            out[:, i, j] = (grad_out * window).sum(dim=(0, 2, 3), dtype=acc)
    return out.unsqueeze(1)
