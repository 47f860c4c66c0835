"""Where does a trained detector keep the scenes' mode? A linear probe on its features at the objects' centres.

For each object of ``--train-images`` training scenes (and ``--val-images`` validation scenes), take the
feature vector at the object's box centre from every backbone map (C2…C5) and pyramid level (P2…P5), plus the
image mean of C5 ("C5 mean"); fit a logistic regression (standardized features, L2, L-BFGS) that predicts the
image's mode (the marker's), and report its accuracy on the training objects and on the held-out ones. 50% on
held-out objects means the mode is not in that map at the objects: the RoI heads cannot read it there.

    python benchmarks/detection_mode_probe.py runs/det_default             # the run's deploy.pt
    python benchmarks/detection_mode_probe.py runs/det_default --checkpoint last.pt
"""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from pathlib import Path

import torch


def collect(model: torch.nn.Module, dataset, count: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Features at the object centres of the first ``count`` scenes, and each object's mode (0 / 1)."""
    from unireplknet.data.synth_detection import CLASS_NAMES, mode_of

    feats: dict[str, list[torch.Tensor]] = {}
    modes = []
    for i in range(min(count, len(dataset))):
        image, target = dataset[i]
        keep = target["labels"] <= len(CLASS_NAMES)  # the marker's own instances (scene_marker=class) are not probed
        if not keep.any():
            continue
        with torch.no_grad():
            x = model.transform([image])[0].tensors
            backbone = model.backbone(x)
            pyramid = list(model.neck(OrderedDict((str(j), f) for j, f in enumerate(backbone))).values())[:4]
        for box, label in zip(target["boxes"][keep], target["labels"][keep]):
            cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
            for prefix, maps in (("C", backbone), ("P", pyramid)):
                for j, f in enumerate(maps):
                    stride = x.shape[-1] / f.shape[-1]
                    row, col = min(int(cy // stride), f.shape[2] - 1), min(int(cx // stride), f.shape[3] - 1)
                    feats.setdefault(f"{prefix}{j + 2}", []).append(f[0, :, row, col])
            feats.setdefault("C5 mean", []).append(backbone[-1][0].mean((1, 2)))
            modes.append(mode_of(int(label)))  # labels are the category ids here (1..K, in order)
    return {k: torch.stack(v).double() for k, v in feats.items()}, torch.tensor(modes)


def probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
          weight_decay: float = 1e-2) -> tuple[float, float]:
    """Logistic regression on standardized features -> (train accuracy, held-out accuracy)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (val_x - mean) / std
    w = torch.zeros(a.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a @ w + bias, train_y.double())
        loss = loss + weight_decay * w.square().sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (((a @ w + bias > 0).long() == train_y).double().mean().item(),
                ((b @ w + bias > 0).long() == val_y).double().mean().item())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a detection run folder on the built-in scenes")
    p.add_argument("--checkpoint", default="deploy.pt", help="file in the run folder (default: deploy.pt)")
    p.add_argument("--train-images", type=int, default=300)
    p.add_argument("--val-images", type=int, default=150)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from unireplknet.data.coco import CocoDetection
    from unireplknet.data.datasets import cache_dir
    from unireplknet.data.synth_detection import synth_coco_root
    from unireplknet.models import build_model_from_checkpoint
    from unireplknet.tasks.detection import DetectionTask

    task_args = DetectionTask().parse_args(json.loads((args.run / "config.json").read_text())["task_args"])
    root = synth_coco_root(cache_dir(), task_args.scene_size, task_args.scene_train_images,
                           task_args.scene_marker == "class", task_args.scene_cue)
    model, _ = build_model_from_checkpoint(args.run / args.checkpoint)
    model.eval()
    train_x, train_y = collect(model, CocoDetection(root, "train"), args.train_images)
    val_x, val_y = collect(model, CocoDetection(root, "val"), args.val_images)
    print(f"{args.run} ({args.checkpoint}): {len(train_y)} training objects, {len(val_y)} held-out objects")
    print("| features at the object centre | train accuracy % | held-out accuracy % |")
    print("|---|---:|---:|")
    for name in train_x:
        fit, held_out = probe(train_x[name], train_y, val_x[name], val_y)
        print(f"| {name} | {100 * fit:.1f} | {100 * held_out:.1f} |")


if __name__ == "__main__":
    main()
