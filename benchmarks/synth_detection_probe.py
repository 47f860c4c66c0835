"""Learnability probe of the embedded detection set: a plain training loop, a time budget, COCO AP on test.

Trains a small (Cascade) Mask R-CNN on the embedded scenes (``unireplknet.data.synth_detection``) from scratch
for ``--minutes`` of process CPU time (so a shared, busy machine gives the same budget; wall time is reported
too) on ``--threads`` threads, then reports box and mask AP on the held-out test split.
``--kernel 3`` replaces every large kernel by 3×3 (the small-kernel control). ``shape_*_ap`` is the AP with the
marker's mode ignored (``disk_a`` and ``disk_b`` one class ...): the gap to the full AP is what context costs.

    python benchmarks/synth_detection_probe.py --minutes 6 --threads 1 --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch
from torch.utils.data import DataLoader

from unireplknet.data.coco import CocoDetection, collate_detection, train_transforms
from unireplknet.data.synth_detection import SHAPES, write_synth_coco
from unireplknet.models.detection import MODELS
from unireplknet.tasks.detection import coco_evaluate, coco_results, evaluate_detections, predict_detections

CPU_HEAD = dict(fpn_channels=64, fc_channels=256, num_convs=2, mask_channels=64, mask_convs=2, min_size=128,
                max_size=128, rpn_pre_nms_train=600, rpn_post_nms_train=300, rpn_pre_nms_test=300,
                rpn_post_nms_test=100, rpn_samples=128, roi_samples=32, anchor_scale=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/unireplknet_synth_detection")
    parser.add_argument("--model", default="cascade_mask_rcnn_unireplknet_a")
    parser.add_argument("--kernel", type=int, default=None, help="one kernel size for stages 2-4 (default: the table)")
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head", default="{}", help="JSON overrides of the CPU head settings")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    root = write_synth_coco(args.root, seed=0)
    train = CocoDetection(root, "train", train_transforms((112, 128, 144), 192), skip_empty=True)
    test = CocoDetection(root, "test")
    head = dict(CPU_HEAD, **json.loads(args.head))
    model = MODELS[args.model](num_classes=len(train.class_names), kernel_sizes=args.kernel, **head)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    budget = args.minutes * 60
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, collate_fn=collate_detection,
                        drop_last=True, generator=torch.Generator().manual_seed(args.seed))
    wall0, cpu0, step, done = time.perf_counter(), time.process_time(), 0, False
    while not done:
        model.train()
        for images, targets in loader:
            elapsed = time.process_time() - cpu0
            lr = args.lr * min(1.0, (step + 1) / 50) * (0.1 if elapsed > 0.8 * budget else 1.0)
            for g in opt.param_groups:
                g["lr"] = lr
            losses = model(images, targets)
            loss = sum(losses.values())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            step += 1
            if step % 25 == 0:
                logging.info("step %d  %.0f cpu-s  loss %.3f  %s", step, elapsed, loss.item(),
                             " ".join(f"{k}={v.item():.3f}" for k, v in losses.items()))
            if time.process_time() - cpu0 > budget:
                done = True
                break
    train_cpu_s, train_wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    detections = predict_detections(model, test)
    metrics = evaluate_detections(test, detections)
    # the same, with the marker's mode ignored (disk_a = disk_b ...): how much of the gap is context
    shape_of = {c: (c - 1) % len(SHAPES) + 1 for c in test.cat_ids}
    gt = dict(test.coco, categories=[dict(id=i + 1, name=s) for i, s in enumerate(SHAPES)],
              annotations=[dict(a, category_id=shape_of[a["category_id"]]) for a in test.coco["annotations"]])
    results = [dict(r, category_id=shape_of[r["category_id"]])
               for r in coco_results(detections, test.image_ids, test.label_to_cat_id)]
    metrics.update({f"shape_{k}": v for k, v in coco_evaluate(gt, results).items() if k in ("bbox_ap", "segm_ap")})
    print(json.dumps(dict(model=args.model, kernel=args.kernel or "default", seed=args.seed, steps=step,
                          train_cpu_s=round(train_cpu_s), train_wall_s=round(train_wall_s),
                          images_seen=step * args.batch_size,
                          **{k: round(v, 1) for k, v in metrics.items()})))


if __name__ == "__main__":
    main()
