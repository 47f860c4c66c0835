"""Detection throughput (images/s): the default recipe's Cascade Mask R-CNN on UniRepLKNet beside the same
detector on timm's ConvNeXt, training step and inference, in the same run.

Both models are built as ``unireplknet train --task detection`` builds them (the recipe's head, image sizes and
class count), with a UniRepLKNet and a ConvNeXt backbone (``task_args.backbone``). A training step is
forward + backward + AdamW on one batch of the built-in scenes at the recipe's middle training scale; inference
is the eval-mode detector (ours re-parameterized, as ``deploy.pt``) on a batch of test scenes. Every round
starts one fresh process per model, in shuffled order, which times both after a warm-up; the figures are medians
over rounds, and the ratio is ours / ConvNeXt.

    python benchmarks/detection_throughput.py --threads 2 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time

import torch


def build(backbone: str | None, batch: int) -> tuple[torch.nn.Module, list, list, list]:
    """The recipe's detector (UniRepLKNet when ``backbone`` is None), a training batch of scenes at the recipe's
    middle training scale with their targets, and a batch of test scenes."""
    import unireplknet
    from unireplknet.data.coco import CocoDetection
    from unireplknet.data.datasets import cache_dir
    from unireplknet.data.synth_detection import CLASS_NAMES, write_synth_coco
    from unireplknet.engine.config import load_config
    from unireplknet.tasks import get_task

    task = get_task("detection")
    cfg = load_config(task.default_config)
    args = task.parse_args({**cfg.task_args, "backbone": backbone})
    root = write_synth_coco(cache_dir() / f"synth_detection-{args.scene_size}", size=args.scene_size)
    scale = sorted(args.train_scales)[len(args.train_scales) // 2]
    resize = lambda img: torch.nn.functional.interpolate(img[None], scale_factor=scale / img.shape[-1])[0]  # noqa: E731
    train = CocoDetection(root, "train", skip_empty=True)
    images, targets = zip(*(train[i] for i in range(batch)))
    images = [resize(img) for img in images]
    targets = [dict(t, boxes=t["boxes"] * scale / args.scene_size,
                    masks=torch.nn.functional.interpolate(t["masks"][None].float(), size=(scale, scale))[0].byte())
               for t in targets]
    test = CocoDetection(root, "test")
    kwargs = {**(cfg.arch or {}), **args.head, "num_classes": len(CLASS_NAMES), "min_size": args.min_size,
              "max_size": args.max_size}
    name = f"{args.architecture}_unireplknet_{cfg.model.removeprefix('unireplknet_')}"
    if backbone:
        name, kwargs["timm_backbone"] = f"{args.architecture}_timm", backbone
    model = unireplknet.create_model(name, **kwargs)
    return model, list(images), targets, [test[i][0] for i in range(batch)]


def worker(backbone: str | None, threads: int, batch: int, iters: int) -> dict[str, float]:
    """Median images/s of ``iters`` training steps and ``iters`` inference passes (after one of each)."""
    import unireplknet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, images, targets, test_images = build(backbone, batch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> None:
        loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return batch / (time.perf_counter() - t)

    model.train()
    train = [timed(step) for _ in range(iters + 1)][1:]
    unireplknet.reparameterize(model.eval())
    with torch.inference_mode():
        infer = [timed(lambda: model(test_images)) for _ in range(iters + 1)][1:]
    return {"train": statistics.median(train), "infer": statistics.median(infer)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer", default="convnext_atto", help="timm backbone of the comparison detector")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=3, help="timed passes of each kind per process")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker or None, args.threads, args.batch, args.iters)))
        return
    rng = random.Random(0)
    runs: dict[str, list[dict[str, float]]] = {"unireplknet": [], args.peer: []}
    for _ in range(args.rounds):
        for name in rng.sample(list(runs), len(runs)):
            cmd = [sys.executable, __file__, "--worker", "" if name == "unireplknet" else name,
                   "--threads", str(args.threads), "--batch", str(args.batch), "--iters", str(args.iters)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("train", "infer")} for name, rs in runs.items()}
    print(f"# detection_default recipe, batch {args.batch}, {platform.machine()} CPU, {args.threads} threads; "
          f"medians over {args.rounds} rounds (fresh process per model per round, shuffled) of the median of "
          f"{args.iters} passes")
    print(f"| | UniRepLKNet img/s | {args.peer} img/s | ours / {args.peer} |")
    print("|---|---:|---:|---:|")
    for kind, label in (("train", "training step"), ("infer", "inference (deploy form)")):
        ours, peer = med["unireplknet"][kind], med[args.peer][kind]
        print(f"| {label} | {ours:.2f} | {peer:.2f} | {ours / peer:.2f}x |")


if __name__ == "__main__":
    main()
