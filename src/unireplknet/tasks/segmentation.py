"""Semantic segmentation: metrics by MMSegmentation's definitions, colour palette, prediction PNGs.

Metrics come from one (K, K) confusion matrix summed over a whole split (and over DDP ranks with an
all-reduce SUM): per class IoU = TP / (TP + FP + FN) and accuracy = TP / (TP + FN); a class absent from both
prediction and ground truth has no IoU (NaN), one absent from the ground truth no accuracy, and means skip
them (``nanmean``); aAcc = all correct / all labelled pixels. Ignored pixels count nowhere.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IGNORE_INDEX = 255


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


def format_class_table(metrics: dict, class_names: Sequence[str]) -> str:
    """Plain-text per-class table (IoU and accuracy, percent) with the means at the bottom."""
    width = max(12, *(len(n) for n in class_names)) + 2
    lines = [f"{'class':<{width}}{'IoU':>8}{'Acc':>8}"]
    def cell(v: float | None) -> str:
        return f"{'-' if v is None else f'{v:.2f}':>8}"

    for name, iou, acc in zip(class_names, metrics["per_class_iou"], metrics["per_class_acc"]):
        lines.append(f"{name:<{width}}{cell(iou)}{cell(acc)}")
    lines.append(f"{'mean':<{width}}{metrics['miou']:>8.2f}{metrics['macc']:>8.2f}   aAcc {metrics['aacc']:.2f}")
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
    """Write atomically: a temp file in the same folder, renamed onto ``path`` when complete."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_prediction_pngs(directory: str | os.PathLike, stem: str, image: np.ndarray, label: np.ndarray,
                          colours: np.ndarray, alpha: float = 0.5) -> tuple[Path, Path]:
    """``directory/<stem>.png`` (class indices, palette PNG) and ``directory/<stem>_overlay.png``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    label_path, overlay_path = directory / f"{stem}.png", directory / f"{stem}_overlay.png"
    _save_png(label_image(label, colours), label_path)
    _save_png(overlay_image(image, label, colours, alpha), overlay_path)
    return label_path, overlay_path
