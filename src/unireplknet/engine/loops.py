"""One training epoch and one evaluation pass (DDP-aware, AMP, gradient accumulation, timing)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unireplknet.data.datasets import drop_corrupt
from unireplknet.engine.checkpoint import unwrap_model
from unireplknet.engine.distributed import all_gather_object, all_reduce_sum
from unireplknet.tasks.classification import topk_correct

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


@dataclass
class TrainState:
    """Counters that go into checkpoints."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps so far
    epoch_samples: int = 0  # global samples consumed in the epoch in progress
    best_metric: float | None = None  # best value of the task's primary metric (val_acc1 for images)
    best_epoch: int = -1
    corrupt_images: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def train_one_epoch(
    *, model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, scheduler: Any, loss_fn: nn.Module,
    state: TrainState, cfg: Any, device: torch.device, world_size: int, mixup: Any = None, ema: Any = None,
    scaler: Any = None, should_stop: Callable[[], bool] = lambda: False,
    on_step: Callable[[], None] | None = None, progress: bool = True,
) -> dict[str, float]:
    """Train until the loader (or ``max_steps``, or ``should_stop()``) ends; updates ``state`` in place.

    The lr follows the scheduler in fractional epochs, so its curve does not depend on the world size.
    Returns the epoch's mean loss, last lr, data time, compute time and throughput (this rank's).
    """
    from tqdm import tqdm

    model.train()
    accum = cfg.accum_steps
    samples_per_update = cfg.batch_size * world_size * accum
    done_before = state.epoch_samples // samples_per_update  # updates of this epoch before a resume
    batches = len(loader)
    if cfg.limit_train_batches:
        batches = min(batches, max(0, cfg.limit_train_batches - done_before * accum))
    updates = batches // accum
    # updates of a full epoch, for the fractional-epoch lr schedule (a resumed epoch has fewer left)
    full_updates = max(1, (math.ceil(loader.sampler.n / world_size) // cfg.batch_size) // accum)
    if cfg.limit_train_batches:
        full_updates = max(1, min(full_updates, cfg.limit_train_batches // accum))

    loss_sum, loss_n, seen = 0.0, 0, 0
    data_time = compute_time = 0.0
    bar = tqdm(total=updates, desc=f"epoch {state.epoch + 1}/{cfg.epochs}", disable=not progress,
               dynamic_ncols=True, leave=False, unit="step")
    it = iter(loader)
    lr = optimizer.param_groups[0]["lr"]
    completed = True
    for u in range(updates):
        if should_stop() or (cfg.max_steps and state.step >= cfg.max_steps):
            completed = False
            break
        scheduler.step(state.epoch + (done_before + u) / full_updates)
        optimizer.zero_grad(set_to_none=True)
        for micro in range(accum):
            t0 = time.perf_counter()
            try:
                images, targets = next(it)
            except RuntimeError:  # a worker killed by Ctrl-C: stop cleanly at the last whole step
                if should_stop():
                    bar.close()
                    return _epoch_stats(loss_sum, loss_n, lr, data_time, compute_time, seen, False)
                raise
            images, targets, n_bad = drop_corrupt(images, targets)
            state.corrupt_images += n_bad
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if cfg.channels_last and images.dim() == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            t1 = time.perf_counter()
            data_time += t1 - t0
            if mixup is not None and len(images) % 2:  # mixup pairs samples: drop one after a skipped image
                images, targets = images[:-1], targets[:-1]
            if len(images) == 0:
                continue
            if mixup is not None:
                images, targets = mixup(images, targets)
            sync = micro == accum - 1 or not hasattr(model, "no_sync")
            with contextlib.nullcontext() if sync else model.no_sync(), autocast(device, cfg.amp):
                loss = loss_fn(model(images), targets)
            if scaler is None and not math.isfinite(loss.item()):  # (fp16: the grad scaler skips such steps)
                raise FloatingPointError(f"loss is {loss.item()} at step {state.step}; lower the lr "
                                         "or use bf16")
            if scaler is not None:
                scaler.scale(loss / accum).backward()
            else:
                (loss / accum).backward()
            loss_sum += loss.item() * len(images)
            loss_n += len(images)
            seen += len(images)
            compute_time += time.perf_counter() - t1
        t2 = time.perf_counter()
        if scaler is not None:
            if cfg.clip_grad:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
        if ema is not None:
            ema.update(unwrap_model(model))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        compute_time += time.perf_counter() - t2
        state.step += 1
        state.epoch_samples += samples_per_update
        lr = optimizer.param_groups[0]["lr"]
        bar.update(1)
        if loss_n:
            bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}", lr=f"{lr:.2e}")
        if on_step is not None:
            on_step()
    bar.close()
    return _epoch_stats(loss_sum, loss_n, lr, data_time, compute_time, seen, completed)


def _epoch_stats(loss_sum: float, loss_n: int, lr: float, data_time: float, compute_time: float,
                 seen: int, completed: bool) -> dict[str, Any]:
    total = data_time + compute_time
    return {"completed": completed, "train_loss": loss_sum / max(loss_n, 1), "lr": lr, "data_time": data_time,
            "compute_time": compute_time, "train_samples": seen,
            "train_images_per_s": seen / total if total > 0 else 0.0}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, *, device: torch.device, amp: str = "none",
             channels_last: bool = False, limit_batches: int | None = None, gather: bool = False,
             progress: bool = False, desc: str = "eval", reduce: bool = True) -> dict[str, Any]:
    """Top-1/top-5 accuracy (percent) and mean CE loss over every rank's shard (this process's loader
    only with ``reduce=False``); with ``gather``, also the predictions and targets of all samples."""
    from tqdm import tqdm

    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss_sum, n, c1, c5, bad = 0.0, 0, 0, 0, 0
    preds: list[int] = []
    trues: list[int] = []
    for i, (images, targets) in enumerate(tqdm(loader, desc=desc, disable=not progress, leave=False,
                                               dynamic_ncols=True)):
        if limit_batches and i >= limit_batches:
            break
        images, targets, n_bad = drop_corrupt(images, targets)
        bad += n_bad
        if len(images) == 0:
            continue
        images, targets = images.to(device), targets.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        loss_sum += float(loss_fn(logits, targets))
        k1, k5 = topk_correct(logits, targets)
        c1, c5, n = c1 + k1, c5 + k5, n + len(targets)
        if gather:
            preds += logits.argmax(1).tolist()
            trues += targets.tolist()
    if reduce:
        loss_sum, n, c1, c5, bad = all_reduce_sum([loss_sum, n, c1, c5, bad], device)
    out: dict[str, Any] = {"val_loss": loss_sum / max(n, 1), "val_acc1": 100.0 * c1 / max(n, 1),
                           "val_acc5": 100.0 * c5 / max(n, 1), "val_samples": int(n), "val_corrupt": int(bad)}
    if gather:
        parts = all_gather_object((preds, trues)) if reduce else [(preds, trues)]
        out["preds"] = [p for part in parts for p in part[0]]
        out["targets"] = [t for part in parts for t in part[1]]
    return out
