"""Inference latency of a variant from this checkout against the same variant from another source tree.

For checking that a change to the model's code does not slow its forward pass: e.g. the tree of the commit
before the change (``git archive <commit> src | tar -x -C /tmp/ref``). Each round starts one fresh process
per tree, in shuffled order; each process builds the model (seed 0), warms up and reports the median and the
fastest of ``--iters`` timed passes; the figures are the medians of those over rounds, with the ratios
ours / reference (on a shared, loaded machine the fastest passes are the steadier figure).

    python benchmarks/forward_vs_ref.py --ref-src /tmp/ref/src --model unireplknet_a --deploy \\
        --batch-size 8 --img-size 224 --threads 2 --rounds 9
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import statistics, sys, time
import torch
import unireplknet
name, deploy, batch, size, threads, iters = sys.argv[1], sys.argv[2] == "1", *map(int, sys.argv[3:])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = unireplknet.create_model(name, deploy=deploy).eval()
x = torch.randn(batch, 3, size, size)
times = []
with torch.inference_mode():
    model(x)
    for _ in range(iters):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
print(1e3 * statistics.median(times), 1e3 * min(times))
"""


def _time(src: Path, args: argparse.Namespace) -> tuple[float, float]:
    env = os.environ | {"PYTHONPATH": str(src), "UNIREPLKNET_NO_TIMM": "1"}
    argv = [args.model, "1" if args.deploy else "0", str(args.batch_size), str(args.img_size), str(args.threads),
            str(args.iters)]
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], env=env, capture_output=True, text=True, check=True)
    median, fastest = done.stdout.strip().splitlines()[-1].split()
    return float(median), float(fastest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-src", type=Path, required=True, help="the other tree's src/ folder")
    parser.add_argument("--model", default="unireplknet_a")
    parser.add_argument("--deploy", action="store_true", help="time the re-parameterized (deploy) form")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--iters", type=int, default=5, help="timed passes per process")
    args = parser.parse_args()
    trees = {"ours": Path(__file__).resolve().parents[1] / "src", "reference": args.ref_src.resolve()}
    times: dict[str, list[tuple[float, float]]] = {key: [] for key in trees}
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = list(trees)
        rng.shuffle(order)
        for key in order:
            times[key].append(_time(trees[key], args))
    form = "deploy" if args.deploy else "training form"
    print(f"# {platform.processor() or platform.machine()}, {args.model} ({form}), batch {args.batch_size}, "
          f"{args.img_size}x{args.img_size}, {args.threads} threads; medians over {args.rounds} interleaved rounds "
          f"(fresh process each) of the median / fastest of {args.iters} passes; reference: {trees['reference']}")
    for i, stat in enumerate(("median pass", "fastest pass")):
        ours, ref = (statistics.median(t[i] for t in times[k]) for k in ("ours", "reference"))
        print(f"{stat}: ours {ours:.1f} ms, reference {ref:.1f} ms, ratio ours/reference {ours / ref:.3f}")


if __name__ == "__main__":
    main()
