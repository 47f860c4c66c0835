"""Paper Table 1 protocol for the depthwise conv: a stack of depthwise layers, input (N, 384, R, R).

GPU (default when CUDA is present): N=64, 24 layers, R ∈ {16, 32, 64}, K ∈ {3, ..., 31} (Table 1's ten);
cuDNN (F.conv2d) vs ours (Triton) in the same run, interleaved, CUDA-event medians, with the ratio and the
roofline: FLOPs = 2·N·C·H·W·K² per layer, minimum bytes = input + output + weight per layer (forward;
fwd+bwd adds grad_out, x, grad_x, grad_w, w), bounds = FLOPs / peak and bytes / bandwidth.

CPU (``--device cpu``): a smaller batch and stack; columns torch NCHW, torch channels-last, ours on NCHW
input, ours on channels-last input, and the ratios the goals are stated in.

    python benchmarks/dwconv_table1.py --device cuda                    # fp32 forward, Table 1
    python benchmarks/dwconv_table1.py --device cuda --mode fwdbwd --dtype bfloat16
    python benchmarks/dwconv_table1.py --device cpu --batch 8 --layers 2 --res 32
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from unireplknet.ops import dwconv2d
from unireplknet.ops.cpu import dwconv2d_cpu

KS = [3, 5, 7, 9, 13, 17, 21, 27, 29, 31]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# (fp32 CUDA-core TFLOP/s, bf16/fp16 dense tensor TFLOP/s, HBM GB/s) by device-name substring.
GPU_PEAKS = {
    "H200": (67.0, 989.0, 4800.0), "H100": (67.0, 989.0, 3350.0), "A100": (19.5, 312.0, 2039.0),
    "L40": (90.5, 181.0, 864.0), "4090": (82.6, 165.0, 1008.0), "2080 Ti": (13.4, 26.9, 616.0),
}


def stack(fn: Callable[..., torch.Tensor], x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    for w in weights:
        x = fn(x, w)
    return x


def torch_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, w, None, padding=w.shape[-1] // 2, groups=w.shape[0])


def make_step(fn: Callable, x: torch.Tensor, weights: list[torch.Tensor], mode: str) -> Callable[[], None]:
    if mode == "fwd":
        def step() -> None:
            with torch.no_grad():
                stack(fn, x, weights)
        return step
    xg = x.detach().requires_grad_()
    ws = [w.detach().requires_grad_() for w in weights]

    def step_bwd() -> None:
        y = stack(fn, xg, ws)
        y.backward(torch.ones_like(y))
        xg.grad = None
        for w in ws:
            w.grad = None
    return step_bwd


def timed(step: Callable[[], None], device: str) -> float:
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t = time.perf_counter()
    step()
    return (time.perf_counter() - t) * 1e3


def measure(steps: dict[str, Callable[[], None]], device: str, reps: int, warmup: int,
            stat: str = "median", budget_s: float | None = None) -> tuple[dict[str, float], int]:
    """Interleaved medians (or minima) in ms and the reps run: every rep runs each implementation once, in a
    freshly shuffled order.

    With ``budget_s`` the reps are cut (to no fewer than 3) so that they fit it, judged by the fastest warm-up
    round.
    """
    round_s = float("inf")
    for _ in range(warmup):
        t = time.perf_counter()
        for step in steps.values():
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        round_s = min(round_s, time.perf_counter() - t)
    if budget_s is not None and warmup > 0:
        reps = max(3, min(reps, int(budget_s / round_s)))
    times: dict[str, list[float]] = {k: [] for k in steps}
    order, rng = list(steps), random.Random(0)
    for _ in range(reps):
        rng.shuffle(order)
        for k in order:
            times[k].append(timed(steps[k], device))
    agg = min if stat == "min" else statistics.median
    return {k: agg(v) for k, v in times.items()}, reps


def roofline(N: int, C: int, R: int, K: int, layers: int, itemsize: int, mode: str) -> tuple[float, float]:
    """(FLOPs, minimum bytes) of the whole stack."""
    act = N * C * R * R * itemsize
    wb = C * K * K * itemsize
    flops = 2.0 * N * C * R * R * K * K * layers
    if mode == "fwd":
        return flops, float((2 * act + wb) * layers)
    return 3 * flops, float((2 * act + wb + 3 * act + 2 * wb) * layers)


def run_gpu(args: argparse.Namespace) -> None:
    dtype = DTYPES[args.dtype]
    name = torch.cuda.get_device_name()
    peaks = next((p for k, p in GPU_PEAKS.items() if k in name), None)
    fp32_tf, half_tf, gbps = peaks or (1.0, 1.0, 1.0)  # unknown GPU: pass --peak-tflops / --peak-gbps
    tflops = args.peak_tflops or (fp32_tf if dtype == torch.float32 else half_tf)
    gbps = args.peak_gbps or gbps
    print(f"# device: {name}; torch {torch.__version__}; dtype {args.dtype}; mode {args.mode}; "
          f"N={args.batch}, C={args.channels}, layers={args.layers}; peaks {tflops} TFLOP/s, {gbps} GB/s")
    print("| R | K | cuDNN ms | ours ms | cuDNN/ours | GFLOP | min MB | compute-bound ms | memory-bound ms "
          "| ours / bound | max rel err | reps |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    deadline = time.perf_counter() + args.budget_s if args.budget_s else None
    shapes_left = len(args.res) * len(args.ks)
    for R in args.res:
        faster_from = None
        for K in args.ks:
            gen = torch.Generator(device="cuda").manual_seed(K)
            x = torch.randn(args.batch, args.channels, R, R, device="cuda", dtype=dtype, generator=gen)
            ws = [torch.randn(args.channels, 1, K, K, device="cuda", dtype=dtype, generator=gen) / K
                  for _ in range(args.layers)]

            def ours(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
                return dwconv2d(a, w, backend="triton")
            with torch.no_grad():  # one layer against cuDNN in float32, relative to the output scale
                want = torch_conv(x.float(), ws[0].float())
                err = ((ours(x, ws[0]).float() - want).abs().max() / want.abs().max()).item()
            budget = None if deadline is None else max(0.0, deadline - time.perf_counter()) / shapes_left
            shapes_left -= 1
            t, reps = measure({"torch": make_step(torch_conv, x, ws, args.mode),
                               "ours": make_step(ours, x, ws, args.mode)},
                              "cuda", args.reps, args.warmup, args.stat, budget)
            flops, nbytes = roofline(args.batch, args.channels, R, K, args.layers, x.element_size(),
                                     args.mode)
            tc, tm = flops / (tflops * 1e12) * 1e3, nbytes / (gbps * 1e9) * 1e3
            ratio = t["torch"] / t["ours"]
            faster_from = (faster_from or K) if ratio > 1.0 else None
            print(f"| {R} | {K} | {t['torch']:.2f} | {t['ours']:.2f} | {ratio:.2f}x | {flops / 1e9:.1f} | "
                  f"{nbytes / 1e6:.0f} | {tc:.2f} | {tm:.2f} | {t['ours'] / max(tc, tm):.2f} | {err:.1e} | {reps} |",
                  flush=True)
        print(f"# R={R}: ours faster than cuDNN for every K >= {faster_from} (use for GPU_MIN_K)")


def run_cpu(args: argparse.Namespace) -> None:
    dtype = DTYPES[args.dtype]
    cl = torch.channels_last
    print(f"# device: CPU ({args.cpu_name}), {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"dtype {args.dtype}; mode {args.mode}; N={args.batch}, C={args.channels}, layers={args.layers}; "
          f"{args.stat} of {args.reps} interleaved reps")
    head = ("| R | K | torch NCHW ms | torch CL ms | ours (NCHW in) ms | ours (CL in) ms | NCHW/ours | "
            "best torch/ours(NCHW in) | best torch/ours(CL in) |")
    if args.strategies:
        head += " split ms | to-CL ms |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for R in args.res:
        for K in args.ks:
            gen = torch.Generator().manual_seed(K)
            x = torch.randn(args.batch, args.channels, R, R, dtype=dtype, generator=gen)
            ws = [torch.randn(args.channels, 1, K, K, dtype=dtype, generator=gen) / K
                  for _ in range(args.layers)]
            xc = x.contiguous(memory_format=cl)
            steps = {
                "torch_nchw": make_step(torch_conv, x, ws, args.mode),
                "torch_cl": make_step(torch_conv, xc, ws, args.mode),
                "ours_nchw": make_step(lambda a, w: dwconv2d(a, w, backend="auto"), x, ws, args.mode),
                "ours_cl": make_step(lambda a, w: dwconv2d(a, w, backend="auto"), xc, ws, args.mode),
            }
            if args.strategies:
                steps["split"] = make_step(lambda a, w: dwconv2d_cpu(a, w, strategy="split"), x, ws,
                                           args.mode)
                steps["to_cl"] = make_step(lambda a, w: dwconv2d_cpu(a, w, strategy="channels_last"), x, ws,
                                           args.mode)
            t, _ = measure(steps, "cpu", args.reps, args.warmup, args.stat)
            best = min(t["torch_nchw"], t["torch_cl"])
            row = (f"| {R} | {K} | {t['torch_nchw']:.1f} | {t['torch_cl']:.1f} | {t['ours_nchw']:.1f} | "
                   f"{t['ours_cl']:.1f} | {t['torch_nchw'] / t['ours_nchw']:.1f}x | "
                   f"{best / t['ours_nchw']:.2f}x | "
                   f"{best / t['ours_cl']:.2f}x |")
            if args.strategies:
                row += f" {t['split']:.1f} | {t['to_cl']:.1f} |"
            print(row, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mode", choices=["fwd", "fwdbwd"], default="fwd")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--batch", type=int, default=None, help="N (GPU default 64, CPU default 8)")
    p.add_argument("--channels", type=int, default=384)
    p.add_argument("--layers", type=int, default=None, help="stack depth (GPU default 24, CPU default 2)")
    p.add_argument("--res", type=int, nargs="+", default=None, help="R values (GPU 16 32 64, CPU 32)")
    p.add_argument("--ks", type=int, nargs="+", default=KS)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--stat", choices=["median", "min"], default="median",
                   help="aggregate over reps (min: for a CPU shared with other jobs)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--strategies", action="store_true", help="CPU: also time the split and to-CL strategies")
    p.add_argument("--budget-s", type=float, default=None,
                   help="GPU: fit the whole table in about this many seconds (fewer reps per shape, at least 3)")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the GPU compute peak")
    p.add_argument("--peak-gbps", type=float, default=None, help="override the GPU memory bandwidth")
    args = p.parse_args()
    gpu = args.device == "cuda"
    args.batch = args.batch or (64 if gpu else 8)
    args.layers = args.layers or (24 if gpu else 2)
    args.res = args.res or ([16, 32, 64] if gpu else [32])
    args.reps = args.reps or (20 if gpu else 7)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    if gpu:
        run_gpu(args)
    else:
        args.cpu_name = _cpu_name()
        run_cpu(args)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
