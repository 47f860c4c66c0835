"""The evidence behind the CPU rules in ops/cpu.py and ops/dispatch.py: every CPU strategy, same run.

For NCHW input: F.conv2d direct, the NHWC round trip ("channels_last"), the column split ("split");
for channels-last input: F.conv2d direct and with the kernel zero-padded to K+2 (the K = 13 work-around).
Single depthwise layer, interleaved reps, medians (ms).

    python benchmarks/dwconv_cpu_strategies.py --batch 8 --res 32 --ks 3 5 7 9 11 13 15 17 31
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from unireplknet.ops.cpu import MAX_FAST_NCHW_WIDTH, dwconv2d_cpu


def _steps(x: torch.Tensor, xc: torch.Tensor, w: torch.Tensor) -> dict[str, Callable[[], object] | None]:
    C, K = w.shape[0], w.shape[-1]
    P = K // 2
    wp = F.pad(w, (1, 1, 1, 1))
    return {
        "nchw": (lambda: F.conv2d(x, w, padding=P, groups=C)) if K <= MAX_FAST_NCHW_WIDTH + 2 else None,
        "roundtrip": lambda: dwconv2d_cpu(x, w, strategy="channels_last"),
        "split": lambda: dwconv2d_cpu(x, w, strategy="split"),
        "nhwc": lambda: F.conv2d(xc, w, padding=P, groups=C),
        "nhwc_k2": lambda: F.conv2d(xc, wp, padding=P + 1, groups=C),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=384)
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--ks", type=int, nargs="+", default=[3, 5, 7, 9, 11, 13, 15, 17, 21, 31])
    p.add_argument("--reps", type=int, default=11)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    N, C, R = args.batch, args.channels, args.res
    print(f"# CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; x ({N}, {C}, {R}, {R}) "
          f"fp32; one layer; median of {args.reps} interleaved reps (ms)")
    print("| K | NCHW direct | NCHW→NHWC round trip | NCHW split | NHWC direct | NHWC kernel K+2 |")
    print("|---|---|---|---|---|---|")
    x = torch.randn(N, C, R, R)
    xc = x.contiguous(memory_format=torch.channels_last)
    for K in args.ks:
        steps = _steps(x, xc, torch.randn(C, 1, K, K) / K)
        live = {k: f for k, f in steps.items() if f is not None}
        times: dict[str, list[float]] = {k: [] for k in live}
        with torch.no_grad():
            for f in live.values():
                f()
            for _ in range(args.reps):
                for k, f in live.items():
                    t = time.perf_counter()
                    f()
                    times[k].append((time.perf_counter() - t) * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        cells = [f"{med[k]:.2f}" if k in med else "cliff (skipped)" for k in steps]
        print(f"| {K} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
