"""The CPU op against torch's best way from the same input layout to an output in the same layout.

For each K and each layout, in a fresh process, the candidates (conversions included) are:
  NCHW in → NCHW out:  ours = dwconv2d(x);  torch direct = F.conv2d(x);
                       torch via channels-last = F.conv2d(x.to(channels_last)).contiguous()
  NHWC in → NHWC out:  ours = dwconv2d(x);  torch direct = F.conv2d(x) (oneDNN keeps channels-last);
                       torch via NCHW = F.conv2d(x.contiguous()).to(channels_last)
torch best = the faster of torch's two. Every round runs every candidate once, in a freshly shuffled order;
one measurement repeats a call back to back for about ``--target-ms`` (so that a scheduler preemption on a
shared CPU is averaged in, not a bimodal outlier); the figure is the median over rounds per call, and the
ratio is also given from the minima over rounds (the least disturbed measurement of each). ``--mode fwdbwd``
times forward + backward (grads for x and the weight, through the conversions).

    python benchmarks/dwconv_cpu_vs_torch.py --threads 1 --batch 4 --res 32 --rounds 21
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from unireplknet.ops import dwconv2d

CL = torch.channels_last


def candidates(layout: str) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """Name → f(x, w) for one input layout; each returns the output in the input's layout."""
    def direct(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, padding=w.shape[-1] // 2, groups=w.shape[0])

    if layout == "nchw":
        def other(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return direct(x.contiguous(memory_format=CL), w).contiguous()
    else:
        def other(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return direct(x.contiguous(), w).contiguous(memory_format=CL)
    return {"ours": lambda x, w: dwconv2d(x, w), "torch_direct": direct, "torch_other": other}


def one(args: argparse.Namespace, K: int) -> dict:
    """Medians and minima (ms) of every candidate for one K, both layouts, interleaved in shuffled order."""
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(K)
    x = torch.randn(args.batch, args.channels, args.res, args.res, generator=gen)
    w = torch.randn(args.channels, 1, K, K, generator=gen) / K
    steps: dict[tuple[str, str], Callable[[], None]] = {}
    for layout in ("nchw", "nhwc"):
        xl = x.contiguous(memory_format=CL) if layout == "nhwc" else x
        for name, f in candidates(layout).items():
            out = f(xl, w)
            assert out.is_contiguous(memory_format=CL if layout == "nhwc" else torch.contiguous_format)
            steps[(layout, name)] = _step(f, xl, w, args.mode)
    times: dict[tuple[str, str], list[float]] = {k: [] for k in steps}
    calls = {}
    for key, step in steps.items():  # warm-up (oneDNN primitive creation), then calls per measurement
        step()
        t = time.perf_counter()
        step()
        calls[key] = max(1, round(args.target_ms / ((time.perf_counter() - t) * 1e3)))
    order = list(steps)
    rng = random.Random(K)
    for _ in range(args.rounds):
        rng.shuffle(order)
        for key in order:
            t = time.perf_counter()
            for _ in range(calls[key]):
                steps[key]()
            times[key].append((time.perf_counter() - t) * 1e3 / calls[key])
    return {f"{layout}/{name}/{stat.__name__}": stat(v) for (layout, name), v in times.items()
            for stat in (statistics.median, min)}


def _step(f: Callable, x: torch.Tensor, w: torch.Tensor, mode: str) -> Callable[[], None]:
    if mode == "fwd":
        def fwd() -> None:
            with torch.no_grad():
                f(x, w)
        return fwd
    xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()

    def fwdbwd() -> None:
        y = f(xg, wg)
        y.backward(torch.ones_like(y))  # ones_like keeps y's layout
        xg.grad = wg.grad = None
    return fwdbwd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ks", type=int, nargs="+", default=list(range(3, 32, 2)))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--channels", type=int, default=384)
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mode", choices=["fwd", "fwdbwd"], default="fwd")
    p.add_argument("--target-ms", type=float, default=50.0, help="length of one measurement (calls repeated)")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # worker: one K, prints JSON
    args = p.parse_args()
    if args.one is not None:
        print(json.dumps(one(args, args.one)))
        return
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    print(f"# {cpu}, {args.threads} thread(s), torch {torch.__version__}; x ({args.batch}, {args.channels}, "
          f"{args.res}, {args.res}) fp32, one layer, {args.mode}; median of {args.rounds} rounds, each running "
          f"every candidate once (calls repeated for ~{args.target_ms:.0f} ms) in shuffled order; one fresh process "
          "per K")
    print("| K | layout | ours ms | torch direct ms | torch via other layout ms | torch best / ours | same, minima |")
    print("|---|---|---|---|---|---|---|")
    worker = [sys.executable, __file__, *sys.argv[1:]]
    for K in args.ks:
        res = json.loads(subprocess.run([*worker, "--one", str(K)], check=True, capture_output=True,
                                        text=True).stdout.splitlines()[-1])
        for layout in ("nchw", "nhwc"):
            ours, d, o = (res[f"{layout}/{n}/median"] for n in ("ours", "torch_direct", "torch_other"))
            m_ours, m_d, m_o = (res[f"{layout}/{n}/min"] for n in ("ours", "torch_direct", "torch_other"))
            print(f"| {K} | {layout.upper()} | {ours:.2f} | {d:.2f} | {o:.2f} | {min(d, o) / ours:.2f}x | "
                  f"{min(m_d, m_o) / m_ours:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
