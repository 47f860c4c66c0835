"""Triton kernels for the depthwise 'same' convolution (paper §3.1.1, Guideline 1).

Imported lazily (only when the ``"triton"`` backend runs): importing this module imports triton.

Algorithm: a row-Toeplitz implicit GEMM. For one channel ``c`` and kernel row ``i`` the contribution to a
tile of output rows ``m = (n, h)`` and output columns ``w0 .. w0+BW`` is a matrix product

    Y[m, v] += X_i[m, u] @ T_i[u, v],   X_i[m, u] = x[n, c, h + i - P, w0 - P + u],
                                          T_i[u, v] = weight[c, i, u - v]  (0 <= u - v < K, else 0)

with ``u`` in ``[0, DK)``, ``DK = next_pow2(BW + K - 1)``. Rows of *all* images of the channel share ``T_i``,
so the banded Toeplitz block is built once per (tile, i) and reused over ``BM`` rows; the products run on
``tl.dot`` (tensor cores for fp16/bf16, TF32x3 or IEEE FMA for fp32). The input tile is read once per
kernel row ``i`` (K times per output tile, from L1/L2), never K² times.

* forward: the kernel above (``FLIP=False``).
* grad w.r.t. input: the same kernel on ``grad_out`` with the flipped kernel (``FLIP=True``; no copy).
* grad w.r.t. weight: per program a (channel, column tile, row split) partial
  ``D_i = grad_out_tileᵀ @ X_i`` (BW × DK, reduced over the program's rows on ``tl.dot``), then
  ``dW[c, i, j] = Σ_v D_i[v, v + j]`` (a diagonal gather). Partials go to a
  (splits, col_tiles, C, K, K) fp32 buffer summed by torch — no atomics, deterministic.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["dwconv_fwd", "dwconv_wgrad", "fwd_config", "fwd_launch", "wgrad_config", "wgrad_launch"]


# Only language builtins inside the kernels (tl.full / tl.reduce, not tl.zeros / tl.sum, which are themselves
# @jit functions): then the kernels also run under TRITON_INTERPRET=1 when triton.language was imported
# before that variable was set (e.g. by torch._dynamo), as happens in a test session.
@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _dw_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    N, C, H, W,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    K: tl.constexpr, P: tl.constexpr, FLIP: tl.constexpr, HAS_BIAS: tl.constexpr,
    BM: tl.constexpr, BW: tl.constexpr, DK: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_w = tl.program_id(1)
    c = tl.program_id(2)
    m = pid_m * BM + tl.arange(0, BM)
    m_ok = m < N * H
    n = m // H
    h = m % H
    w0 = pid_w * BW
    u = tl.arange(0, DK)
    v = tl.arange(0, BW)
    cols = w0 - P + u
    col_ok = (cols >= 0) & (cols < W)
    d = u[:, None] - v[None, :]
    t_ok = (d >= 0) & (d < K)
    wj = K - 1 - d if FLIP else d
    x_base = x_ptr + n.to(tl.int64) * sxn + c.to(tl.int64) * sxc
    w_base = w_ptr + c * K * K
    acc = tl.full((BM, BW), 0, ACC)
    for i in range(K):
        hh = h + i - P
        r_ok = m_ok & (hh >= 0) & (hh < H)
        xt = tl.load(x_base[:, None] + hh[:, None] * sxh + cols[None, :] * sxw,
                     mask=r_ok[:, None] & col_ok[None, :], other=0.0)
        wi = K - 1 - i if FLIP else i
        tt = tl.load(w_base + wi * K + wj, mask=t_ok, other=0.0)
        if UPCAST:
            xt = xt.to(tl.float32)
            tt = tt.to(tl.float32)
        acc = tl.dot(xt, tt, acc, input_precision=PRECISION, out_dtype=ACC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c).to(ACC)
    out_cols = w0 + v
    y_off = n.to(tl.int64)[:, None] * syn + c.to(tl.int64) * syc + h[:, None] * syh + out_cols[None, :] * syw
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & (out_cols < W)[None, :])


@triton.jit
def _dw_wgrad_kernel(
    x_ptr, g_ptr, part_ptr,
    N, C, H, W, ROWS_PER_SPLIT,
    sxn, sxc, sxh, sxw,
    sgn, sgc, sgh, sgw,
    K: tl.constexpr, P: tl.constexpr, KB: tl.constexpr,
    BM: tl.constexpr, BW: tl.constexpr, DK: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    c = tl.program_id(0)
    pid_w = tl.program_id(1)
    s = tl.program_id(2)
    n_wt = tl.num_programs(1)
    w0 = pid_w * BW
    u = tl.arange(0, DK)
    v = tl.arange(0, BW)
    j = tl.arange(0, KB)
    cols = w0 - P + u
    col_ok = (cols >= 0) & (cols < W)
    gcols = w0 + v
    gcol_ok = gcols < W
    diag = v[:, None] + j[None, :]
    diag_ok = (j < K)[None, :] & (diag < DK)
    diag = tl.minimum(diag, DK - 1)
    row_lo = s * ROWS_PER_SPLIT
    row_hi = tl.minimum(row_lo + ROWS_PER_SPLIT, N * H)
    base_c_x = x_ptr + c.to(tl.int64) * sxc
    base_c_g = g_ptr + c.to(tl.int64) * sgc
    part_base = part_ptr + ((s * n_wt + pid_w) * C + c).to(tl.int64) * (K * K)
    for i in range(K):
        dacc = tl.full((BW, DK), 0, ACC)
        for m0 in range(row_lo, row_hi, BM):
            m = m0 + tl.arange(0, BM)
            m_ok = m < row_hi
            n = m // H
            h = m % H
            g = tl.load(base_c_g + n.to(tl.int64)[:, None] * sgn + h[:, None] * sgh + gcols[None, :] * sgw,
                        mask=m_ok[:, None] & gcol_ok[None, :], other=0.0)
            hh = h + i - P
            r_ok = m_ok & (hh >= 0) & (hh < H)
            xt = tl.load(base_c_x + n.to(tl.int64)[:, None] * sxn + hh[:, None] * sxh + cols[None, :] * sxw,
                         mask=r_ok[:, None] & col_ok[None, :], other=0.0)
            if UPCAST:
                g = g.to(tl.float32)
                xt = xt.to(tl.float32)
            dacc = tl.dot(tl.trans(g), xt, dacc, input_precision=PRECISION, out_dtype=ACC)
        picked = tl.gather(dacc, diag, 1)
        picked = tl.where(diag_ok, picked, 0.0)
        gw = tl.reduce(picked, 0, _add)
        tl.store(part_base + i * K + j, gw, mask=j < K)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _capability(x: torch.Tensor) -> int | None:
    """The CUDA compute capability of x's device as 80, 90, ...; None for CPU tensors (the interpreter)."""
    if not x.is_cuda:
        return None
    major, minor = torch.cuda.get_device_capability(x.device)
    return 10 * major + minor


def _precision(dtype: torch.dtype, capability: int | None) -> str:
    # fp32: three-pass TF32 keeps ~fp32 accuracy on tensor cores (sm80+); IEEE FMA before Ampere and in the
    # interpreter. UNIREPLKNET_DWCONV_FP32_PRECISION (tf32x3 | tf32 | ieee) overrides on sm80+.
    if dtype == torch.float32 and capability is not None and capability >= 80:
        return os.environ.get("UNIREPLKNET_DWCONV_FP32_PRECISION", "tf32x3")
    return "ieee"


def _upcast(dtype: torch.dtype, capability: int | None) -> bool:
    # Triton 3.7's interpreter (CPU tensors) computes bf16 tl.dot wrongly (numpy has no bf16): upcast there only.
    return dtype == torch.bfloat16 and capability is None


def _numerics(dtype: torch.dtype, capability: int | None) -> dict:
    """The kernels' PRECISION, ACC and UPCAST meta-parameters for this dtype on this GPU (None: interpreter)."""
    return {"PRECISION": _precision(dtype, capability), "ACC": _acc(dtype), "UPCAST": _upcast(dtype, capability)}


def _part_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _acc(dtype: torch.dtype) -> tl.dtype:
    # fp64 (tests, gradcheck) accumulates in fp64; everything else in fp32.
    return tl.float64 if dtype == torch.float64 else tl.float32


def fwd_config(rows: int, W: int, K: int, dtype: torch.dtype) -> dict[str, int]:
    """Tile sizes for the forward / input-grad kernel (shape-based, no autotuning).

    BW output columns per tile (16 or 32, ≥ the dot minimum of 16), DK = next_pow2(BW + K - 1) staged input
    columns, BM rows of (n, h) per tile; wider rows tiles amortise building the Toeplitz block. 8 warps once
    the staged tile (BM × DK) reaches 8 KB, and BM = 16 for fp32/fp64 with DK > 64 (K ≥ 35): with fewer warps
    or more rows ptxas spills (or collapses to 32 registers) on sm_80 / sm_90 (benchmarks/triton_aot.py).
    """
    BW = 16 if W <= 16 else 32
    DK = max(16, _next_pow2(BW + K - 1))
    half = dtype in (torch.float16, torch.bfloat16)
    BM = (128 if DK <= 64 else 64) if half else (64 if DK <= 64 else 16)
    BM = min(BM, max(16, _next_pow2(rows)))
    num_warps = 8 if BM * DK * dtype.itemsize >= 8192 else 4
    return {"BM": BM, "BW": BW, "DK": DK, "num_warps": num_warps}


def wgrad_config(rows: int, W: int, K: int, C: int, dtype: torch.dtype) -> dict[str, int]:
    """Tiles and row splits for the weight-gradient kernel: enough programs (~2048) to fill a GPU.

    8 warps (with 4, ptxas spills up to 440 bytes per thread at BM = 64 on sm_80 / sm_90), BM = 16 for
    fp32/fp64 when DK > 64 (benchmarks/triton_aot.py).
    """
    BW = 16 if W <= 16 else 32
    DK = max(16, _next_pow2(BW + K - 1))
    wide = dtype in (torch.float32, torch.float64)
    BM = min(16 if (wide and DK > 64) else 64, max(16, _next_pow2(rows)))
    n_wt = -(-W // BW)
    want = max(1, 2048 // max(1, C * n_wt))
    splits = max(1, min(want, -(-rows // (4 * BM))))
    rows_per_split = -(-rows // splits)
    rows_per_split = -(-rows_per_split // BM) * BM
    splits = -(-rows // rows_per_split)
    return {"BM": BM, "BW": BW, "DK": DK, "KB": max(16, _next_pow2(K)), "splits": splits,
            "rows_per_split": rows_per_split, "num_warps": 8}


def fwd_launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor, flip: bool,
               cfg: dict[str, int], capability: int | None) -> tuple[tuple[int, int, int], tuple, dict]:
    """(grid, positional args, meta-parameters) of one forward-kernel launch; ``weight`` contiguous.

    Shared by ``dwconv_fwd`` and the ahead-of-time compile check (benchmarks/triton_aot.py), so that
    check compiles exactly what a launch on a GPU of that ``capability`` compiles.
    """
    N, C, H, W = x.shape
    K = weight.shape[-1]
    grid = (triton.cdiv(N * H, cfg["BM"]), triton.cdiv(W, cfg["BW"]), C)
    args = (x, weight, bias if bias is not None else weight, y, N, C, H, W, *x.stride(), *y.stride())
    meta = dict(K=K, P=K // 2, FLIP=flip, HAS_BIAS=bias is not None, BM=cfg["BM"], BW=cfg["BW"], DK=cfg["DK"],
                num_warps=cfg.get("num_warps", 4), **_numerics(x.dtype, capability))
    return grid, args, meta


def wgrad_launch(x: torch.Tensor, grad_out: torch.Tensor, part: torch.Tensor, K: int, cfg: dict[str, int],
                 capability: int | None) -> tuple[tuple[int, int, int], tuple, dict]:
    """(grid, positional args, meta-parameters) of one weight-gradient launch into ``part`` (see ``fwd_launch``)."""
    N, C, H, W = x.shape
    grid = (C, triton.cdiv(W, cfg["BW"]), cfg["splits"])
    args = (x, grad_out, part, N, C, H, W, cfg["rows_per_split"], *x.stride(), *grad_out.stride())
    meta = dict(K=K, P=K // 2, KB=cfg["KB"], BM=cfg["BM"], BW=cfg["BW"], DK=cfg["DK"],
                num_warps=cfg.get("num_warps", 4), **_numerics(x.dtype, capability))
    return grid, args, meta


def dwconv_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, flip: bool = False,
               config: dict[str, int] | None = None) -> torch.Tensor:
    """y (N, C, H, W) = x (N, C, H, W) ⋆ weight (C, 1, K, K) [+ bias (C,)], 'same' padding; any strides.

    ``flip=True`` convolves with the 180°-rotated kernel (the gradient w.r.t. the input).
    The output keeps the input's memory format.
    """
    N, C, H, W = x.shape
    K = weight.shape[-1]
    fmt = torch.channels_last if (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
                                  and not x.is_contiguous()) else torch.contiguous_format
    y = torch.empty((N, C, H, W), device=x.device, dtype=x.dtype, memory_format=fmt)
    if y.numel() == 0:
        return y
    cfg = config or fwd_config(N * H, W, K, x.dtype)
    grid, args, meta = fwd_launch(x, weight.contiguous(), bias, y, flip, cfg, _capability(x))
    _dw_fwd_kernel[grid](*args, **meta)
    return y


def dwconv_wgrad(x: torch.Tensor, grad_out: torch.Tensor, K: int,
                 config: dict[str, int] | None = None) -> torch.Tensor:
    """dW[c, 0, i, j] = Σ_{n,h,w} grad_out[n,c,h,w] · x_pad[n,c,h+i,w+j]; x, grad_out (N, C, H, W).

    Returned in fp32 (fp64 for fp64 input), shape (C, 1, K, K).
    """
    N, C, H, W = x.shape
    if x.numel() == 0:
        return torch.zeros((C, 1, K, K), device=x.device, dtype=_part_dtype(x.dtype))
    cfg = config or wgrad_config(N * H, W, K, C, x.dtype)
    part = torch.empty((cfg["splits"], triton.cdiv(W, cfg["BW"]), C, K, K), device=x.device,
                       dtype=_part_dtype(x.dtype))
    grid, args, meta = wgrad_launch(x, grad_out, part, K, cfg, _capability(x))
    _dw_wgrad_kernel[grid](*args, **meta)
    return part.sum(dim=(0, 1)).unsqueeze(1)
