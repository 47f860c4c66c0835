"""CPU seconds (``time.process_time``, one thread) of a clip recipe: per generated sample, per training step
(median) and per evaluated image, and the run time they add up to. CPU time is what a quiet core would take, so
the estimate holds on a shared machine where wall time does not.

    PYTHONPATH=src python benchmarks/clip_step_cost.py clip_default [--steps 12] [--set '{"batch_size": 32}']
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader

from unireplknet.engine.config import load_config
from unireplknet.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--set", default="{}", help="config overrides as JSON")
    opts = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = load_config(opts.recipe, json.loads(opts.set))
    task = get_task("clip")
    args = task.parse_args(cfg.task_args)
    data = task.build_data(cfg, args)
    model, criterion = task.build_model(cfg, args, data), task.criterion(cfg, args, data)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = iter(DataLoader(data.train, batch_size=cfg.batch_size, shuffle=True))
    t0 = time.process_time()
    batches = [next(batches) for _ in range(opts.steps)]
    images_per_step = batches[0][0].shape[:-3].numel()
    data_s = (time.process_time() - t0) / (opts.steps * images_per_step)
    steps = []
    for images, targets in batches:
        t0 = time.process_time()
        loss = criterion(model, images, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps.append(time.process_time() - t0)
    step_s = sorted(steps[2:])[len(steps[2:]) // 2]  # (the first steps warm up)
    model.eval()
    val_images, val_targets = next(iter(DataLoader(data.val, batch_size=64)))
    t0 = time.process_time()
    with torch.no_grad():
        model(val_images), model(None, val_targets["text"])
    eval_s = (time.process_time() - t0) / len(val_images)
    n_steps = cfg.epochs * (cfg.limit_train_batches or len(data.train) // cfg.batch_size)
    n_eval = cfg.epochs * len(data.val) + 2 * (len(data.val) + len(data.test or []))  # per epoch; both forms at the end
    total = n_steps * (step_s + images_per_step * data_s) + n_eval * (eval_s + data_s)
    print(json.dumps({"recipe": opts.recipe, "images_per_step": images_per_step, "data_s_per_image": round(data_s, 5),
                      "step_cpu_s": round(step_s, 4), "eval_s_per_image": round(eval_s, 5), "steps": n_steps,
                      "estimate_min": round(total / 60, 1)}))


if __name__ == "__main__":
    main()
