"""Ahead-of-time compile of every Triton kernel configuration the dispatcher can choose, for sm_80 and sm_90.

No GPU needed: ``triton.compile`` with a ``GPUTarget`` runs the whole pipeline (TTIR → PTX → ptxas → cubin)
on the CPU with the ptxas that triton ships. Each launch is specialised exactly as a launch on that GPU would
be: the arguments come from ``triton_kernels.fwd_launch`` / ``wgrad_launch`` (the launchers' own code) and go
through the JIT's own binder (integer 1 → constant, 16-byte alignment → divisibility hints). Reported per
kernel: shared memory (Triton's dynamic allocation + the cubin's static part) against the target's opt-in
limit per block, registers per thread, and ptxas's stack frame and spill bytes.

Kernels: forward (with bias), flipped forward (the input gradient, no bias), weight gradient; fp32 / bf16 /
fp16 (fp64 on request); odd K; the tile configs of ``fwd_config`` / ``wgrad_config`` for W ≤ 16 and W > 16
(BW 16 / 32) and every BM the row count can give (16 … 128). Input NCHW-contiguous, C = 384: what "auto"
sends to Triton.

    python benchmarks/triton_aot.py                    # the largest tile per kernel × dtype × arch (18 compiles)
    python benchmarks/triton_aot.py --full --jobs 2    # every config, K = 3 … 31 and 51 (~2000 compiles)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from types import ModuleType

import torch

#: opt-in shared memory per block (bytes), CUDA programming guide, compute-capability table: 163 KB, 227 KB.
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
MAX_REGS_PER_THREAD = 255
REGS_PER_BLOCK = 65536
KINDS = ("fwd", "fwd_flip", "wgrad")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
#: Table 1's kernel sizes and the largest K the tests run (51); "auto" sends K ≥ GPU_MIN_K to Triton.
KS = (*range(3, 32, 2), 51)
CHANNELS = 384


@functools.cache
def jit_kernels() -> ModuleType:
    """ops/triton_kernels.py loaded afresh with the interpreter off, so that its kernels are JITFunctions
    (a test session may have imported the package module under TRITON_INTERPRET=1)."""
    origin = importlib.util.find_spec("unireplknet.ops.triton_kernels").origin
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        spec = importlib.util.spec_from_file_location("_unireplknet_triton_kernels_aot", origin)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
    return mod


def shape_for(rows: int, W: int) -> tuple[int, int, int, int]:
    """An (N, C, H, W) input with N·H = rows and N ≥ 2 (so that N is not specialised to the constant 1)."""
    H = max(1, min(W, rows // 2))
    return rows // H, CHANNELS, H, W


def configs(kind: str, dtype: str, K: int) -> list[tuple[dict, tuple[int, int, int, int]]]:
    """Every distinct tile config the launchers pick for this kernel, dtype and K, with an input giving it."""
    tk = jit_kernels()
    seen: dict[str, tuple[dict, tuple[int, int, int, int]]] = {}
    for W in (16, 32):
        for rows in (16, 32, 64, 128, 256):
            shape = shape_for(rows, W)
            cfg = (tk.wgrad_config(rows, W, K, CHANNELS, DTYPES[dtype]) if kind == "wgrad"
                   else tk.fwd_config(rows, W, K, DTYPES[dtype]))
            key = json.dumps({k: cfg[k] for k in ("BM", "BW", "DK", "num_warps")}, sort_keys=True)
            seen.setdefault(key, (cfg, shape))
    return list(seen.values())


def largest(kind: str, dtype: str, K: int) -> tuple[dict, tuple[int, int, int, int]]:
    """The config with the most staged elements (BM·DK, then BW): the one closest to the limits."""
    return max(configs(kind, dtype, K), key=lambda cs: (cs[0]["BM"] * cs[0]["DK"], cs[0]["BW"]))


def _launch(kind: str, dtype: torch.dtype, K: int, cfg: dict, shape: tuple[int, int, int, int], arch: int):
    tk = jit_kernels()
    x = torch.empty(shape, dtype=dtype, device="meta")
    if kind == "wgrad":
        part = torch.empty((cfg["splits"], -(-shape[3] // cfg["BW"]), shape[1], K, K), device="meta",
                           dtype=tk._part_dtype(dtype))
        return tk._dw_wgrad_kernel, tk.wgrad_launch(x, torch.empty_like(x), part, K, cfg, arch)
    w = torch.empty((shape[1], 1, K, K), dtype=dtype, device="meta")
    bias = None if kind == "fwd_flip" else torch.empty(shape[1], dtype=dtype, device="meta")
    return tk._dw_fwd_kernel, tk.fwd_launch(x, w, bias, torch.empty_like(x), kind == "fwd_flip", cfg, arch)


def compile_one(kind: str, dtype: str, K: int, cfg: dict, shape: tuple[int, int, int, int], arch: int) -> dict:
    """Compile one launch for sm_<arch>; its resources and whether they fit the target."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn, (_, args, meta) = _launch(kind, DTYPES[dtype], K, cfg, shape, arch)
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    # what JITFunction.run does before compiling: bind, specialise, pack
    meta = dict(meta, debug=False, instrumentation_mode=knobs.compilation.instrumentation_mode)
    bound, spec, opts = create_function_from_signature(fn.signature, fn.params, backend)(*args, **meta)
    options, signature, constexprs, attrs = fn._pack_args(backend, meta, bound, spec, opts)
    log = io.StringIO()
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.compilation.always_compile = True  # a cache hit would run no ptxas, so print no report
        knobs.nvidia.dump_ptxas_log = True
        kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                options=options.__dict__)
    text = log.getvalue()
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    frame, spill_st, spill_ld = (int(v) for v in re.search(
        r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text).groups())
    static = re.search(r"(\d+) bytes smem", text)
    smem = kernel.metadata.shared + (int(static.group(1)) if static else 0)
    threads = 32 * kernel.metadata.num_warps
    return {
        "kind": kind, "dtype": dtype, "K": K, "arch": arch, "shape": list(shape),
        "BM": cfg["BM"], "BW": cfg["BW"], "DK": cfg["DK"], "num_warps": kernel.metadata.num_warps,
        "num_stages": kernel.metadata.num_stages, "smem": smem, "smem_limit": SMEM_LIMIT[arch],
        "regs": regs, "stack_frame": frame, "spill_stores": spill_st, "spill_loads": spill_ld,
        "fits": smem <= SMEM_LIMIT[arch] and regs <= MAX_REGS_PER_THREAD and regs * threads <= REGS_PER_BLOCK,
    }


def _compile_star(job: tuple) -> dict:
    try:
        return compile_one(*job)
    except Exception as err:  # one failed compile is a finding, reported beside the others
        kind, dtype, K, cfg, shape, arch = job
        return {"kind": kind, "dtype": dtype, "K": K, "arch": arch, "BM": cfg["BM"], "BW": cfg["BW"],
                "DK": cfg["DK"], "fits": False, "error": f"{type(err).__name__}: {str(err)[:500]}"}


def jobs(full: bool, archs: tuple[int, ...] = (80, 90), dtypes: tuple[str, ...] = ("fp32", "bf16", "fp16"),
         ks: tuple[int, ...] = KS) -> list[tuple]:
    """(kind, dtype, K, cfg, shape, arch): every config (``full``), else the largest per kernel × dtype × arch
    at K = 31 (the largest of Table 1)."""
    out = []
    for arch in archs:
        for kind in KINDS:
            for dtype in dtypes:
                picks = ([(K, cs) for K in ks for cs in configs(kind, dtype, K)] if full
                         else [(31, largest(kind, dtype, 31))])
                out += [(kind, dtype, K, cfg, shape, arch) for K, (cfg, shape) in picks]
    return out


def run(job_list: list, n_jobs: int = 1) -> list[dict]:
    if n_jobs <= 1:
        return [_compile_star(j) for j in job_list]
    with ProcessPoolExecutor(n_jobs) as pool:
        return list(pool.map(_compile_star, job_list, chunksize=4))


def summary(rows: list[dict]) -> str:
    """Markdown: per arch × kernel × dtype, the range over configs of smem, registers and spills."""
    lines = ["| arch | kernel | dtype | configs | max smem KB (limit) | regs min–max | max spill st/ld B | all fit |",
             "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["arch"], r["kind"], r["dtype"]), []).append(r)
    for (arch, kind, dtype), rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            lines.append(f"| sm_{arch} | {kind} | {dtype} | {len(rs)} | error | | | no |")
            continue
        lines.append(
            f"| sm_{arch} | {kind} | {dtype} | {len(rs)} | {max(r['smem'] for r in ok) / 1024:.1f} "
            f"({SMEM_LIMIT[arch] // 1024}) | {min(r['regs'] for r in ok)}–{max(r['regs'] for r in ok)} | "
            f"{max(r['spill_stores'] for r in ok)}/{max(r['spill_loads'] for r in ok)} | "
            f"{'yes' if all(r['fits'] for r in rs) else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="every config for K = 3, 5, …, 31 and 51 (else the largest)")
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SMEM_LIMIT))
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16", "fp16"], choices=list(DTYPES))
    p.add_argument("--jobs", type=int, default=1, help="parallel compiler processes")
    p.add_argument("--json", default=None, help="write every compiled kernel's row here")
    args = p.parse_args()
    rows = run(jobs(args.full, tuple(args.arch), tuple(args.dtypes)), args.jobs)
    import triton

    print(f"# triton {triton.__version__}, {len(rows)} kernels compiled for sm_{', sm_'.join(map(str, args.arch))}")
    print(summary(rows))
    for r in rows:
        if "error" in r or not r["fits"] or r.get("spill_stores"):
            print("#", json.dumps(r))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
