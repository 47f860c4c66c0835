"""The training run, start to finish: data, model, optimizer, schedule, EMA, AMP, DDP, checkpoints,
resume, then the final evaluation, re-parameterization check, ONNX export and report.

Run folder (written by rank 0)::

    config.json  metrics.jsonl  train.log  last.pt  best.pt  deploy.pt  model.onnx
    report/{loss,accuracy,confusion_matrix}.png report/report.md  summary.json
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unireplknet.engine import distributed as D
from unireplknet.engine.checkpoint import (
    atomic_save,
    atomic_write_text,
    get_rng_state,
    load_run_checkpoint,
    model_state_dict,
    set_rng_state,
    unwrap_model,
)
from unireplknet.engine.config import TrainConfig, make_config
from unireplknet.engine.loops import TrainState, train_one_epoch
from unireplknet.errors import UserError
from unireplknet.tasks import Task, get_task

log = logging.getLogger(__name__)


def resolve_resume(output: str | os.PathLike | None, resume: str | None) -> Path | None:
    """``--resume`` (``auto``: ``<output>/last.pt``) or a path -> the checkpoint file to resume from."""
    if not resume:
        return None
    if resume == "auto":
        if output is None:
            raise UserError("--resume needs --output DIR (the run folder to continue) or a checkpoint path")
        path = Path(output) / "last.pt"
    else:
        path = Path(resume)
        if path.is_dir():
            path = path / "last.pt"
    if not path.is_file():
        raise UserError(f"nothing to resume: '{path}' does not exist; start a new run without --resume")
    return path


def config_for_resume(path: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The config stored in a run checkpoint, with the flags given now on top."""
    ckpt = load_run_checkpoint(path)
    if "config" not in ckpt or "meta" not in ckpt:
        raise UserError(f"'{path}' is not a training checkpoint of this tool (no config/meta); use "
                        "--finetune to start from model weights")
    return make_config(ckpt["config"], overrides)


class _StopFlag:
    """Turns SIGINT/SIGTERM into a request to stop after the current step (a second Ctrl-C aborts)."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _setup_logging(run_dir: Path, is_main: bool) -> logging.Handler | None:
    if not is_main:
        return None
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("unireplknet")
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


RUN_FILES = ("config.json", "metrics.jsonl", "train.log", "last.pt", "best.pt", "deploy.pt", "model.onnx",
             "summary.json", "report/loss.png", "report/accuracy.png", "report/confusion_matrix.png",
             "report/report.md")


def train(cfg: TrainConfig, resume: Path | None = None, progress: bool = True,
          overwrite: bool = False) -> dict[str, Any]:
    """Run training as configured (resuming from ``resume`` if given); returns the summary dict.

    Under torchrun every rank calls this; rank 0 writes the run folder and returns the full summary.
    Raises ``KeyboardInterrupt`` after saving a resumable checkpoint when stopped by Ctrl-C/SIGTERM.
    """
    dist = D.init_distributed(cfg.device)
    try:
        return _train(cfg, resume, dist, progress, overwrite)
    finally:
        D.cleanup_distributed()


def _train(cfg: TrainConfig, resume: Path | None, dist: D.DistInfo, progress: bool,
           overwrite: bool = False) -> dict[str, Any]:
    t_start = time.time()
    device = dist.device
    if cfg.output is None:
        cfg.output = D.broadcast_object(time.strftime("runs/train-%Y%m%d-%H%M%S"))
    run_dir = Path(cfg.output)
    if resume is None and not overwrite and (run_dir / "last.pt").exists():  # every rank stops together
        raise UserError(f"'{run_dir}' already holds a run (last.pt); add --resume to continue it, "
                        "--overwrite to replace it, or choose another --output")
    D.barrier()
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume is None and overwrite:
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
        for stale in run_dir.glob(".*.tmp"):  # left by a write that was killed
            stale.unlink(missing_ok=True)
    D.barrier()
    handler = _setup_logging(run_dir, dist.is_main)
    try:
        return _run(cfg, resume, dist, device, run_dir, t_start, progress)
    finally:
        if handler is not None:
            logging.getLogger("unireplknet").removeHandler(handler)
            handler.close()


def _run(cfg: TrainConfig, resume: Path | None, dist: D.DistInfo, device: torch.device, run_dir: Path,
         t_start: float, progress: bool) -> dict[str, Any]:
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    from unireplknet.data.loader import build_loader

    task = get_task(cfg.task)
    if cfg.amp == "bf16" and device.type == "cpu" and cfg.img_size < 32:
        log.warning("bf16 on CPU with images under 32 px: PyTorch's bf16 conv weight gradient can be NaN "
                    "for the last (stride-2, 1x1-input) downsampling conv; use --img-size 32 or more, "
                    "or --amp none")
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + dist.rank)
    random.seed(cfg.seed + dist.rank)
    np.random.seed(cfg.seed + dist.rank)

    # ---- data ----
    data = task.build_data(cfg)
    train_set, val_set = data.train, data.val
    if cfg.batch_size * cfg.accum_steps > len(train_set) // dist.world_size:
        what = "images" if task.name == "classification" else "samples"
        raise UserError(f"batch size {cfg.batch_size} x accum {cfg.accum_steps} is larger than the "
                        f"{len(train_set) // dist.world_size} training {what} per process; "
                        "lower --batch-size")
    train_loader, train_sampler = build_loader(train_set, cfg, rank=dist.rank, world_size=dist.world_size,
                                               train=True, device=device)
    val_loader, _ = build_loader(val_set, cfg, rank=dist.rank, world_size=dist.world_size, train=False,
                                 device=device)
    mixup = task.build_batch_transform(cfg, data)
    train_loss_fn, _ = task.build_losses(cfg, data, mixup is not None)

    # ---- model ----
    ckpt = load_run_checkpoint(resume) if resume is not None else None
    if ckpt is not None:
        task.check_resume(ckpt["meta"], data, resume, cfg)
        cfg_model = copy.copy(cfg)
        cfg_model.pretrained, cfg_model.finetune = False, None  # the checkpoint has the weights
        model = task.build_model(cfg_model, data)
    else:
        model = task.build_model(cfg, data)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if dist.distributed and cfg.sync_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif dist.is_main:
            log.info("SyncBatchNorm needs GPUs: on CPU each process keeps its own BatchNorm statistics")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    global_batch = cfg.global_batch(dist.world_size)
    if cfg.lr is None:
        cfg.lr = cfg.lr_base * global_batch / cfg.lr_base_size
        log.info("lr %.3g = %.3g x global batch %d / %d", cfg.lr, cfg.lr_base, global_batch, cfg.lr_base_size)
    optimizer = create_optimizer_v2(model, cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    layer_decay=cfg.layer_decay)
    warmup = min(cfg.warmup_epochs, cfg.epochs - 1e-6)
    scheduler = CosineLRScheduler(optimizer, t_initial=max(cfg.epochs - warmup, 1e-6), lr_min=cfg.min_lr,
                                  warmup_t=warmup, warmup_lr_init=cfg.warmup_lr, warmup_prefix=True,
                                  t_in_epochs=True)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    ema = None
    if cfg.model_ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.model_ema_decay)

    state = TrainState()
    if ckpt is not None:
        _restore(ckpt, model, optimizer, scheduler, ema, scaler, state, dist, resume, cfg.seed)
    train_model: nn.Module = torch.compile(model) if cfg.compile else model
    if dist.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device] if device.type == "cuda" else None)

    meta = task.build_meta(cfg, data)
    if dist.is_main:
        atomic_write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", run_dir / "config.json")
        _trim_metrics(run_dir / "metrics.jsonl", state.epoch)
        n_params = sum(p.numel() for p in model.parameters())
        log.info("task %s, model %s: %.2fM params, %d train / %d val samples, global batch %d, %s",
                 task.name, task.model_label(cfg), n_params / 1e6, len(train_set), len(val_set),
                 global_batch, f"{dist.world_size} processes" if dist.distributed else device)

    def save(name: str = "last.pt") -> None:
        if not dist.is_main:
            return
        ckpt = _checkpoint(model, meta, optimizer, scheduler, ema, scaler, state, cfg, rng)
        atomic_save(ckpt, run_dir / name)

    rng: list[Any] = []
    stopped = False
    with _StopFlag() as stop:

        def should_stop() -> bool:
            flag = stop.requested
            if dist.distributed:  # every rank must stop at the same step
                flag = D.all_reduce_sum([float(flag)], device)[0] > 0
            return flag

        def on_step() -> None:
            nonlocal rng
            if cfg.save_interval_steps and state.step % cfg.save_interval_steps == 0:
                rng = D.all_gather_object(get_rng_state())
                save()

        while state.epoch < cfg.epochs and not (cfg.max_steps and state.step >= cfg.max_steps):
            train_sampler.set_epoch(state.epoch, state.epoch_samples)
            stats = train_one_epoch(model=train_model, loader=train_loader, optimizer=optimizer,
                                    scheduler=scheduler, loss_fn=train_loss_fn, state=state, cfg=cfg,
                                    device=device, world_size=dist.world_size, mixup=mixup, ema=ema,
                                    scaler=scaler, should_stop=should_stop, on_step=on_step,
                                    progress=progress and dist.is_main)
            if should_stop():
                stopped = True
                break
            epoch_done = stats.pop("completed")
            val = task.evaluate(model, val_loader, device=device, amp=cfg.amp,
                                channels_last=cfg.channels_last, limit_batches=cfg.limit_val_batches)
            row: dict[str, Any] = {"epoch": state.epoch + 1, "step": state.step, **stats,
                                   **{k: v for k, v in val.items() if k.startswith("val_")}}
            source_model: nn.Module = model
            key = task.primary_metric
            score = val[key]
            if ema is not None:
                val_ema = task.evaluate(ema.module, val_loader, device=device, amp=cfg.amp,
                                        channels_last=cfg.channels_last, limit_batches=cfg.limit_val_batches)
                row[f"{key}_ema"] = val_ema[key]
                if task.is_better(val_ema[key], score):
                    score, source_model = val_ema[key], ema.module
            row["corrupt_images"] = state.corrupt_images
            if epoch_done:
                state.epoch += 1
                state.epoch_samples = 0
            rng = D.all_gather_object(get_rng_state())
            is_best = task.is_better(score, state.best_metric)
            if is_best:
                state.best_metric, state.best_epoch = score, state.epoch
            if dist.is_main:
                _log_epoch(row, cfg, task)
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                if is_best:  # (before last.pt: a kill in between redoes this epoch, which rewrites best.pt)
                    best = _checkpoint(model, meta, optimizer, scheduler, ema, scaler, state, cfg, rng)
                    best["model"] = model_state_dict(source_model)
                    best["best_source"] = "ema" if source_model is not model else "model"
                    atomic_save(best, run_dir / "best.pt")
                save("last.pt")
            D.barrier()
        if stopped:
            rng = D.all_gather_object(get_rng_state())
            save("last.pt")
            if dist.is_main:
                summary = {"status": "interrupted", "epoch": state.epoch, "step": state.step,
                           "resume": f"unireplknet train --output {run_dir} --resume",
                           "paths": {"last": str(run_dir / "last.pt"),
                                     "config": str(run_dir / "config.json")}}
                atomic_write_text(json.dumps(summary, indent=2) + "\n", run_dir / "summary.json")
                log.warning("stopped at epoch %d step %d; resumable checkpoint saved to %s",
                            state.epoch, state.step, run_dir / "last.pt")
            D.barrier()
            raise KeyboardInterrupt

    D.barrier()
    if not dist.is_main:
        return {}
    return task.finalize(cfg=cfg, model=model, meta=meta, data=data, run_dir=run_dir, state=state,
                         device=device, t_start=t_start, progress=progress, world_size=dist.world_size)


def _checkpoint(model: nn.Module, meta: dict[str, Any], optimizer: Any, scheduler: Any, ema: Any, scaler: Any,
                state: TrainState, cfg: TrainConfig, rng: list[Any]) -> dict[str, Any]:
    """Everything needed to resume, with the model in the official layout under ``'model'``."""
    return {
        "model": model_state_dict(model),
        "meta": meta,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema": model_state_dict(ema.module) if ema is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": state.epoch,
        "step": state.step,
        "epoch_samples": state.epoch_samples,
        "best_metric": state.best_metric,
        "best_acc1": state.best_metric if cfg.task == "classification" else None,
        "best_epoch": state.best_epoch,
        "corrupt_images": state.corrupt_images,
        "rng": rng,
        "config": cfg.to_dict(),
    }


def _restore(ckpt: dict[str, Any], model: nn.Module, optimizer: Any, scheduler: Any, ema: Any, scaler: Any,
             state: TrainState, dist: D.DistInfo, path: Path | None, seed: int) -> None:
    from unireplknet.models.checkpoint import load_checkpoint

    load_checkpoint(unwrap_model(model), {"model": ckpt["model"]}, strict=True)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as err:
        raise UserError(f"cannot restore the optimizer from '{path}' ({err}); resume with the same settings "
                        "(model, opt, layer_decay)") from None
    scheduler.load_state_dict(ckpt["scheduler"])
    if ema is not None and ckpt.get("ema") is not None:
        ema.module.load_state_dict(ckpt["ema"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    state.epoch, state.step = int(ckpt["epoch"]), int(ckpt["step"])
    state.epoch_samples = int(ckpt.get("epoch_samples", 0))
    if "best_metric" in ckpt:
        best = ckpt["best_metric"]
    else:  # checkpoints from before tasks: best_acc1, with -1 for "none yet"
        best = ckpt.get("best_acc1")
        best = None if best is None or best < 0 else best
    state.best_metric = None if best is None else float(best)
    state.best_epoch = int(ckpt.get("best_epoch", -1))
    state.corrupt_images = int(ckpt.get("corrupt_images", 0))
    rng = ckpt.get("rng") or []
    if len(rng) == dist.world_size:  # same world size: continue each rank's random streams exactly
        set_rng_state(rng[dist.rank])
    else:  # another world size: fresh but deterministic streams
        torch.manual_seed(seed + 1000 * dist.rank + state.step)
    log.info("resumed from %s: epoch %d, step %d (%d samples into the epoch)", path, state.epoch, state.step,
             state.epoch_samples)


def _trim_metrics(path: Path, epochs_done: int) -> None:
    """Drop metric rows of epochs the checkpoint does not include (written after it, before a kill)."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if _epoch_of(line) <= epochs_done]
    if len(kept) != len(rows):
        atomic_write_text("".join(line + "\n" for line in kept), path)


def _epoch_of(line: str) -> float:
    """The epoch of a metrics row; a torn row (killed mid-write) counts as never written."""
    try:
        return json.loads(line)["epoch"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


def _log_epoch(row: dict[str, Any], cfg: TrainConfig, task: Task) -> None:
    total = row["data_time"] + row["compute_time"]
    share = row["data_time"] / total if total > 0 else 0.0
    log.info("epoch %d/%d: train_loss %.4f  %s  lr %.2e  data %.1fs / compute %.1fs (%.0f samples/s)",
             row["epoch"], cfg.epochs, row["train_loss"], task.epoch_line(row), row["lr"], row["data_time"],
             row["compute_time"], row["train_images_per_s"])
    if share > 0.25 and total > 1.0:
        log.warning("the data loader took %.0f%% of the epoch: the model is waiting for data; "
                    "raise --workers (now %d) or make the transforms cheaper", 100 * share, cfg.workers)

