"""Semantic segmentation (paper §4, Table 7): UPerNet on the UniRepLKNet backbone, mIoU / mAcc / aAcc.

``data``: ``beacons`` (the built-in set: an object's class is set by a marker elsewhere in the image) or a folder
in the ADE20K, Pascal VOC or images/ + masks/ layout (:mod:`unireplknet.data.segmentation`). Evaluation and
``predict`` run the model through its test-time inference (``task_args.inference``: ``whole``, ``slide`` or
``ms``, multi-scale + flip) at each image's own size. Metrics come from one confusion matrix summed over the
split (and over DDP ranks), by MMSegmentation's definitions: per class IoU = TP / (TP + FP + FN) and accuracy =
TP / (TP + FN); a class absent from both prediction and ground truth has no IoU (NaN), one absent from the ground
truth no accuracy, and the means skip them; aAcc = all correct / all labelled pixels. Ignored pixels count nowhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from unireplknet.data.segmentation import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegEvalTransform,
    SegTrainTransform,
    collate_segmentation,
    detect_layout,
    normalize_image,
    segmentation_dataset,
)
from unireplknet.engine.config import TrainConfig
from unireplknet.engine.distributed import all_reduce_sum, reduce_tensor
from unireplknet.engine.loops import eval_batches
from unireplknet.engine.task import Criterion, EvalContext, Request, Task, TaskData, outputs_criterion
from unireplknet.errors import UserError
from unireplknet.models.seg_inference import MS_RATIOS, Segmenter
from unireplknet.tasks import register_task
from unireplknet.utils.atomic import atomic_file, atomic_write_text
from unireplknet.utils.typed import check

log = logging.getLogger(__name__)


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(K, K) int64 counts, rows = ground truth, columns = prediction, over pixels whose label is not ignored.

    ``pred`` and ``label``: integer maps of one shape (e.g. (N, H, W)). A label outside 0..K-1 (other than
    ``ignore_index``) or a prediction outside it raises ``ValueError``: never a silently wrong metric.
    """
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
    keep = label != ignore_index
    gt, pr = label[keep].long(), pred[keep].long()
    for name, t in (("label", gt), ("prediction", pr)):
        if t.numel() and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"{name} values {t.min().item()}..{t.max().item()} outside 0..{num_classes - 1} "
                             f"(ignore index {ignore_index})")
    return torch.bincount(gt * num_classes + pr, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def segmentation_metrics(confusion: torch.Tensor) -> dict[str, float | list[float | None]]:
    """mIoU, mAcc, aAcc (percent) and the per-class IoU and accuracy (percent; None where undefined)."""
    c = confusion.double()
    tp = c.diag()
    gt, pred = c.sum(1), c.sum(0)
    iou = tp / (gt + pred - tp)  # 0/0 = NaN: class in neither
    acc = tp / gt  # NaN: class absent from the ground truth
    labelled = c.sum()

    def mean(x: torch.Tensor) -> float:
        return float(x.nanmean() * 100) if not x.isnan().all() else float("nan")

    def per_class(x: torch.Tensor) -> list[float | None]:
        return [None if v != v else v * 100 for v in x.tolist()]

    return dict(miou=mean(iou), macc=mean(acc), aacc=float(tp.sum() / labelled * 100) if labelled else float("nan"),
                per_class_iou=per_class(iou), per_class_acc=per_class(acc))


def format_class_table(metrics: Mapping[str, Any], class_names: Sequence[str]) -> str:
    """Markdown table of the per-class IoU and accuracy (percent; '-' where undefined), the means last."""
    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = ["| class | IoU | Acc |", "|---|---:|---:|"]
    lines += [f"| {name} | {cell(iou)} | {cell(acc)} |"
              for name, iou, acc in zip(class_names, metrics["per_class_iou"], metrics["per_class_acc"])]
    lines.append(f"| **mean** (aAcc {metrics['aacc']:.2f}) | {metrics['miou']:.2f} | {metrics['macc']:.2f} |")
    return "\n".join(lines)


# -- colours and prediction images --------------------------------------------------------------------------------

def palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours: the Pascal VOC colour map (bits of the class index spread over R, G, B; class 0
    black), repeating after 256 classes."""
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for k in range(num_classes):
        c, rgb = k % 256, [0, 0, 0]
        for bit in range(8):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << (7 - bit)
            c >>= 3
        colours[k] = rgb
    return colours


def label_image(label: np.ndarray, colours: np.ndarray) -> Image.Image:
    """(H, W) class indices -> a palette PNG image: pixel values are the indices, viewers show the colours.
    Needs K <= 256 (one byte per pixel); ignored pixels (255) stay 255."""
    if label.max(initial=0) > 255:
        raise ValueError("label PNGs hold one byte per pixel: at most 256 classes")
    img = Image.fromarray(label.astype(np.uint8))
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[:len(colours)] = colours[:256]
    img.putpalette(flat.reshape(-1).tolist())
    return img


def overlay_image(image: np.ndarray, label: np.ndarray, colours: np.ndarray, alpha: float = 0.5,
                  ignore_index: int = IGNORE_INDEX) -> Image.Image:
    """(H, W, 3) uint8 image blended with the colour of each pixel's class (``alpha`` of the colour)."""
    out = image.astype(np.float32)
    keep = label != ignore_index
    out[keep] = (1 - alpha) * out[keep] + alpha * colours[label[keep]].astype(np.float32)
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def _save_png(img: Image.Image, path: Path) -> None:
    with atomic_file(path) as f:
        img.save(f, format="PNG")


def write_prediction_pngs(directory: str | os.PathLike, stem: str, image: np.ndarray, label: np.ndarray,
                          colours: np.ndarray, alpha: float = 0.5) -> tuple[Path, Path]:
    """``directory/<stem>.png`` (class indices, palette PNG) and ``directory/<stem>_overlay.png``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    label_path, overlay_path = directory / f"{stem}.png", directory / f"{stem}_overlay.png"
    _save_png(label_image(label, colours), label_path)
    _save_png(overlay_image(image, label, colours, alpha), overlay_path)
    return label_path, overlay_path


# -- the task ------------------------------------------------------------------------------------------------------

@dataclass
class SegmentationArgs:
    inference: Literal["whole", "slide", "ms"] = "whole"  # test time: one pass, sliding windows, or MS + flip
    test_scale: list[int] = field(default_factory=lambda: [2048, 512])  # (long, short) edge bounds, ratio kept
    crop_size: list[int] = field(default_factory=lambda: [512, 512])  # training crop (h, w), window, ONNX input
    slide_stride: list[int] = field(default_factory=lambda: [341, 341])
    ms_ratios: list[float] = field(default_factory=lambda: list(MS_RATIOS))
    ratio_range: list[float] = field(default_factory=lambda: [0.5, 2.0])  # training: random resize × test_scale
    cat_max_ratio: float = 0.75  # training crop: retry while one class covers more than this
    photometric: bool = True
    hue_delta: int = 18
    backbone: str | None = None  # a timm model (e.g. convnext_atto) instead of the UniRepLKNet of `model`/`arch`
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # its timm.create_model settings (depths, dims)
    channels: int = 512  # UPerHead width
    aux_channels: int = 256  # auxiliary FCN head width (0: none)
    aux_weight: float = 0.4
    ohem_thresh: float | None = None  # main head: online hard example mining (None: every labelled pixel)
    ohem_min_kept: int = 100_000  # OHEM: at least this many pixels per image count
    beacons_size: int = 64  # built-in set: image side
    beacons_samples: list[int] = field(default_factory=lambda: [4000, 300, 300])  # train, val, test
    beacons_marker: str = "class"  # built-in set: "class" = the marker's pixels take its class in training and are
    # not scored on val/test; "background" = they are background everywhere (the set before 2026-12-01's change)
    overlay_alpha: float = 0.5  # predict: weight of the class colour in the overlay

    def __post_init__(self) -> None:
        pairs = (self.test_scale, self.crop_size, self.slide_stride, self.ratio_range)
        check([(all(len(p) == 2 for p in pairs), "test_scale, crop_size, slide_stride and ratio_range are pairs")])
        check([(min(*self.test_scale, *self.crop_size, *self.slide_stride) >= 8, "sizes must be at least 8"),
               (0 < self.ratio_range[0] <= self.ratio_range[1], "ratio_range is [lo, hi] with 0 < lo <= hi"),
               (bool(self.ms_ratios) and min(self.ms_ratios) > 0, "ms_ratios must be positive"),
               (0 < self.cat_max_ratio <= 1 and 0 <= self.hue_delta <= 90, "cat_max_ratio in (0, 1], hue_delta 0..90"),
               (self.channels >= 1 and self.aux_channels >= 0 and self.aux_weight >= 0, "head sizes must be positive"),
               (self.beacons_size >= 32 and len(self.beacons_samples) == 3 and min(self.beacons_samples) >= 1,
                "beacons_size >= 32; beacons_samples is [train, val, test], each >= 1"),
               (self.beacons_marker in ("class", "background"), "beacons_marker must be 'class' or 'background'"),
               (0 <= self.overlay_alpha <= 1, "overlay_alpha must be in [0, 1]"),
               (self.ohem_thresh is None or (0 < self.ohem_thresh <= 1 and self.ohem_min_kept >= 1),
                "ohem_thresh must be null or in (0, 1], and ohem_min_kept >= 1")])

    def inference_settings(self) -> dict[str, Any]:
        """Keyword arguments of :class:`Segmenter` for ``inference``."""
        ms = self.inference == "ms"
        return dict(mode="slide" if self.inference == "slide" else "whole", scale=tuple(self.test_scale),
                    ratios=tuple(self.ms_ratios) if ms else (1.0,), flip=ms, crop=tuple(self.crop_size),
                    stride=tuple(self.slide_stride))


@register_task
class SegmentationTask(Task):
    name = "segmentation"
    Args = SegmentationArgs
    default_config = "segmentation_default"
    builtin_data = ("beacons",)
    primary_metric = "miou"
    mode = "max"
    labels_from_outputs = True  # logits (N, K, H, W): the deploy check compares the labels too
    curves: ClassVar[dict[str, str]] = {"miou": "miou", "aacc": "aacc"}

    def build_data(self, cfg: TrainConfig, args: SegmentationArgs) -> TaskData:
        train_tf = SegTrainTransform(scale=tuple(args.test_scale), ratio_range=tuple(args.ratio_range),
                                     crop=tuple(args.crop_size), cat_max_ratio=args.cat_max_ratio,
                                     flip_prob=cfg.hflip, photometric=args.photometric, hue_delta=args.hue_delta,
                                     mean=tuple(cfg.mean), std=tuple(cfg.std))
        eval_tf = SegEvalTransform(mean=tuple(cfg.mean), std=tuple(cfg.std))
        if cfg.data in self.builtin_data:
            from unireplknet.data.synth_segmentation import BeaconsDataset

            def marker(split: str) -> str:  # scored: only the pixels whose class needs the far-away marker
                return "ignore" if args.beacons_marker == "class" and split != "train" else args.beacons_marker

            sets = {split: BeaconsDataset(split, train_tf if split == "train" else eval_tf, length=n,
                                          size=args.beacons_size, marker=marker(split))
                    for split, n in zip(("train", "val", "test"), args.beacons_samples)}
        else:
            from unireplknet.data.datasets import data_folder

            root = data_folder(cfg.data or "", "a segmentation folder (ADE20K, Pascal VOC, or images/ + masks/ "
                                               f"+ classes.txt), or one of: {', '.join(self.builtin_data)}")
            layout = detect_layout(root)
            splits = ("train", "val") + (("test",) if layout == "masks" and (root / "images" / "test").is_dir()
                                         else ())
            sets = {split: segmentation_dataset(root, split, train_tf if split == "train" else eval_tf, layout)
                    for split in splits}
            for dataset in sets.values():
                dataset.check()  # the first few masks: sizes and label ranges, one line naming the file
        for split, dataset in sets.items():
            dataset.inference = args.inference_settings() if split != "train" else None
        return TaskData(sets["train"], sets["val"], sets.get("test"), {"class_names": sets["train"].class_names},
                        collate=collate_segmentation)

    def resume_mismatch(self, meta: Mapping[str, Any], data: TaskData) -> str | None:
        if list(meta.get("class_names") or []) != list(data.info["class_names"]):
            return "it was trained on other classes"
        return None

    def model_meta(self, cfg: TrainConfig, args: SegmentationArgs, data: TaskData) -> dict[str, Any]:
        from unireplknet.models.segmentation import MODELS

        heads = {"num_classes": len(data.info["class_names"]), "channels": args.channels,
                 "aux_channels": args.aux_channels}
        if args.backbone:
            if cfg.arch:
                log.info("task_args.backbone=%s: the recipe's arch (UniRepLKNet depths/dims/kernels) is not used",
                         args.backbone)
            name, kwargs = "upernet_timm", {"timm_backbone": args.backbone, **heads}
            if args.backbone_kwargs:
                kwargs["timm_kwargs"] = dict(args.backbone_kwargs)
        else:
            size = (cfg.model or "unireplknet_a").removeprefix("upernet_").removeprefix("unireplknet_")
            name, kwargs = f"upernet_unireplknet_{size}", {**(cfg.arch or {}), **heads}
            if name not in MODELS:
                raise UserError(f"no segmenter for model {cfg.model!r}; choose a backbone of: "
                                f"{', '.join(m.removeprefix('upernet_') for m in MODELS if m != 'upernet_timm')} "
                                "(or model null + arch, or task_args.backbone=<timm model>)")
        return {"model": name, "model_kwargs": kwargs, "class_names": data.info["class_names"],
                "input_size": [3, *args.crop_size], "mean": list(cfg.mean), "std": list(cfg.std)}

    def build_model(self, cfg: TrainConfig, args: SegmentationArgs, data: TaskData) -> nn.Module:
        import unireplknet

        meta = self.model_meta(cfg, args, data)
        try:
            extra = {} if args.backbone else {"layer_scale_init_value": cfg.layer_scale_init_value}
            model = unireplknet.create_model(meta["model"], pretrained=cfg.pretrained, drop_path_rate=cfg.drop_path,
                                             **extra, **meta["model_kwargs"])
        except (TypeError, ValueError) as err:
            raise UserError(f"bad segmentation model settings (model/arch/task_args): {err}") from None
        if cfg.finetune:  # a classification checkpoint, or the backbone of a dense one
            from unireplknet.models.segmentation import load_backbone

            load_backbone(model, cfg.finetune)
        return model

    def model_label(self, cfg: TrainConfig) -> str:
        args = self.parse_args(cfg.task_args)
        return f"UPerNet on {f'{args.backbone} (timm)' if args.backbone else super().model_label(cfg)}"

    def criterion(self, cfg: TrainConfig, args: SegmentationArgs, data: TaskData) -> Criterion:
        """Cross-entropy over labelled pixels (255 ignored): main 1.0 (hard pixels only with ``ohem_thresh``)
        + auxiliary ``aux_weight``."""
        from unireplknet.models.segmentation import SegmentationLoss

        return outputs_criterion(SegmentationLoss(args.aux_weight, ohem_thresh=args.ohem_thresh,
                                                  ohem_min_kept=args.ohem_min_kept))

    def evaluate(self, model: nn.Module, loader: Any, ctx: EvalContext) -> dict[str, Any]:
        """mIoU, mAcc, aAcc (percent) of the dataset's test-time inference over the images seen."""
        dataset = loader.dataset
        k = len(dataset.class_names)
        confusion = torch.zeros(k, k, dtype=torch.long, device=ctx.device)
        images = 0
        segmenter = Segmenter(model, **(getattr(dataset, "inference", None) or {}))
        for probs, _, labels in eval_batches(segmenter, loader, ctx):
            for p, y in zip(probs, labels):
                confusion += confusion_matrix(p.argmax(0), y, k)
                images += 1
        if ctx.distributed:
            confusion, images = reduce_tensor(confusion), int(all_reduce_sum([images], ctx.device)[0])
        metrics = segmentation_metrics(confusion.cpu())
        out: dict[str, Any] = {key: metrics[key] for key in ("miou", "macc", "aacc")} | {"samples": images}
        if ctx.detailed:
            out |= {"per_class_iou": metrics["per_class_iou"], "per_class_acc": metrics["per_class_acc"],
                    "confusion_matrix": confusion.cpu()}
        return out

    def report_figures(self, details: Mapping[str, Any], out_dir: Path, data: TaskData) -> dict[str, Path]:
        """``per_class.md``: the held-out split's per-class IoU and accuracy (the report includes it)."""
        if "confusion_matrix" not in details:
            return {}
        table = format_class_table(segmentation_metrics(details["confusion_matrix"]), data.info["class_names"])
        return {"per_class": atomic_write_text(f"## Per-class results (held-out split)\n\n{table}\n",
                                               out_dir / "per_class.md")}

    def summary_lines(self, summary: Mapping[str, Any]) -> list[str]:
        return [f"  held-out mIoU {summary['test_miou']:.2f}%  mAcc {summary['test_macc']:.2f}%  aAcc "
                f"{summary['test_aacc']:.2f}%  ({summary['test_samples']} images, {summary['test_split']} split)"]

    def predict(self, model: nn.Module, meta: Mapping[str, Any], request: Request) -> list[dict[str, Any]]:
        """Per image: the share of each predicted class (percent); with ``--output``, ``DIR/<stem>.png`` (pixel =
        class index, palette PNG) and ``DIR/<stem>_overlay.png`` (the image blended with the class colours)."""
        from unireplknet.data.datasets import IMG_EXTENSIONS
        from unireplknet.tasks.classification import collect_files, load_image

        self.check_img_size(request.img_size)
        args = self.parse_args(meta.get("task_args") or {})
        files = collect_files(request.inputs, IMG_EXTENSIONS)
        images = [load_image(f, np.asarray) for f in files]  # every file is read before any work
        names = list(meta.get("class_names") or [])
        colours = palette(len(names))
        mean, std = meta.get("mean") or IMAGENET_MEAN, meta.get("std") or IMAGENET_STD
        segmenter = Segmenter(model.eval().to(request.device), **args.inference_settings())
        results = []
        for path, image in zip(files, images):
            x = normalize_image(image, mean, std)[None].to(request.device)
            label = segmenter(x)[0].argmax(0).cpu().numpy()
            counts = np.bincount(label.ravel(), minlength=len(names))
            entry: dict[str, Any] = {"file": str(path), "size": list(label.shape), "classes": {
                names[k]: round(100 * float(c) / label.size, 2) for k, c in enumerate(counts) if c}}
            if request.output is not None:
                mask, overlay = write_prediction_pngs(request.output, path.stem, image, label, colours,
                                                      args.overlay_alpha)
                entry |= {"mask": str(mask), "overlay": str(overlay)}
            results.append(entry)
        return results

    def complexity_table(self) -> list[dict[str, Any]]:
        """Table 7's segmenters (T, S, B, L, XL with 150 classes): parameters and MACs beside the paper's."""
        from unireplknet.analysis.dense_complexity import segmenter_table

        return [row.as_dict() for row in segmenter_table()]
