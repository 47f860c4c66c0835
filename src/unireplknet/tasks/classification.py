"""Classification: images (the default task) and :class:`Classifier`, what every classifier shares — the loss
(label smoothing, mixup/CutMix), top-1/top-5 and mean class accuracy, the confusion matrix, checkpoint
evaluation and top-k prediction. The classifiers of other modalities (audio, point clouds, video) subclass it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from unireplknet.data.datasets import IMG_EXTENSIONS
from unireplknet.engine.config import TrainConfig
from unireplknet.engine.distributed import reduce_tensor
from unireplknet.engine.loops import eval_batches
from unireplknet.engine.report import plot_confusion
from unireplknet.engine.task import (
    Criterion,
    EvalContext,
    Request,
    Task,
    TaskData,
    eval_loader,
    outputs_criterion,
)
from unireplknet.errors import UserError
from unireplknet.models import architecture, load_checkpoint
from unireplknet.models.checkpoint import extract_state_dict, read_checkpoint
from unireplknet.tasks import register_task

log = logging.getLogger(__name__)

@torch.no_grad()
def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k (capped at the class count)."""
    maxk = min(max(ks), logits.shape[1])
    hit = logits.topk(maxk, dim=1).indices.eq(target[:, None])
    return [int(hit[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


def mean_class_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the classes present (rows of ``cm[true, predicted]`` with samples), in percent
    (Table 10's mAcc)."""
    present = cm.sum(1) > 0
    return 100.0 * float((cm.diagonal()[present] / cm.sum(1)[present]).mean()) if present.any() else 0.0


def load_finetune(model: nn.Module, path: str) -> None:
    """Load a checkpoint's weights for fine-tuning: everything must fit except the classifier, which stays fresh
    when its shape differs (another class count)."""
    state = extract_state_dict(read_checkpoint(path))
    own = model.state_dict()
    head = [k for k, v in state.items() if k in own and v.shape != own[k].shape and k.split(".")[-2] == "head"]
    if head:
        log.info("fine-tuning from %s with a new head (%s)", path, ", ".join(head))
        state.update({k: own[k] for k in head})
    load_checkpoint(model, {"model": state}, strict=True)


def build_backbone(cfg: TrainConfig, kwargs: Mapping[str, Any]) -> nn.Module:
    """The training-form UniRepLKNet with the run's stochastic depth, layer scale and head init."""
    from unireplknet.models.unireplknet import UniRepLKNet

    try:
        return UniRepLKNet(**kwargs, drop_path_rate=cfg.drop_path, layer_scale_init_value=cfg.layer_scale_init_value,
                           head_init_scale=cfg.head_init_scale)
    except (TypeError, ValueError) as err:
        raise UserError(f"bad model settings (model/arch): {err}") from None


def backbone_kwargs(cfg: TrainConfig, num_classes: int, in_chans: int) -> dict[str, Any]:
    """UniRepLKNet kwargs of ``cfg.model`` (a Table 4 variant) updated by ``cfg.arch``, with the task's head and
    input channels."""
    try:
        kwargs = architecture(cfg.model, cfg.arch)
    except ValueError as err:
        raise UserError(str(err)) from None
    return {**kwargs, "num_classes": num_classes, "in_chans": in_chans}


class Classifier(Task):
    """Shared by every classifier: a batch is ``(inputs, labels)``, the model returns logits ``(N, classes)``.

    Subclasses give ``build_data`` (with ``info['class_names']``), ``build_model``, ``model_meta`` and
    :meth:`read_input` (one file -> one model input) for ``predict``.
    """

    primary_metric = "acc1"
    mode = "max"
    labels_from_outputs = True
    curves: ClassVar[dict[str, str]] = {"accuracy": "acc1"}
    mixes: ClassVar[tuple[str, ...]] = ("mixup", "cutmix")  # the batch mixes that make sense for the inputs

    def criterion(self, cfg: TrainConfig, args: Any, data: TaskData) -> Criterion:
        """Soft-target CE under mixup (smoothing is in the targets), label-smoothing CE otherwise."""
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        if self.batch_transform(cfg, args, data) is not None:
            return outputs_criterion(SoftTargetCrossEntropy())
        return outputs_criterion(LabelSmoothingCrossEntropy(cfg.smoothing) if cfg.smoothing else nn.CrossEntropyLoss())

    def batch_transform(self, cfg: TrainConfig, args: Any, data: TaskData) -> Any:
        """timm's Mixup/CutMix with label smoothing folded in, for the mixes this input allows."""
        alphas = {"mixup": cfg.mixup, "cutmix": cfg.cutmix}
        ignored = [k for k, v in alphas.items() if v > 0 and k not in self.mixes]
        if ignored:
            log.warning("%s does not apply to %s inputs: ignored", " and ".join(ignored), self.name)
        alphas = {k: (v if k in self.mixes else 0.0) for k, v in alphas.items()}
        if not any(alphas.values()):
            return None
        from timm.data import Mixup

        return Mixup(mixup_alpha=alphas["mixup"], cutmix_alpha=alphas["cutmix"], prob=cfg.mixup_prob,
                     switch_prob=cfg.mixup_switch_prob, mode="batch", label_smoothing=cfg.smoothing,
                     num_classes=len(data.info["class_names"]))

    def resume_mismatch(self, meta: Mapping[str, Any], data: TaskData) -> str | None:
        old, new = list(meta.get("class_names") or []), list(data.info["class_names"])
        if old != new:
            return f"it was trained on {len(old)} classes ({', '.join(old[:5])}...), the data has {len(new)}"
        return None

    def evaluate(self, model: nn.Module, loader: Any, ctx: EvalContext) -> dict[str, Any]:
        """Top-1 / top-5 accuracy, mean class accuracy (percent), mean CE loss; details: the confusion matrix."""
        n_classes = 0
        sums = torch.zeros(4, dtype=torch.float64)  # loss, top-1, top-5, samples
        cm = None
        counts: dict[str, int] = {}
        for logits, _, targets in eval_batches(model, loader, ctx, counts):
            logits = logits.float()
            if cm is None:
                n_classes = logits.shape[1]
                cm = torch.zeros(n_classes, n_classes, dtype=torch.float64)
            k1, k5 = topk_correct(logits, targets)
            loss = float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
            sums += torch.tensor([loss, k1, k5, len(targets)], dtype=torch.float64)
            cm.index_put_((targets.cpu(), logits.argmax(1).cpu()), torch.ones(len(targets), dtype=torch.float64),
                          accumulate=True)
        corrupt = torch.tensor([float(counts.get("corrupt", 0))], dtype=torch.float64)
        if ctx.distributed:
            sums, corrupt = reduce_tensor(sums.to(ctx.device)).cpu(), reduce_tensor(corrupt.to(ctx.device)).cpu()
            if cm is not None:
                cm = reduce_tensor(cm.to(ctx.device)).cpu()
        n = max(float(sums[3]), 1.0)
        cm_np = cm.long().numpy() if cm is not None else np.zeros((0, 0), np.int64)
        out: dict[str, Any] = {"acc1": 100 * float(sums[1]) / n, "acc5": 100 * float(sums[2]) / n,
                               "loss": float(sums[0]) / n, "macc": mean_class_accuracy(cm_np),
                               "samples": int(sums[3]), "corrupt": int(corrupt[0])}
        if ctx.detailed:
            out["confusion_matrix"] = cm_np
        return out

    def report_figures(self, details: Mapping[str, Any], out_dir: Path, data: TaskData) -> dict[str, Path]:
        names = list(data.info["class_names"])
        cm = details.get("confusion_matrix")
        if cm is None or cm.shape != (len(names), len(names)):
            return {}
        return {"confusion_matrix": plot_confusion(cm, names, out_dir / "confusion_matrix.png")}

    def summary_lines(self, summary: Mapping[str, Any]) -> list[str]:
        return [f"  held-out top-1 {summary['test_acc1']:.2f}%  top-5 {summary['test_acc5']:.2f}%  mean class "
                f"accuracy {summary['test_macc']:.2f}%  loss {summary['test_loss']:.4f}  ({summary['test_samples']} "
                f"samples, {summary['test_split']} split)"]

    # -- predict -----------------------------------------------------------------------------------------------------
    input_suffixes: ClassVar[tuple[str, ...]] = IMG_EXTENSIONS

    def input_files(self, inputs: Sequence[str]) -> list[Path]:
        """The files ``predict`` reads: the given files, and the input files found in the given folders."""
        return collect_files(inputs, self.input_suffixes)

    def read_input(self, path: Path, meta: Mapping[str, Any], request: Request) -> torch.Tensor:
        """One input file -> the model's input for one sample (no batch axis)."""
        raise NotImplementedError

    def predict(self, model: nn.Module, meta: Mapping[str, Any], request: Request) -> list[dict[str, Any]]:
        """Top-k class names and probabilities per input file (files, or folders searched recursively)."""
        self.check_img_size(request.img_size)
        files = self.input_files(request.inputs)
        inputs = [self.read_input(f, meta, request) for f in files]  # every file is read before any work
        names = list(meta.get("class_names") or [])
        model.eval().to(request.device)
        out = []
        for start in range(0, len(files), request.batch_size):
            batch = torch.stack(inputs[start:start + request.batch_size]).to(request.device)
            with torch.inference_mode():
                probs = model(batch).float().softmax(1).cpu()
            values, indices = probs.topk(min(request.topk, probs.shape[1]), dim=1)
            for path, vals, idxs in zip(files[start:start + request.batch_size], values.tolist(), indices.tolist()):
                out.append({"file": str(path), "predictions": [
                    {"label": names[i] if i < len(names) else f"class_{i}", "index": i, "probability": v}
                    for v, i in zip(vals, idxs)]})
        return out


def collect_files(paths: Sequence[str], suffixes: tuple[str, ...]) -> list[Path]:
    """Files from files and folders (searched recursively for ``suffixes``), in the given order."""
    out: list[Path] = []
    for text in paths:
        p = Path(text)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in suffixes)
            if not found:
                raise UserError(f"folder '{p}' has no input files ({', '.join(suffixes)})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"input '{p}' does not exist; check the path")
    if not out:
        raise UserError("no inputs given; pass files or folders")
    return out


def load_image(path: Path, transform: Any, in_chans: int = 3) -> torch.Tensor:
    """Decode ``path`` and apply ``transform`` -> (C, H, W); an unreadable file or a decompression bomb is a
    UserError."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img = img.convert("L" if in_chans == 1 else "RGB")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise UserError(f"image '{path}' is too large to decode safely ({err}); resize it first") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise UserError(f"cannot read image '{path}' ({type(err).__name__}); is it a valid image file?") from None
    return transform(img)


@register_task
class ImageClassification(Classifier):
    """Images: an ImageFolder tree (``train/`` and ``val/`` class folders) or the built-in digits; a bare
    UniRepLKNet; the held-out split is ``val``."""

    name = "classification"
    default_config = "digits"
    builtin_data = ("digits",)
    resizable_input = True

    def build_data(self, cfg: TrainConfig, args: Any) -> TaskData:
        from unireplknet.data.loader import build_datasets

        train, val, class_names = build_datasets(cfg)
        return TaskData(train=train, val=val, info={"class_names": list(class_names)})

    def build_model(self, cfg: TrainConfig, args: Any, data: TaskData) -> nn.Module:
        """A registered variant (optionally with the official weights and a new head) or ``UniRepLKNet(**arch)``,
        then ``cfg.finetune`` weights."""
        import unireplknet

        num_classes = len(data.info["class_names"])
        train_kwargs = dict(drop_path_rate=cfg.drop_path, layer_scale_init_value=cfg.layer_scale_init_value,
                            head_init_scale=cfg.head_init_scale)
        if cfg.model is None:
            model = build_backbone(cfg, backbone_kwargs(cfg, num_classes, cfg.in_chans))
        else:
            kwargs = {**(cfg.arch or {}), "in_chans": cfg.in_chans, **train_kwargs}
            if not cfg.pretrained:
                kwargs["num_classes"] = num_classes
            try:
                model = unireplknet.create_model(cfg.model, pretrained=cfg.pretrained, **kwargs)
            except (TypeError, ValueError) as err:
                raise UserError(f"cannot build {cfg.model} ({err}); check arch") from None
            if model.num_classes != num_classes:  # pretrained weights come with their own head
                log.info("new %d-class head on pretrained %s", num_classes, cfg.model)
                model.reset_classifier(num_classes)
        if cfg.finetune:
            load_finetune(model, cfg.finetune)
        return model

    def model_meta(self, cfg: TrainConfig, args: Any, data: TaskData) -> dict[str, Any]:
        kwargs = {**(cfg.arch or {}), "num_classes": len(data.info["class_names"]), "in_chans": cfg.in_chans}
        return {"model": cfg.model, "model_kwargs": kwargs, "class_names": list(data.info["class_names"]),
                "input_size": [cfg.in_chans, cfg.img_size, cfg.img_size], "mean": list(cfg.mean),
                "std": list(cfg.std), "crop_pct": cfg.crop_pct, "interpolation": cfg.interpolation}

    def summary_lines(self, summary: Mapping[str, Any]) -> list[str]:
        lines = super().summary_lines(summary)
        if summary.get("corrupt_samples"):
            lines.append(f"  skipped {summary['corrupt_samples']} unreadable images")
        return lines

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def transform(self, meta: Mapping[str, Any], img_size: int | None = None) -> Any:
        """The evaluation transform of a checkpoint (its input size, mean/std, crop and interpolation)."""
        from unireplknet.data.loader import eval_transform
        from unireplknet.models.pretrained import IMAGENET_MEAN, IMAGENET_STD

        c, h, w = (int(v) for v in meta.get("input_size") or (3, 224, 224))
        size = (c, img_size or h, img_size or w)
        return eval_transform(size, meta.get("mean") or IMAGENET_MEAN, meta.get("std") or IMAGENET_STD,
                              float(meta.get("crop_pct", 0.875)), meta.get("interpolation", "bicubic"))

    def evaluate_checkpoint(self, model: nn.Module, meta: Mapping[str, Any], cfg: TrainConfig,
                            request: Request) -> dict[str, Any]:
        """Top-1 / top-k on ``DIR/val/<class>/*`` (or ``DIR/<class>/*``) or the built-in digits' held-out split.
        Folders named like the checkpoint's classes map to them; otherwise folders are class indices in sorted
        order (the ImageNet convention)."""
        from unireplknet.data.datasets import DigitsDataset, ImageFolderDataset, data_folder

        data = request.data or cfg.data
        c, h, _ = (int(v) for v in meta.get("input_size") or (3, 224, 224))
        size = request.img_size or h
        transform = self.transform(meta, request.img_size)
        if data == "digits":
            dataset: Any = DigitsDataset("val", transform, size=size, in_chans=c)
        else:
            root = data_folder(data or "", "DIR/val/<class>/ or DIR/<class>/ image folders, or 'digits'")
            root = root / "val" if (root / "val").is_dir() else root
            dataset = ImageFolderDataset(root, transform, class_names=self._folder_classes(root, meta), in_chans=c)
            dataset.check_readable()
        result = self.evaluate(model.to(request.device), eval_loader(dataset, request.batch_size, request.workers),
                               EvalContext(device=request.device, distributed=False))
        if result["samples"] == 0:
            raise UserError("no image of the dataset could be read; check that the files are valid images")
        n_classes = len(meta.get("class_names") or []) or 5
        return {"top1": result["acc1"], "top5": result["acc5"], "top5_k": min(5, n_classes),
                "num_images": result["samples"], "skipped_unreadable": result["corrupt"], "model": meta.get("model"),
                "img_size": size}

    @staticmethod
    def _folder_classes(root: Path, meta: Mapping[str, Any]) -> list[str] | None:
        names = list(meta.get("class_names") or [])
        found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if names and found and not set(found) & set(names):
            if len(found) > len(names):
                raise UserError(f"'{root}' has {len(found)} class folders but the model only {len(names)} classes; "
                                "evaluate on the classes it was trained on")
            log.warning("no folder of '%s' is named like a class of the checkpoint: folders are taken as class "
                        "indices in sorted order (the ImageNet convention)", root)
            return None
        return names or None

    def read_input(self, path: Path, meta: Mapping[str, Any], request: Request) -> torch.Tensor:
        c = int((meta.get("input_size") or (3,))[0])
        return load_image(path, self.transform(meta, request.img_size), c)

    def predict(self, model: nn.Module, meta: Mapping[str, Any], request: Request) -> list[dict[str, Any]]:
        return [{"image": r.pop("file"), **r} for r in super().predict(model, meta, request)]
