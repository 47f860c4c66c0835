"""Detection kernel-size and peer study on the built-in marker-context scenes, same budget for every model.

Runs ``unireplknet train --task detection`` (the default recipe, so the same epochs and schedule) for
  - ``unireplknet``: the default model (UniRepLKNet-A, its large kernels),
  - ``kernels3``: its twin with every kernel set to 3 (``arch={"kernel_sizes": 3}``; Table 11's question),
  - ``convnext_atto``: the same detector on timm's ConvNeXt-atto (``task_args.backbone``), UniRepLKNet-A's
    depths and widths with 7×7 kernels,
for each seed, then reads box / mask AP on the held-out test split from each run's ``summary.json`` and adds
the AP with the marker ignored ("shape AP": ``disk_a`` and ``disk_b`` one class, ...), from ``deploy.pt``:
the gap between the two is what reading the far-away marker costs. Runs whose ``summary.json`` exists are
reused, so an interrupted study continues.

    python benchmarks/detection_study.py --seeds 0 1 --out runs/detection_study --parallel 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

import study_runs

VARIANTS = {"unireplknet": [], "kernels3": ["--set", 'arch={"kernel_sizes": 3}'],
            "convnext_atto": ["--set", "task_args.backbone=convnext_atto"]}


def shape_ap(run: Path) -> dict[str, float]:
    """Box / mask AP of the run's ``deploy.pt`` on the test split with the marker's mode ignored, and
    ``marker_read``: per test image, the share of the object detections' score mass (scores >= 0.05) that
    goes to the image's true mode, averaged over images, in percent (50 = the marker is not read at all)."""
    import torch

    from unireplknet.data.coco import CocoDetection
    from unireplknet.data.datasets import cache_dir
    from unireplknet.data.synth_detection import CLASS_NAMES, SHAPES, synth_coco_root
    from unireplknet.models import build_model_from_checkpoint
    from unireplknet.tasks.detection import DetectionTask, coco_evaluate, coco_results, predict_detections

    torch.set_num_threads(1)
    config = json.loads((run / "config.json").read_text())
    args = DetectionTask().parse_args(config["task_args"])  # the run's settings, defaults filled in
    test = CocoDetection(synth_coco_root(cache_dir(), args.scene_size, args.scene_train_images,
                                         args.scene_marker == "class", args.scene_cue), "test")
    model, _ = build_model_from_checkpoint(run / "deploy.pt")
    detections = predict_detections(model, test)
    shape_of = {c: (c - 1) % len(SHAPES) + 1 for c in range(1, len(CLASS_NAMES) + 1)}  # marker classes: not scored
    gt = dict(test.coco, categories=[dict(id=i + 1, name=s) for i, s in enumerate(SHAPES)],
              annotations=[dict(a, category_id=shape_of[a["category_id"]]) for a in test.coco["annotations"]])
    results = [dict(r, category_id=shape_of[r["category_id"]])
               for r in coco_results(detections, test.image_ids, test.label_to_cat_id) if r["category_id"] in shape_of]
    metrics = {k: v for k, v in coco_evaluate(gt, results).items() if k in ("bbox_ap", "segm_ap")}
    return {**metrics, "marker_read": marker_read(test, detections)}


def marker_read(test, detections) -> float:
    """See :func:`shape_ap`: the mean share (percent) of object score mass on each test image's true mode."""
    from unireplknet.data.synth_detection import image_modes, mode_of

    mode_of_image = image_modes(test.coco)
    shares = []
    for det, image_id in zip(detections, test.image_ids):
        cats = [test.label_to_cat_id[int(label)] for label in det["labels"].tolist()]
        pairs = [(score, mode_of(c)) for score, c in zip(det["scores"].tolist(), cats) if mode_of(c) is not None]
        total = sum(score for score, _ in pairs)
        if image_id in mode_of_image and total > 0:
            shares.append(sum(score for score, mode in pairs if mode == mode_of_image[image_id]) / total)
    return 100 * statistics.mean(shares)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    study_runs.add_arguments(p, list(VARIANTS), "runs/detection_study")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = study_runs.run_study("detection", VARIANTS, args)
    print("| backbone | seed | box AP | mask AP | box AP50 | shape box AP | shape mask AP | marker read % | CPU s "
          "| wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows: dict[str, list[list[float]]] = {}
    for variant, seed, run in results:
        s = json.loads((run / "summary.json").read_text())
        shape = shape_ap(run)
        row = [s["test_bbox_ap"], s["test_segm_ap"], s["test_bbox_ap50"], shape["bbox_ap"], shape["segm_ap"],
               shape["marker_read"]]
        rows.setdefault(variant, []).append(row)
        print(f"| {variant} | {seed} | " + " | ".join(f"{v:.1f}" for v in row)
              + f" | {s.get('process_cpu_s', float('nan')):.0f} | {s['wall_time_s']:.0f} |")
    for variant, rs in rows.items():
        print(f"| {variant} | mean | " + " | ".join(f"{statistics.mean(c):.1f}" for c in zip(*rs)) + " | | |")


if __name__ == "__main__":
    main()
