"""Inference latency of a variant from this checkout against the same variant from another source tree.

For checking that a change to the model's code does not slow its forward pass: e.g. the tree of the commit
before the change (``git archive <commit> src | tar -x -C /tmp/ref``). Each round starts one fresh process
per tree, in shuffled order; each process builds the model (seed 0), warms up and reports the median of
``--iters`` timed passes; the figure is the median over rounds, with the ratio ours / reference.

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
print(1e3 * statistics.median(times))
"""


def _time(src: Path, args: argparse.Namespace) -> float:
    env = os.environ | {"PYTHONPATH": str(src), "UNIREPLKNET_NO_TIMM": "1"}
    argv = [args.model, "1" if args.deploy else "0", str(args.batch_size), str(args.img_size), str(args.threads),
            str(args.iters)]
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


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
    times: dict[str, list[float]] = {key: [] for key in trees}
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = list(trees)
        rng.shuffle(order)
        for key in order:
            times[key].append(_time(trees[key], args))
    ours, ref = (statistics.median(times[k]) for k in ("ours", "reference"))
    form = "deploy" if args.deploy else "training form"
    print(f"# {platform.processor() or platform.machine()}, {args.model} ({form}), batch {args.batch_size}, "
          f"{args.img_size}x{args.img_size}, {args.threads} threads; median of {args.rounds} interleaved rounds "
          f"(fresh process each) x median of {args.iters} passes")
    print(f"ours {ours:.1f} ms, reference ({trees['reference']}) {ref:.1f} ms, ratio ours/reference "
          f"{ours / ref:.3f}")
    print("per round, ours:", " ".join(f"{t:.0f}" for t in times["ours"]))
    print("per round, ref: ", " ".join(f"{t:.0f}" for t in times["reference"]))


if __name__ == "__main__":
    main()
