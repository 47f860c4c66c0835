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
from importlib import resources
from pathlib import Path

import study_runs

RECIPE = json.loads(resources.files("unireplknet.configs").joinpath("segmentation_default.json").read_text())
CONVNEXT_DIMS = [26, 52, 104, 208]  # ConvNeXt blocks have fewer weights than UniRepLKNet's at equal width


def variants() -> dict[str, list[str]]:
    arch = dict(RECIPE["arch"])
    twin = dict(arch, kernel_sizes=3)
    peer = {"backbone": "convnext_atto", "backbone_kwargs": {"depths": arch["depths"], "dims": CONVNEXT_DIMS}}
    task_args = dict(RECIPE["task_args"], **peer)
    return {"unireplknet": [], "kernels3": ["--set", f"arch={json.dumps(twin)}"],
            "convnext": ["--set", f"task_args={json.dumps(task_args)}"]}


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
    study_runs.add_arguments(p, list(variants()), "runs/segmentation_study")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    flags = {name: ["--no-export", *f] for name, f in variants().items()}
    results = study_runs.run_study("segmentation", flags, args)
    runs = [run for _, _, run in results]
    classes = list(per_class_iou(runs[0]))
    print("| backbone | backbone params | seed | test mIoU | mAcc | aAcc | " + " | ".join(classes) + " | wall s |")
    print("|---|---:|---:|---:|---:|---:|" + "---:|" * len(classes) + "---:|")
    rows: dict[str, list[list[float]]] = {}
    for variant, seed, run in results:
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
