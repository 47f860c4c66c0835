"""COCO evaluation speed: pycocotools vs faster-coco-eval on the same synthetic set (bbox + segm).

A synthetic ground truth (``--images`` images, 3-10 objects each with an RLE mask, a few crowd regions) and
``--dets`` scored detections per image (jittered copies of the objects plus false positives) are written
once; every round then runs each library once in a fresh process, in shuffled order, and the figure is the
median over rounds of the wall time of load + evaluate + accumulate + summarize for both iou types. The
two libraries' AP figures are printed too: they must agree.

    python benchmarks/coco_eval_libraries.py --images 500 --dets 20 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_RUN = r"""
import json, sys, time
lib, gt_path, dt_path = sys.argv[1:4]
t0 = time.perf_counter()
if lib == "pycocotools":
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
else:
    from faster_coco_eval import COCO, COCOeval_faster as COCOeval
import contextlib, io
stats = {}
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(gt_path)
    dt = gt.loadRes(dt_path)
    for iou_type in ("bbox", "segm"):
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate(); ev.accumulate(); ev.summarize()
        stats[iou_type] = [round(float(s), 6) for s in ev.stats[:6]]
print(json.dumps(dict(seconds=time.perf_counter() - t0, stats=stats)))
"""


def synthetic_set(n_images: int, n_dets: int, size: int = 256, seed: int = 0) -> tuple[dict, list[dict]]:
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    yy, xx = np.mgrid[:size, :size]
    for img_id in range(1, n_images + 1):
        images.append(dict(id=img_id, file_name=f"{img_id}.png", height=size, width=size))
        for _ in range(int(rng.integers(3, 11))):
            cx, cy, r = rng.uniform(20, size - 20, 2).tolist() + [float(rng.uniform(5, 40))]
            m = ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.uint8)
            rle = mask_utils.encode(np.asfortranarray(m))
            bbox = mask_utils.toBbox(rle).tolist()
            rle["counts"] = rle["counts"].decode()
            cat = int(rng.integers(1, 11))
            crowd = int(rng.random() < 0.05)
            anns.append(dict(id=len(anns) + 1, image_id=img_id, category_id=cat, bbox=bbox, area=float(m.sum()),
                             iscrowd=crowd, segmentation=rle))
            if len(dets) < n_dets * img_id and not crowd:  # a jittered true positive
                s = rng.uniform(0.8, 1.2)
                m2 = ((xx - cx - rng.normal(0, 3)) ** 2 + (yy - cy - rng.normal(0, 3)) ** 2 <= (r * s) ** 2)
                rle2 = mask_utils.encode(np.asfortranarray(m2.astype(np.uint8)))
                box2 = mask_utils.toBbox(rle2).tolist()
                rle2["counts"] = rle2["counts"].decode()
                dets.append(dict(image_id=img_id, category_id=cat if rng.random() < 0.9 else int(rng.integers(1, 11)),
                                 bbox=box2, score=float(rng.random()), segmentation=rle2))
        while len(dets) < n_dets * img_id:  # false positives
            x, y = rng.uniform(0, size - 40, 2)
            w, h = rng.uniform(5, 40, 2)
            m3 = np.zeros((size, size), np.uint8)
            m3[int(y):int(y + h), int(x):int(x + w)] = 1
            rle3 = mask_utils.encode(np.asfortranarray(m3))
            rle3["counts"] = rle3["counts"].decode()
            dets.append(dict(image_id=img_id, category_id=int(rng.integers(1, 11)),
                             bbox=mask_utils.toBbox(rle3).tolist(), score=float(rng.random() * 0.5),
                             segmentation=rle3))
    cats = [dict(id=i, name=f"c{i}") for i in range(1, 11)]
    return dict(images=images, annotations=anns, categories=cats), dets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--dets", type=int, default=20, help="detections per image")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    libs = ["pycocotools", "faster_coco_eval"]
    with tempfile.TemporaryDirectory() as tmp:
        gt, dets = synthetic_set(args.images, args.dets)
        gt_path, dt_path = Path(tmp, "gt.json"), Path(tmp, "dt.json")
        gt_path.write_text(json.dumps(gt))
        dt_path.write_text(json.dumps(dets))
        times: dict[str, list[float]] = {lib: [] for lib in libs}
        stats = {}
        for _ in range(args.rounds):
            random.shuffle(libs)
            for lib in libs:
                t0 = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", _RUN, lib, str(gt_path), str(dt_path)],
                                     capture_output=True, text=True, check=True)
                wall = time.perf_counter() - t0
                result = json.loads(out.stdout.strip().splitlines()[-1])
                times[lib].append(wall)
                stats[lib] = result["stats"]
    print(f"{args.images} images, {len(gt['annotations'])} objects, {len(dets)} detections; "
          f"median of {args.rounds} rounds, fresh process each (import + load + bbox and segm eval)")
    ref = statistics.median(times["pycocotools"])
    for lib in sorted(times):
        med = statistics.median(times[lib])
        print(f"{lib:<18}{med:8.2f} s   x{ref / med:5.2f} vs pycocotools   AP bbox/segm "
              f"{stats[lib]['bbox'][0]:.4f}/{stats[lib]['segm'][0]:.4f}")


if __name__ == "__main__":
    main()
