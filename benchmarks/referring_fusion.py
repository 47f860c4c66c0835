"""Referring segmentation: the asymmetric large-kernel fusion (paper §3.4) vs cross-attention, same parameter budget.

Two parts (docs/referring.md, "Fusion study"):

1. ``study``: ``unireplknet train --task referring`` with each fusion and each seed, every run a fresh process,
   the fusions alternating per seed; the held-out J, F, J&F and wall time of each run from its summary.json.
2. ``cost``: one fusion layer (the model's :class:`AsymmetricTextFusion` / :class:`CrossAttentionFusion`),
   forward + backward at the task's real token counts: the built-in recipe (64 frame maps of 8×8 at stride 8,
   9 tokens, a 3×3 kernel) and Refer-DAVIS17's 480p frames (480×854 at stride 8: 60×107 positions, 4 frames,
   20 tokens). Median latency over shuffled interleaved rounds and the bytes autograd saves for backward.

    python benchmarks/referring_fusion.py --part study --seeds 0 1 --out runs/referring_study
    python benchmarks/referring_fusion.py --part cost
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from unireplknet.models.referring import FUSIONS

FUSION_NAMES = ("asymmetric", "cross_attention")
#: (label, frame maps N = clips x frames, width D, map h x w, sentence tokens L)
SHAPES = [("built-in recipe: 16 clips x 4 frames, 64x64 -> 8x8, 9 tokens", 64, 64, 8, 8, 9),
          ("Refer-DAVIS17 480x854 -> 60x107, 4 frames, 20 tokens", 4, 64, 60, 107, 20)]


def study(seeds: list[int], out: Path, extra: list[str]) -> list[dict]:
    rows = []
    for seed in seeds:
        order = FUSION_NAMES if seed % 2 == 0 else FUSION_NAMES[::-1]
        for fusion in order:
            run = out / f"{fusion}_seed{seed}"
            cmd = [sys.executable, "-m", "unireplknet", "train", "--task", "referring", "--output", str(run),
                   "--overwrite", "--no-progress", "--seed", str(seed), "--set", f"task_args.fusion={fusion}", *extra]
            t0 = time.time()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            s = json.loads((run / "summary.json").read_text())
            rows.append({"fusion": fusion, "seed": seed, **{k: round(s[k], 2) for k in ("test_j", "test_f", "test_jf",
                                                                                          "val_jf")},
                         "best_epoch": s["best_epoch"], "wall_s": round(time.time() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def saved_bytes(fn, *args) -> tuple[int, torch.Tensor]:
    """Bytes of the tensors autograd saves for backward while ``fn(*args)`` runs (each storage once), and its
    output."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return sum(seen.values()), out


def cost(rounds: int) -> list[dict]:
    rows = []
    for label, N, D, h, w, L in SHAPES:
        torch.manual_seed(0)
        layers = {name: FUSIONS[name](D, L) for name in FUSION_NAMES}
        x = torch.randn(N, D, h, w, requires_grad=True)
        text = torch.randn(N, L, D, requires_grad=True)
        valid = torch.ones(N, L, dtype=torch.bool)
        valid[:, L * 3 // 4:] = False  # a quarter of the tokens is padding
        times: dict[str, list[float]] = {name: [] for name in layers}
        memory = {}
        for r in range(rounds + 1):  # round 0 warms up
            order = list(layers)
            random.Random(r).shuffle(order)
            for name in order:
                t0 = time.perf_counter()
                memory[name], out = saved_bytes(layers[name], x, text, valid)
                out.square().mean().backward()
                if r:
                    times[name].append(1e3 * (time.perf_counter() - t0))
                x.grad = text.grad = None
        for name, layer in layers.items():
            rows.append({"shapes": label, "fusion": name, "params": sum(p.numel() for p in layer.parameters()),
                         "fwd_bwd_ms": round(statistics.median(times[name]), 2),
                         "saved_MiB": round(memory[name] / 2**20, 2)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("all", "study", "cost"), default="all")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", type=Path, default=Path("runs/referring_study"))
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="extra --set for every study run (e.g. epochs=6)")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = {}
    if args.part in ("all", "study"):
        result["study"] = study(args.seeds, args.out, [a for kv in args.extra for a in ("--set", kv)])
    if args.part in ("all", "cost"):
        result["cost"] = cost(args.rounds)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
