"""A training run, start to finish, for any task: claim the run folder → build (data, model, optimizer, schedule,
EMA, AMP, DDP; resume state read once) → fit (epochs, validation, checkpoints, Ctrl-C) → finalize.

Under ``torchrun`` every rank calls :func:`train`; rank 0 writes the run folder and returns the summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from unireplknet.data.loader import build_loader
from unireplknet.engine import distributed as D
from unireplknet.engine.checkpoint import get_rng_state, model_state_dict, set_rng_state, unwrap_model
from unireplknet.engine.config import TrainConfig, make_config
from unireplknet.engine.finalize import finalize
from unireplknet.engine.loops import TrainState, train_epoch
from unireplknet.engine.metrics import MetricsRecorder
from unireplknet.engine.run_folder import RunFolder
from unireplknet.engine.task import Criterion, EvalContext, Task, TaskData
from unireplknet.errors import UserError
from unireplknet.models import load_checkpoint
from unireplknet.utils.atomic import atomic_save, atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything a run holds; built once by :func:`_build`."""

    task: Task
    cfg: TrainConfig
    args: Any
    dist: D.DistInfo
    progress: bool
    data: TaskData
    meta: dict[str, Any]
    model: nn.Module  # the bare model (checkpoints, evaluation)
    train_model: nn.Module  # the same under torch.compile / DDP wrappers
    criterion: Criterion
    batch_transform: Any
    train_loader: DataLoader
    val_loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    ema: Any
    state: TrainState = field(default_factory=TrainState)
    rng: list[Any] = field(default_factory=list)  # every rank's RNG state at the last checkpoint
    t_start: float = field(default_factory=time.time)


def config_from_checkpoint(ckpt: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config a run checkpoint was trained with, ``overrides`` on top (to continue it)."""
    if "config" not in ckpt or "meta" not in ckpt:
        raise UserError("that checkpoint is not a training checkpoint of this tool (no config/meta); start from "
                        "its weights with finetune instead")
    return make_config(ckpt["config"], overrides)


def train(task: Task, cfg: TrainConfig, resume: dict[str, Any] | None = None, overwrite: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train ``task`` as ``cfg`` says, continuing the run checkpoint ``resume`` (a dict, read once) when given;
    returns the summary (rank 0; ``{}`` on the other ranks). Ctrl-C / SIGTERM save a resumable checkpoint and raise
    ``KeyboardInterrupt``."""
    if resume is not None and overwrite:
        raise UserError("resume continues the run in the output folder and overwrite replaces it: choose one")
    args = task.parse_args(cfg.task_args)
    dist = D.init_distributed(cfg.device)
    folder = RunFolder(cfg.output, dist.is_main)
    cfg.output = str(folder.path)
    failed = True
    try:
        folder.open(resume=resume is not None, overwrite=overwrite)
        run = _build(task, cfg, args, dist, resume, progress)
        _fit(run, folder)
        D.barrier()
        summary = finalize(run, folder) if dist.is_main else {}
        failed = False
        return summary
    finally:
        folder.close(failed)
        D.cleanup_distributed()


def _build(task: Task, cfg: TrainConfig, args: Any, dist: D.DistInfo, resume: dict[str, Any] | None,
           progress: bool) -> Run:
    if cfg.threads and dist.device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    for seed_fn in (torch.manual_seed, random.seed, np.random.seed):
        seed_fn(cfg.seed + dist.rank)
    data = task.build_data(cfg, args)
    per_process = len(data.train) // dist.world_size
    if cfg.batch_size * cfg.accum_steps > per_process:
        raise UserError(f"batch size {cfg.batch_size} x accum {cfg.accum_steps} is larger than the {per_process} "
                        "training samples per process; lower the batch size")
    meta = {**task.model_meta(cfg, args, data), "task": task.name, "deploy": False, "data": cfg.data,
            "task_args": asdict(args)}
    if resume is not None:
        old_task = resume["meta"].get("task", "classification")
        if old_task != task.name:
            raise UserError(f"that checkpoint is a {old_task} run, not {task.name}; resume with the same task")
        mismatch = task.resume_mismatch(resume["meta"], data)
        if mismatch:
            raise UserError(f"cannot resume that checkpoint: {mismatch}; resume with the same data or start a new "
                            "run")
    model_cfg = cfg if resume is None else dataclasses.replace(cfg, pretrained=False, finetune=None)
    model = task.build_model(model_cfg, args, data)  # (a resumed run's weights come from the checkpoint)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if dist.distributed and cfg.sync_bn and dist.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif dist.distributed and cfg.sync_bn and dist.is_main:
        log.info("SyncBatchNorm needs GPUs: on CPU each process keeps its own BatchNorm statistics")
    model.to(dist.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.lr is None:
        cfg.lr = cfg.lr_base * cfg.global_batch(dist.world_size) / cfg.lr_base_size
        log.info("lr %.3g = %.3g x global batch %d / %d", cfg.lr, cfg.lr_base, cfg.global_batch(dist.world_size),
                 cfg.lr_base_size)
    optimizer, scheduler = _optimizer_and_schedule(model, cfg)
    scaler = torch.amp.GradScaler(dist.device.type) if cfg.amp == "fp16" else None
    ema = None
    if cfg.model_ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.model_ema_decay)
    train_model: nn.Module = torch.compile(model) if cfg.compile else model
    if dist.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[dist.device] if dist.device.type == "cuda" else None)
    loaders = [build_loader(ds, cfg, rank=dist.rank, world_size=dist.world_size, train=split == "train",
                            device=dist.device, collate=data.collate) for split, ds in (("train", data.train),
                                                                                        ("val", data.val))]
    run = Run(task=task, cfg=cfg, args=args, dist=dist, progress=progress, data=data, meta=meta, model=model,
              train_model=train_model, criterion=task.criterion(cfg, args, data),
              batch_transform=task.batch_transform(cfg, args, data), train_loader=loaders[0],
              val_loader=loaders[1], optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema)
    if resume is not None:
        _restore(run, resume)
    if dist.is_main:
        log.info("task %s, model %s: %.2fM params, %d train / %d val samples, global batch %d, %s", task.name,
                 task.model_label(cfg), sum(p.numel() for p in model.parameters()) / 1e6, len(data.train),
                 len(data.val), cfg.global_batch(dist.world_size),
                 f"{dist.world_size} processes" if dist.distributed else dist.device)
    return run


def _optimizer_and_schedule(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """timm's optimizer (weight-decay exclusions and layer-wise lr decay from the model's ``no_weight_decay`` and
    ``group_matcher``) and schedule (cosine, poly or step, after a linear warm-up), stepped in fractional epochs."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler, PolyLRScheduler

    optimizer = create_optimizer_v2(model, cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    layer_decay=cfg.layer_decay)
    warmup = dict(warmup_t=min(cfg.warmup_epochs, cfg.epochs - 1e-6), warmup_lr_init=cfg.warmup_lr, t_in_epochs=True)
    if cfg.sched == "step":  # milestones in absolute epochs (timm compares them with t + 1)
        return optimizer, MultiStepLRScheduler(optimizer, decay_t=[e + 1 for e in cfg.decay_epochs],
                                               decay_rate=cfg.decay_rate, warmup_prefix=False, **warmup)
    if cfg.sched == "poly":  # over the whole run, the warm-up ramping up to it
        return optimizer, PolyLRScheduler(optimizer, t_initial=cfg.epochs, power=cfg.poly_power, lr_min=cfg.min_lr,
                                          warmup_prefix=False, **warmup)
    t_initial = max(cfg.epochs - warmup["warmup_t"], 1e-6)
    return optimizer, CosineLRScheduler(optimizer, t_initial=t_initial, lr_min=cfg.min_lr, warmup_prefix=True,
                                        **warmup)


def _checkpoint(run: Run, model: nn.Module | None = None) -> dict[str, Any]:
    """Everything needed to resume, with ``model`` (default: the run's) in the official layout."""
    return {"model": model_state_dict(model or run.model), "meta": run.meta,
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "ema": model_state_dict(run.ema.module) if run.ema is not None else None,
            "scaler": run.scaler.state_dict() if run.scaler is not None else None,
            **asdict(run.state), "rng": run.rng, "config": run.cfg.to_dict()}


def _restore(run: Run, ckpt: dict[str, Any]) -> None:
    load_checkpoint(unwrap_model(run.model), {"model": ckpt["model"]}, strict=True)
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as err:
        raise UserError(f"cannot restore the optimizer ({err}); resume with the same settings (model, opt, "
                        "layer_decay)") from None
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if run.ema is not None and ckpt.get("ema") is not None:
        run.ema.module.load_state_dict(ckpt["ema"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    fields = {k: ckpt[k] for k in asdict(TrainState()) if k in ckpt}
    fields.setdefault("corrupt_samples", ckpt.get("corrupt_images", 0))  # (checkpoints before the one spelling)
    run.state = TrainState(**fields)
    rng = ckpt.get("rng") or []
    if len(rng) == run.dist.world_size:  # same world size: continue each rank's random streams exactly
        set_rng_state(rng[run.dist.rank])
    else:  # another world size: fresh but deterministic streams
        torch.manual_seed(run.cfg.seed + 1000 * run.dist.rank + run.state.step)
    log.info("resumed at epoch %d, step %d (%d samples into the epoch)", run.state.epoch, run.state.step,
             run.state.epoch_samples)


class _StopFlag:
    """Turns SIGINT/SIGTERM into a request to stop after the current step (a second Ctrl-C aborts)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _fit(run: Run, folder: RunFolder) -> None:
    """Epochs until ``epochs`` or ``max_steps``: train, validate, record, checkpoint (best.pt before last.pt)."""
    cfg, state, dist, task = run.cfg, run.state, run.dist, run.task
    recorder = MetricsRecorder(folder.path, cfg.epochs, task.primary_metric, cfg.tensorboard) if dist.is_main \
        else None
    if recorder is not None:
        atomic_write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", folder.file("config.json"))
        recorder.trim(state.epoch)
    resumed_at = state.step if state.epoch_samples else None
    ctx = EvalContext(device=dist.device, amp=cfg.amp, channels_last=cfg.channels_last,
                      limit_batches=cfg.limit_val_batches)

    def save(name: str, model: nn.Module | None = None, **extra: Any) -> None:
        if dist.is_main:
            atomic_save({**_checkpoint(run, model), **extra}, folder.file(name))

    with _StopFlag() as stop:

        def should_stop() -> bool:  # every rank stops at the same step
            return D.all_reduce_sum([float(stop.requested)], dist.device)[0] > 0 if dist.distributed \
                else stop.requested

        def on_step() -> None:
            if cfg.save_interval_steps and state.step % cfg.save_interval_steps == 0:
                run.rng = D.all_gather_object(get_rng_state())
                save("last.pt")

        try:
            while state.epoch < cfg.epochs and not (cfg.max_steps and state.step >= cfg.max_steps):
                run.train_loader.sampler.set_epoch(state.epoch, state.epoch_samples)
                stats = train_epoch(run, should_stop, on_step)
                if should_stop():
                    raise KeyboardInterrupt
                row, best_model = _validate(run, stats.pop("completed"), stats, ctx)
                if resumed_at is not None:
                    row["resumed_at_step"], resumed_at = resumed_at, None
                run.rng = D.all_gather_object(get_rng_state())
                if recorder is not None:
                    recorder.record(row)
                if best_model is not None:  # (before last.pt: a kill in between redoes this epoch)
                    save("best.pt", best_model, best_source="ema" if best_model is not run.model else "model")
                save("last.pt")
                D.barrier()
        except KeyboardInterrupt:
            run.rng = D.all_gather_object(get_rng_state())
            save("last.pt")
            if dist.is_main:
                summary = {"status": "interrupted", "epoch": state.epoch, "step": state.step,
                           "resume": f"unireplknet train --output {folder.path} --resume",
                           "paths": {"last": str(folder.file("last.pt")), "config": str(folder.file("config.json"))}}
                atomic_write_text(json.dumps(summary, indent=2) + "\n", folder.file("summary.json"))
                log.warning("stopped at epoch %d step %d; resumable checkpoint saved to %s", state.epoch, state.step,
                            folder.file("last.pt"))
            raise
        finally:
            if recorder is not None:
                recorder.close()


def _validate(run: Run, epoch_done: bool, stats: dict[str, Any], ctx: EvalContext
              ) -> tuple[dict[str, Any], nn.Module | None]:
    """Evaluate the model (and its EMA), close the epoch; returns the metrics row and the model to save as
    best.pt when the primary metric improved."""
    task, state = run.task, run.state
    key = task.primary_metric
    val = task.evaluate(run.model, run.val_loader, ctx)
    row = {"epoch": state.epoch + 1, "step": state.step, **stats, **{f"val_{k}": v for k, v in val.items()}}
    score, source = val[key], run.model
    if run.ema is not None:
        val_ema = task.evaluate(run.ema.module, run.val_loader, ctx)
        row[f"val_{key}_ema"] = val_ema[key]
        if _better(task, val_ema[key], score):
            score, source = val_ema[key], run.ema.module
    row["corrupt_samples"] = state.corrupt_samples
    if epoch_done:
        state.epoch += 1
        state.epoch_samples = 0
        state.epoch_loss_sum, state.epoch_loss_count = 0.0, 0
    if not _better(task, score, state.best_metric):
        return row, None
    state.best_metric, state.best_epoch = score, state.epoch
    return row, source


def _better(task: Task, value: float, best: float | None) -> bool:
    """Whether ``value`` of the primary metric beats ``best`` (None: nothing yet; NaN never wins)."""
    if best is None or best != best:
        return value == value
    return value > best if task.mode == "max" else value < best
