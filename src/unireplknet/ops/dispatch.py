"""Backend choice for the depthwise conv: ``backend`` argument, environment override, crossover table.

Backends: ``"torch"`` (F.conv2d, the reference), ``"cpu"`` (ops/cpu.py, CPU tensors), ``"triton"``
(ops/triton_kernels.py; CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).
``UNIREPLKNET_DWCONV_BACKEND`` (auto|torch|triton|cpu) replaces ``backend="auto"`` so tests and users can
force one. Under ONNX export or tracing every call goes to F.conv2d (one exportable node). Under torch.compile
a CPU call that resolves to "cpu" goes to the op's ``torch.library`` custom ops (ops/compiled_cpu.py: no graph
break, and the compiled backward is ours); anything else to F.conv2d.

The crossover table ("auto"; numbers from benchmarks/dwconv_table1.py, see docs/benchmarks.md):

* CPU, any dtype: ``"cpu"``. It is F.conv2d itself wherever oneDNN is already fast (channels-last input,
  or NCHW with K ≤ 13), steps around oneDNN's slow NHWC K=13 kernel, and avoids the NCHW wide-kernel cliff
  for K > 13 (measured 7–40× faster than F.conv2d on NCHW there, 8×384×R×R, R = 16, 32). The NCHW strategy
  for K > 13 is ``CPU_NCHW_STRATEGY``: "channels_last" (a layout round trip) measured faster than "split"
  (column blocks ≤ 13 wide) at every K from 15 to 31; a round trip for NCHW K ≤ 13 costs more than it
  saves (measured: direct 11.6–25.6 ms vs round trip 17–41 ms at K = 3–13, R = 32).
* CUDA: ``"triton"`` when triton is importable, the input is NCHW-contiguous, and K ≥ ``GPU_MIN_K[dtype]``;
  otherwise ``"torch"`` (cuDNN). GPU_MIN_K is PROVISIONAL — not measured yet (no GPU in the sessions so
  far); replace it with the crossover printed by ``benchmarks/dwconv_table1.py --device cuda``.
  A Triton compile/launch failure under "auto" logs one warning and falls back to cuDNN for that key.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import torch

__all__ = ["BACKENDS", "CPU_NCHW_STRATEGY", "ENV_VAR", "GPU_MIN_K", "compiling", "resolve_backend",
           "routed_to_reference"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "triton", "cpu")
ENV_VAR = "UNIREPLKNET_DWCONV_BACKEND"

#: CUDA: smallest K at which "auto" uses the Triton kernels, per dtype. PROVISIONAL (unmeasured on a GPU).
GPU_MIN_K: dict[torch.dtype, int] = {torch.float32: 9, torch.float16: 9, torch.bfloat16: 9}

#: CPU, NCHW input, K > 13: "split" (column blocks on oneDNN's NCHW kernel) or "channels_last" (convert).
CPU_NCHW_STRATEGY = "channels_last"

_failed: set[tuple] = set()


def tracing() -> bool:
    """True under torch.jit tracing/scripting or ONNX export."""
    return bool(torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def compiling() -> bool:
    """True while dynamo traces a graph for torch.compile."""
    return bool(hasattr(torch, "compiler") and torch.compiler.is_compiling())


def routed_to_reference() -> bool:
    """True under ONNX export or JIT tracing/scripting: use plain F.conv2d."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    return bool(torch.onnx.is_in_onnx_export())


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_backend_name(backend: str) -> None:
    """ValueError for an unknown backend name."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown dwconv backend {backend!r}; use one of {', '.join(BACKENDS)}")


def _auto(x: torch.Tensor, K: int) -> str:
    if x.device.type == "cpu":
        return "cpu"
    if x.device.type == "cuda":
        min_k = GPU_MIN_K.get(x.dtype)
        key = (x.device.index, x.dtype, K)
        if (min_k is not None and min_k <= K and x.is_contiguous() and key not in _failed
                and _triton_available()):
            return "triton"
    return "torch"


def resolve_backend(x: torch.Tensor, K: int, backend: str = "auto") -> str:
    """The concrete backend ("torch", "cpu" or "triton") for input x (N, C, H, W) and kernel size K."""
    check_backend_name(backend)
    if routed_to_reference():
        return "torch"
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if env not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={env!r} is not a dwconv backend; set it to one of "
                             f"{', '.join(BACKENDS)}")
        backend = env
    if backend == "auto":
        chosen = _auto(x, K)
        return "torch" if compiling() and chosen == "triton" else chosen
    if compiling() and backend == "triton":  # the Triton autograd Function is not traced by dynamo
        return "torch"
    if backend == "cpu" and x.device.type != "cpu":
        raise ValueError(f"dwconv backend 'cpu' needs CPU tensors, got device {x.device}; "
                         "use 'auto' or 'triton'")
    if backend == "triton":
        if not _triton_available():
            raise ValueError("dwconv backend 'triton' needs the triton package; install it or use 'auto'")
        if x.device.type == "cpu" and not _interpreting():
            raise ValueError("dwconv backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 (set before "
                             "triton is imported); use 'cpu' or 'torch' for CPU tensors")
        if x.device.type not in ("cpu", "cuda"):
            raise ValueError(f"dwconv backend 'triton' supports CUDA tensors, got device {x.device}")
    return backend


def mark_failed(x: torch.Tensor, K: int, err: Exception) -> None:
    """Remember that the Triton path failed for this (device, dtype, K) so "auto" stops choosing it."""
    key = (x.device.index, x.dtype, K)
    if key not in _failed:
        log.warning("dwconv: Triton kernel failed for %s (%s); falling back to F.conv2d", key, err)
    _failed.add(key)
