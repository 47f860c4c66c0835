"""Learnability probe for the embedded segmentation set ("beacons"): large kernels vs all-3×3, equal steps.

A plain torch loop (no engine): a small UniRepLKNet + UPerNet-lite head, AdamW, linear warm-up then poly decay
over a fixed number of steps (the CPU is shared, so steps, not minutes, are the budget; the training time is
reported), batches from the embedded generator with flips and photometric jitter; test-split
mIoU (MMSeg definition) at a few points. Kernels: ``large`` = 13 in stage 2 and 7 in stages 3-4 (those maps
are 4×4 and 2×2 at 64², which a 7×7 kernel already covers); ``small`` = 3 everywhere (the twin).

    python benchmarks/seg_probe.py --kernels large --steps 1500 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader

from unireplknet.data.segmentation import SegEvalTransform, SegTrainTransform
from unireplknet.data.synth_segmentation import BeaconsDataset
from unireplknet.models.segmentation import SegmentationLoss, UPerNet
from unireplknet.tasks.segmentation import confusion_matrix, segmentation_metrics

KERNELS = {
    "large": ((3, 3), (13, 13), (7, 7, 7, 7), (7, 7)),
    "small": ((3, 3), (3, 3), (3, 3, 3, 3), (3, 3)),
}


def build_model(kernels: str, num_classes: int) -> UPerNet:
    return UPerNet(num_classes=num_classes, channels=48, aux_channels=24, depths=(2, 2, 4, 2),
                   dims=(24, 48, 96, 192), kernel_sizes=KERNELS[kernels], drop_path_rate=0.05)


@torch.no_grad()
def evaluate(model: UPerNet, loader: DataLoader, num_classes: int) -> dict:
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for images, labels in loader:
        confusion += confusion_matrix(model(images).argmax(1), labels, num_classes)
    model.train()
    return segmentation_metrics(confusion)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", choices=list(KERNELS), default="large")
    parser.add_argument("--steps", type=int, default=1500, help="training steps (poly schedule over them)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--evals", type=int, default=3, help="test evaluations, evenly spaced in steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    train = BeaconsDataset("train", SegTrainTransform(scale=(64, 64), ratio_range=(1.0, 1.0), crop=(64, 64),
                                                      hue_delta=0))
    test = BeaconsDataset("test", SegEvalTransform())
    k = len(train.class_names)
    model = build_model(args.kernels, k)
    loss_fn = SegmentationLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True)
    test_loader = DataLoader(test, batch_size=50)

    warmup = 0.03
    marks = [round(args.steps * (i + 1) / args.evals) for i in range(args.evals)]
    history, step, train_time, start = [], 0, 0.0, time.perf_counter()
    while step < args.steps:
        for images, labels in loader:
            t0 = time.perf_counter()
            frac = step / args.steps
            scale = frac / warmup if frac < warmup else (1 - frac) / (1 - warmup)
            for group in opt.param_groups:
                group["lr"] = args.lr * max(scale, 1e-3)
            loss = loss_fn(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            train_time += time.perf_counter() - t0
            if step in marks:
                m = evaluate(model, test_loader, k)
                history.append(dict(steps=step, train_minutes=round(train_time / 60, 2), loss=round(loss.item(), 4),
                                    test_miou=round(m["miou"], 2), test_macc=round(m["macc"], 2),
                                    test_aacc=round(m["aacc"], 2),
                                    per_class_iou=[None if v is None else round(v, 1) for v in m["per_class_iou"]]))
                print(json.dumps(history[-1]), flush=True)
            if step >= args.steps:
                break
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps(dict(kernels=args.kernels, params=params, threads=args.threads, batch_size=args.batch_size,
                          wall_minutes=round((time.perf_counter() - start) / 60, 2), final=history[-1])))


if __name__ == "__main__":
    main()
