"""One training epoch (DDP-aware, AMP, gradient accumulation, timing) and the evaluation loop tasks build on."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unireplknet.data.datasets import drop_corrupt
from unireplknet.engine.checkpoint import unwrap_model
from unireplknet.engine.task import EvalContext
from unireplknet.utils.progress import Progress

if TYPE_CHECKING:
    from unireplknet.engine.run import Run

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def to_device(obj: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Tensors (also inside lists, tuples and dicts) moved to ``device``; 4-D images channels-last if asked."""
    if isinstance(obj, torch.Tensor):
        obj = obj.to(device, non_blocking=True)
        return obj.contiguous(memory_format=torch.channels_last) if channels_last and obj.dim() == 4 else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device, channels_last) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device, channels_last) for k, v in obj.items()}
    return obj


def batch_size_of(inputs: Any) -> int:
    return inputs.shape[0] if isinstance(inputs, torch.Tensor) else len(inputs)


@dataclass
class TrainState:
    """Counters that go into checkpoints (the epoch's running loss too, so a resumed epoch reports all of it)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps so far
    epoch_samples: int = 0  # global samples consumed in the epoch in progress
    epoch_loss_sum: float = 0.0  # this rank's loss sum and sample count in the epoch in progress
    epoch_loss_count: int = 0
    best_metric: float | None = None  # best value of the task's primary metric
    best_epoch: int = -1
    corrupt_samples: int = 0


def train_epoch(run: Run, should_stop: Callable[[], bool], on_step: Callable[[], None]) -> dict[str, Any]:
    """Train until the loader (or ``max_steps``, or ``should_stop()``) ends; updates ``run.state`` in place.

    The lr follows the scheduler in fractional epochs, so its curve does not depend on the world size.
    Returns ``completed`` and the epoch's mean loss, last lr, data and compute time, throughput (this rank's).
    """
    cfg, state, device, loader = run.cfg, run.state, run.dist.device, run.train_loader
    run.train_model.train()
    accum = cfg.accum_steps
    samples_per_update = cfg.global_batch(run.dist.world_size)
    done_before = state.epoch_samples // samples_per_update  # updates of this epoch before a resume
    batches = len(loader)
    full_updates = max(1, (math.ceil(loader.sampler.n / run.dist.world_size) // cfg.batch_size) // accum)
    if cfg.limit_train_batches:
        batches = min(batches, max(0, cfg.limit_train_batches - done_before * accum))
        full_updates = max(1, min(full_updates, cfg.limit_train_batches // accum))
    updates = batches // accum
    data_time = compute_time = 0.0
    seen = 0
    bar = Progress(updates, f"epoch {state.epoch + 1}/{cfg.epochs}", enabled=run.progress and run.dist.is_main)
    batches_iter = iter(loader)
    lr = run.optimizer.param_groups[0]["lr"]
    completed = True
    for u in range(updates):
        if should_stop() or (cfg.max_steps and state.step >= cfg.max_steps):
            completed = False
            break
        run.scheduler.step(state.epoch + (done_before + u) / full_updates)
        run.optimizer.zero_grad(set_to_none=True)
        times = _accumulate_gradients(run, batches_iter, should_stop)
        if times is None:  # a data worker killed by Ctrl-C: stop cleanly at the last whole step
            completed = False
            break
        t2 = time.perf_counter()
        _optimizer_step(run)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        data_time += times[0]
        compute_time += times[1] + time.perf_counter() - t2
        seen += times[2]
        state.step += 1
        state.epoch_samples += samples_per_update
        lr = run.optimizer.param_groups[0]["lr"]
        bar.update(1)
        bar.set_postfix(loss=f"{state.epoch_loss_sum / max(state.epoch_loss_count, 1):.4f}", lr=f"{lr:.2e}")
        on_step()
    bar.close()
    total = data_time + compute_time
    return {"completed": completed, "train_loss": state.epoch_loss_sum / max(state.epoch_loss_count, 1), "lr": lr,
            "data_time": data_time, "compute_time": compute_time, "train_samples": seen,
            "train_images_per_s": seen / total if total > 0 else 0.0}


def _accumulate_gradients(run: Run, batches: Iterator, should_stop: Callable[[], bool]
                          ) -> tuple[float, float, int] | None:
    """Forward and backward ``accum_steps`` micro-batches; returns (data time, compute time, samples), or None
    when the loader broke because the run is stopping."""
    cfg, state, device = run.cfg, run.state, run.dist.device
    data_time = compute_time = 0.0
    seen = 0
    for micro in range(cfg.accum_steps):
        t0 = time.perf_counter()
        try:
            inputs, targets = next(batches)
        except RuntimeError:
            if should_stop():
                return None
            raise
        inputs, targets, n_bad = drop_corrupt(inputs, targets)
        state.corrupt_samples += n_bad
        inputs, targets = to_device(inputs, device, cfg.channels_last), to_device(targets, device)
        t1 = time.perf_counter()
        data_time += t1 - t0
        if run.batch_transform is not None and batch_size_of(inputs) % 2:  # mixup pairs samples
            inputs, targets = inputs[:-1], targets[:-1]
        n = batch_size_of(inputs)
        if n == 0:
            continue
        if run.batch_transform is not None:
            inputs, targets = run.batch_transform(inputs, targets)
        sync = micro == cfg.accum_steps - 1 or not hasattr(run.train_model, "no_sync")
        with contextlib.nullcontext() if sync else run.train_model.no_sync(), autocast(device, cfg.amp):
            loss = run.criterion(run.train_model, inputs, targets)
        value = loss.item()
        if run.scaler is None and not math.isfinite(value):  # (fp16: the grad scaler skips such steps)
            raise FloatingPointError(f"loss is {value} at step {state.step}; lower the lr or use bf16")
        (loss / cfg.accum_steps if run.scaler is None else run.scaler.scale(loss / cfg.accum_steps)).backward()
        state.epoch_loss_sum += value * n
        state.epoch_loss_count += n
        seen += n
        compute_time += time.perf_counter() - t1
    return data_time, compute_time, seen


def _optimizer_step(run: Run) -> None:
    params = run.train_model.parameters()
    if run.scaler is not None:
        if run.cfg.clip_grad:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(params, run.cfg.clip_grad)
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        if run.cfg.clip_grad:
            nn.utils.clip_grad_norm_(params, run.cfg.clip_grad)
        run.optimizer.step()
    if run.ema is not None:
        run.ema.update(unwrap_model(run.train_model))


def eval_batches(model: nn.Module, loader: Any, ctx: EvalContext, counts: dict[str, int] | None = None
                 ) -> Iterator[tuple[Any, Any, Any]]:
    """``(outputs, inputs, targets)`` of ``model`` (eval mode, no grad, autocast as ``ctx.amp``) over ``loader``,
    at most ``ctx.limit_batches`` batches, unreadable samples dropped (counted in ``counts['corrupt']``)."""
    model.eval()
    bar = Progress(len(loader) if ctx.limit_batches is None else min(len(loader), ctx.limit_batches), "eval",
                   enabled=ctx.progress)
    with torch.no_grad():
        for i, (inputs, targets) in enumerate(loader):
            if ctx.limit_batches and i >= ctx.limit_batches:
                break
            inputs, targets, n_bad = drop_corrupt(inputs, targets)
            if counts is not None:
                counts["corrupt"] = counts.get("corrupt", 0) + n_bad
            bar.update(1)
            if batch_size_of(inputs) == 0:
                continue
            inputs = to_device(inputs, ctx.device, ctx.channels_last)
            with autocast(ctx.device, ctx.amp):
                outputs = model(inputs)
            yield outputs, inputs, to_device(targets, ctx.device)
    bar.close()
