"""Image classification: building the model (new or fine-tuned), the losses, and the checkpoint meta."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from unireplknet.errors import UserError

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
