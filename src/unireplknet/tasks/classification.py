"""Image classification: building the model (new or fine-tuned), the losses, and the checkpoint meta."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from unireplknet.errors import UserError
from unireplknet.tasks.base import Task, TaskData

log = logging.getLogger(__name__)

TASK = "classification"


def model_kwargs(cfg: Any, num_classes: int) -> dict[str, Any]:
    """Constructor kwargs that rebuild the architecture (what goes into ``meta['model_kwargs']``)."""
    kwargs: dict[str, Any] = dict(cfg.arch or {})
    kwargs.update(num_classes=num_classes, in_chans=cfg.in_chans)
    return kwargs


def model_label(cfg: Any) -> str:
    """A short human-readable name: the registered name, or the custom architecture's depths and dims."""
    if cfg.model:
        return cfg.model
    arch = cfg.arch or {}
    depths = "-".join(str(d) for d in arch.get("depths", ()))
    dims = "-".join(str(d) for d in arch.get("dims", ()))
    return f"UniRepLKNet(depths {depths}, dims {dims})"


def build_model(cfg: Any, num_classes: int) -> nn.Module:
    """The training-form model for ``cfg``: a registered variant or ``UniRepLKNet(**cfg.arch)``,
    optionally from official pretrained weights or a ``cfg.finetune`` checkpoint (new head if the
    class count differs)."""
    import unireplknet
    from unireplknet.models.unireplknet import UniRepLKNet

    kwargs = model_kwargs(cfg, num_classes)
    train_kwargs = dict(drop_path_rate=cfg.drop_path, layer_scale_init_value=cfg.layer_scale_init_value,
                        head_init_scale=cfg.head_init_scale)
    if cfg.model is None:
        try:
            model = UniRepLKNet(**kwargs, **train_kwargs)
        except (TypeError, ValueError) as err:
            raise UserError(f"bad model arch in the config: {err}") from None
    else:
        if cfg.pretrained:
            # pretrained weights come with their own head; swap it for ours afterwards
            model = unireplknet.create_model(cfg.model, pretrained=True, **train_kwargs,
                                             **{k: v for k, v in kwargs.items() if k != "num_classes"})
            if model.num_classes != num_classes:
                log.info("new %d-class head on pretrained %s", num_classes, cfg.model)
                model.reset_classifier(num_classes)
        else:
            model = unireplknet.create_model(cfg.model, **kwargs, **train_kwargs)
    if cfg.finetune:
        load_finetune(model, cfg.finetune)
    return model


def load_finetune(model: nn.Module, path: str) -> None:
    """Load a checkpoint's weights for fine-tuning: everything must fit except the classifier, which is
    kept fresh when its shape differs (another class count)."""
    from unireplknet.engine.checkpoint import load_run_checkpoint
    from unireplknet.models.checkpoint import extract_state_dict, load_checkpoint

    state = extract_state_dict(load_run_checkpoint(path))
    own = model.state_dict()
    head = [k for k in state if k.startswith("head.") and k in own and state[k].shape != own[k].shape]
    if head:
        log.info("fine-tuning from %s with a new head (%s)", path, ", ".join(head))
        for k in head:
            state[k] = own[k]
    load_checkpoint(model, {"model": state}, strict=True)


def build_meta(cfg: Any, class_names: list[str], deploy: bool = False) -> dict[str, Any]:
    """The ``meta`` dict of the run-checkpoint contract."""
    return {
        "model": cfg.model,
        "model_kwargs": model_kwargs(cfg, len(class_names)),
        "deploy": deploy,
        "task": TASK,
        "class_names": list(class_names),
        "input_size": [cfg.in_chans, cfg.img_size, cfg.img_size],
        "mean": list(cfg.mean),
        "std": list(cfg.std),
    }


def build_losses(cfg: Any, mixup_active: bool) -> tuple[nn.Module, nn.Module]:
    """(train loss, eval loss): soft-target CE under mixup (smoothing is in the targets), label-smoothing
    CE otherwise, plain CE for evaluation."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup_active:
        train_loss: nn.Module = SoftTargetCrossEntropy()
    elif cfg.smoothing > 0:
        train_loss = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    else:
        train_loss = nn.CrossEntropyLoss()
    return train_loss, nn.CrossEntropyLoss()


@torch.no_grad()
def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k (capped at the class count)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(target[:, None])
    return [int(hit[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


class ClassificationTask(Task):
    """Images (the default task): ImageFolder or embedded digits, a bare UniRepLKNet, top-1/top-5
    accuracy. Evaluates on ``val`` (no separate test split); run folder as in docs/training.md."""

    name = TASK
    primary_metric = "val_acc1"
    mode = "max"
    default_config = "digits"

    def build_data(self, cfg: Any) -> TaskData:
        from unireplknet.data.loader import build_datasets

        train, val, class_names = build_datasets(cfg)
        return TaskData(train=train, val=val, test=None, info={"class_names": list(class_names)})

    def check_resume(self, meta: dict[str, Any], data: TaskData, path: Any, cfg: Any) -> None:
        super().check_resume(meta, data, path, cfg)
        old_classes = list(meta.get("class_names", []))
        names = data.info["class_names"]
        if old_classes != list(names):
            raise UserError(f"'{path}' was trained on {len(old_classes)} classes, the data has "
                            f"{len(names)} ({cfg.data}); resume with the same data or start a new run")

    def build_model(self, cfg: Any, data: TaskData) -> nn.Module:
        return build_model(cfg, len(data.info["class_names"]))

    def build_losses(self, cfg: Any, data: TaskData, mixup_active: bool) -> tuple[nn.Module, nn.Module]:
        return build_losses(cfg, mixup_active)

    def build_batch_transform(self, cfg: Any, data: TaskData) -> Any:
        from unireplknet.data.loader import build_mixup

        return build_mixup(cfg, len(data.info["class_names"]))

    def build_meta(self, cfg: Any, data: TaskData, deploy: bool = False) -> dict[str, Any]:
        return build_meta(cfg, data.info["class_names"], deploy)

    def evaluate(self, model: nn.Module, loader: Any, *, device: torch.device, amp: str = "none",
                 channels_last: bool = False, limit_batches: int | None = None) -> dict[str, Any]:
        from unireplknet.engine.loops import evaluate

        return evaluate(model, loader, device=device, amp=amp, channels_last=channels_last,
                        limit_batches=limit_batches)

    def epoch_line(self, row: dict[str, Any]) -> str:
        return f"val_acc1 {row['val_acc1']:.2f}%  val_loss {row['val_loss']:.4f}"

    def finalize(self, *, cfg: Any, model: nn.Module, meta: dict[str, Any], data: TaskData, run_dir: Any,
                 state: Any, device: torch.device, t_start: float, progress: bool,
                 world_size: int = 1) -> dict[str, Any]:
        from unireplknet.engine.finalize import finalize

        return finalize(cfg=cfg, model=model, meta=meta, val_set=data.val,
                        class_names=data.info["class_names"], run_dir=run_dir, state=state, device=device,
                        t_start=t_start, progress=progress,
                        world_size=world_size)

    def print_summary(self, summary: dict[str, Any]) -> None:
        lines = [
            "",
            f"Training finished: {summary['model']} on {summary['data']}, {summary['epochs']} epochs, "
            f"{summary['steps']} steps, {summary['wall_time_s']:.0f} s",
            f"  held-out top-1 {summary['val_acc1']:.2f}%  top-5 {summary['val_acc5']:.2f}%  "
            f"loss {summary['val_loss']:.4f}  ({summary['val_samples']} images)",
            f"  deploy form: same labels {summary['deploy_same_labels']} (max |logit diff| "
            f"{summary['deploy_max_abs_diff']:.2e})",
        ]
        if "onnx_max_abs_diff" in summary:
            lines.append(f"  ONNX: max |onnxruntime - PyTorch| {summary['onnx_max_abs_diff']:.2e}")
        if summary.get("corrupt_images"):
            lines.append(f"  skipped {summary['corrupt_images']} unreadable images")
        lines.append(f"  run folder: {summary['paths']['run_dir']}  (summary.json, report/report.md)")
        print("\n".join(lines))
