"""Dense-task throughput (images/s): each task's default recipe on UniRepLKNet beside the same head on timm's
ConvNeXt, training step and inference, in the same run.

For ``--task segmentation`` (UPerNet) the peer is the segmentation study's ConvNeXt (``convnext_atto`` with the
recipe's depths 2-2-4-2 and widths 26-52-104-208, about the backbone's parameter count); for ``--task detection``
(Cascade Mask R-CNN) it is ``convnext_atto`` (UniRepLKNet-A's depths and widths), as in detection_study.py.
Both models are built by the task itself (``build_data``/``build_model``, the recipe's data pipeline), so a
training step is exactly the trainer's: the task's criterion on one collated batch of the built-in training set,
backward, AdamW. Inference is the eval-mode model (ours re-parameterized, as ``deploy.pt``) on a batch of test
images. Every round starts one fresh process per model, in shuffled order, which times both after a warm-up;
figures are medians over rounds, and the ratio is ours / ConvNeXt.

    python benchmarks/dense_throughput.py --task segmentation --threads 2 --rounds 5
    python benchmarks/dense_throughput.py --task detection --threads 2 --rounds 5
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
from typing import Any

import torch

from segmentation_study import CONVNEXT_DIMS, RECIPE

SEG_PEER = {"backbone": "convnext_atto",
            "backbone_kwargs": {"depths": RECIPE["arch"]["depths"], "dims": CONVNEXT_DIMS}}  # the study's peer
DET_PEER = {"backbone": "convnext_atto"}


def build(task_name: str, peer: bool) -> tuple[Any, torch.nn.Module, Any, Any]:
    """(task, model, criterion, data) of the task's default recipe; the ConvNeXt twin when ``peer``."""
    from unireplknet.engine.config import load_config
    from unireplknet.tasks import get_task

    task = get_task(task_name)
    cfg = load_config(task.default_config)
    extra = {"label_pretrain_steps": 0} if task_name == "detection" else {}  # weights do not change the speed
    if peer:
        extra |= SEG_PEER if task_name == "segmentation" else DET_PEER
    cfg = load_config(task.default_config, {"task_args": {**cfg.task_args, **extra}})
    args = task.parse_args(cfg.task_args)
    data = task.build_data(cfg, args)
    model = task.build_model(cfg, args, data)
    return cfg, model, task.criterion(cfg, args, data), data


def worker(task_name: str, peer: bool, threads: int, batch: int, iters: int) -> dict[str, float]:
    """Median images/s of ``iters`` training steps and ``iters`` inference passes (after one of each)."""
    import unireplknet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg, model, criterion, data = build(task_name, peer)
    train_inputs, train_targets = data.collate([data.train[i] for i in range(batch)])
    test_inputs, _ = data.collate([data.test[i] for i in range(batch)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> None:
        loss = criterion(model, train_inputs, train_targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return batch / (time.perf_counter() - t)

    params = sum(p.numel() for p in model.parameters())
    model.train()
    train = [timed(step) for _ in range(iters + 1)][1:]
    unireplknet.reparameterize(model.eval())
    with torch.inference_mode():
        infer = [timed(lambda: model(test_inputs)) for _ in range(iters + 1)][1:]
    return {"train": statistics.median(train), "infer": statistics.median(infer), "params": params}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["segmentation", "detection"], default="segmentation")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=None, help="default: the recipe's batch size")
    p.add_argument("--iters", type=int, default=3, help="timed passes of each kind per process")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--worker", choices=["ours", "peer"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.batch is None:
        from unireplknet.engine.config import load_config
        from unireplknet.tasks import get_task

        args.batch = load_config(get_task(args.task).default_config).batch_size
    if args.worker is not None:
        print(json.dumps(worker(args.task, args.worker == "peer", args.threads, args.batch, args.iters)))
        return
    rng = random.Random(0)
    runs: dict[str, list[dict[str, float]]] = {"ours": [], "peer": []}
    for _ in range(args.rounds):
        for name in rng.sample(list(runs), len(runs)):
            cmd = [sys.executable, __file__, "--task", args.task, "--worker", name, "--threads", str(args.threads),
                   "--batch", str(args.batch), "--iters", str(args.iters)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("train", "infer")} for name, rs in runs.items()}
    params = {name: rs[0]["params"] / 1e6 for name, rs in runs.items()}
    print(f"# {args.task}_default recipe, batch {args.batch}, {platform.machine()} CPU, {args.threads} threads; "
          f"medians over {args.rounds} rounds (fresh process per model per round, shuffled) of the median of "
          f"{args.iters} passes; whole model {params['ours']:.2f}M (UniRepLKNet) vs {params['peer']:.2f}M (ConvNeXt)")
    print("| | UniRepLKNet img/s | ConvNeXt img/s | ours / ConvNeXt |")
    print("|---|---:|---:|---:|")
    for kind, label in (("train", "training step"), ("infer", "inference (deploy form)")):
        ours, peer = med["ours"][kind], med["peer"][kind]
        print(f"| {label} | {ours:.2f} | {peer:.2f} | {ours / peer:.2f}x |")


if __name__ == "__main__":
    main()
