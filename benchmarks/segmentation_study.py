"""Segmentation kernel-size and peer study on the built-in beacons set, same budget for every model.

Runs ``unireplknet train --task segmentation`` (the default recipe: same data, steps and schedule) for
  - ``unireplknet``: the recipe's UniRepLKNet (its large kernels),
  - ``kernels3``: its twin with every kernel set to 3 (same depths and widths; Table 11's question),
  - ``convnext``: the same UPerNet on timm's ConvNeXt with the recipe's depths and about its backbone's
    parameter count (``task_args.backbone=convnext_atto`` with ``depths``/``dims`` overridden, 7×7 kernels),
for each seed, and prints test mIoU / mAcc / aAcc with per-class IoU, then the means. Runs whose
``summary.json`` exists are reused, so an interrupted study continues.

    python benchmarks/segmentation_study.py --seeds 0 1 --out runs/segmentation_study --parallel 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

RECIPE = json.loads(resources.files("unireplknet.configs").joinpath("segmentation_default.json").read_text())
CONVNEXT_DIMS = [26, 52, 104, 208]  # ConvNeXt blocks have fewer weights than UniRepLKNet's at equal width


def variants() -> dict[str, list[str]]:
    arch = dict(RECIPE["arch"])
    twin = dict(arch, kernel_sizes=3)
    peer = {"backbone": "convnext_atto", "backbone_kwargs": {"depths": arch["depths"], "dims": CONVNEXT_DIMS}}
    task_args = dict(RECIPE["task_args"], **peer)
    return {"unireplknet": [], "kernels3": ["--set", f"arch={json.dumps(twin)}"],
            "convnext": ["--set", f"task_args={json.dumps(task_args)}"]}


def train(out: Path, variant: str, seed: int, threads: int | None = None) -> Path:
    """One training run (skipped when its summary exists); returns the run folder."""
    run = out / f"{variant}-seed{seed}"
    if not (run / "summary.json").is_file():
        cmd = [sys.executable, "-m", "unireplknet", "train", "--task", "segmentation", "--seed", str(seed),
               "--output", str(run), "--overwrite", "--no-progress", "--no-export", *variants()[variant]]
        if threads:
            cmd += ["--set", f"threads={threads}"]
        t0 = time.time()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        logging.info("%s seed %d done in %.0f s", variant, seed, time.time() - t0)
    return run


def backbone_params(run: Path) -> int:
    from unireplknet.models import build_model_from_checkpoint

    model, _ = build_model_from_checkpoint(run / "last.pt")
    return sum(p.numel() for p in model.backbone.parameters())


def per_class_iou(run: Path) -> dict[str, float]:
    """Class -> test IoU, read from the run's report/per_class.md table."""
    rows = {}
    for line in (run / "report" / "per_class.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and not cells[0].startswith(("class", "---", "**")):
            rows[cells[0]] = float(cells[1])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/segmentation_study"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", default=list(variants()), choices=list(variants()))
    p.add_argument("--parallel", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, default=None, help="threads per run (default: the recipe's, 2)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(lambda job: train(args.out, *job, args.threads), jobs))
    classes = list(per_class_iou(runs[0]))
    print("| backbone | backbone params | seed | test mIoU | mAcc | aAcc | " + " | ".join(classes) + " | wall s |")
    print("|---|---:|---:|---:|---:|---:|" + "---:|" * len(classes) + "---:|")
    rows: dict[str, list[list[float]]] = {}
    for (variant, seed), run in zip(jobs, runs):
        s = json.loads((run / "summary.json").read_text())
        iou = per_class_iou(run)
        row = [s["test_miou"], s["test_macc"], s["test_aacc"], *[iou.get(c, float("nan")) for c in classes]]
        rows.setdefault(variant, []).append(row)
        print(f"| {variant} | {backbone_params(run) / 1e6:.2f}M | {seed} | " + " | ".join(f"{v:.2f}" for v in row)
              + f" | {s['wall_time_s']:.0f} |")
    for variant, rs in rows.items():
        print(f"| {variant} | | mean | " + " | ".join(f"{statistics.mean(c):.2f}" for c in zip(*rs)) + " | |")


if __name__ == "__main__":
    main()
