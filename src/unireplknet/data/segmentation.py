"""Semantic segmentation data: three folder layouts, MMSeg's ADE20K training pipeline, the eval transform.

Layouts (found by :func:`detect_layout`; ``split`` is 'train', 'val' or, for the mask-folder layout, 'test'):

- ADE20K: ``images/{training,validation}/*.jpg`` + ``annotations/{training,validation}/<stem>.png``;
  label 0 ("other") is ignored and the others shift down by one (150 classes).
- Pascal VOC: ``JPEGImages/*.jpg`` + ``SegmentationClass/<stem>.png`` (palette PNGs: the indices are the
  labels) + ``ImageSets/Segmentation/{train,val}.txt``; 255 (object borders) ignored; 21 classes.
- Mask folder: ``images/<split>/*`` + ``masks/<split>/<stem>.png`` + ``classes.txt`` (one class name a line;
  line i is label i); 255 ignored.

A sample is ``(image (3, H, W) float32 normalized, label (H, W) int64)`` with 255 for ignored pixels.
Masks are checked when loaded (and the first few up front by :meth:`SegmentationDataset.check`): a mask whose
size differs from its image or with a label outside the classes is a ``UserError`` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from unireplknet.errors import UserError

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
_ADE20K_NAMES = (
    "wall,building,sky,floor,tree,ceiling,road,bed,windowpane,grass,cabinet,sidewalk,person,earth,door,table,"
    "mountain,plant,curtain,chair,car,water,painting,sofa,shelf,house,sea,mirror,rug,field,armchair,seat,fence,"
    "desk,rock,wardrobe,lamp,bathtub,railing,cushion,base,box,column,signboard,chest of drawers,counter,sand,"
    "sink,skyscraper,fireplace,refrigerator,grandstand,path,stairs,runway,case,pool table,pillow,screen door,"
    "stairway,river,bridge,bookcase,blind,coffee table,toilet,flower,book,hill,bench,countertop,stove,palm,"
    "kitchen island,computer,swivel chair,boat,bar,arcade machine,hovel,bus,towel,light,truck,tower,chandelier,"
    "awning,streetlight,booth,television receiver,airplane,dirt track,apparel,pole,land,bannister,escalator,"
    "ottoman,bottle,buffet,poster,stage,van,ship,fountain,conveyer belt,canopy,washer,plaything,swimming pool,"
    "stool,barrel,basket,waterfall,tent,bag,minibike,cradle,oven,ball,food,step,tank,trade name,microwave,pot,"
    "animal,bicycle,lake,dishwasher,screen,blanket,sculpture,hood,sconce,vase,traffic light,tray,ashcan,fan,"
    "pier,crt screen,plate,monitor,bulletin board,shower,radiator,glass,clock,flag")
ADE20K_CLASSES = tuple(_ADE20K_NAMES.split(","))


class SegmentationDataset(Dataset):
    """(image path, mask path) pairs -> ``transform(image (H, W, 3) uint8, label (H, W) int64)``.

    ``reduce_zero_label``: raw 0 becomes ``ignore_index`` and every other label drops by one (ADE20K).
    Without a transform a sample is the pair of arrays.
    """

    def __init__(self, samples: list[tuple[Path, Path]], class_names: list[str] | tuple[str, ...],
                 transform: Callable | None = None, reduce_zero_label: bool = False,
                 ignore_index: int = IGNORE_INDEX, root: str | os.PathLike = "") -> None:
        if not samples:
            raise UserError(f"no image/mask pairs found under '{root}'; see docs/segmentation.md for the layouts")
        self.samples = samples
        self.class_names = list(class_names)
        self.transform = transform
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index
        self.root = Path(root)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The image (H, W, 3) uint8 and its label map (H, W) int64 after the label mapping, checked."""
        image_path, mask_path = self.samples[index]
        try:
            with Image.open(image_path) as img:
                image = np.asarray(img.convert("RGB"))
            with Image.open(mask_path) as m:
                if m.mode not in ("L", "P", "I", "I;16"):
                    raise UserError(f"mask {mask_path} is a {m.mode} image; masks must hold class indices "
                                    "(8-bit grey or palette PNG), not colours")
                raw = np.asarray(m).astype(np.int64)
        except OSError as err:
            raise UserError(f"cannot read {image_path} or {mask_path} ({err}); replace or remove the file") from err
        if raw.shape != image.shape[:2]:
            raise UserError(f"mask {mask_path} is {raw.shape[1]}×{raw.shape[0]} but its image {image_path} is "
                            f"{image.shape[1]}×{image.shape[0]}; masks must match their images pixel for pixel")
        label = self.map_labels(raw)
        bad = (label != self.ignore_index) & ((label < 0) | (label >= len(self.class_names)))
        if bad.any():
            values = sorted(set(np.unique(raw[bad]).tolist()))[:5]
            allowed = f"1..{len(self.class_names)} (0 = ignore)" if self.reduce_zero_label else \
                f"0..{len(self.class_names) - 1}"
            raise UserError(f"mask {mask_path} has labels {values} outside the classes {allowed}, "
                            f"{self.ignore_index} = ignore; fix the mask or the class list")
        return image, label

    def map_labels(self, raw: np.ndarray) -> np.ndarray:
        if not self.reduce_zero_label:
            return raw
        label = raw - 1
        label[(raw == 0) | (raw == self.ignore_index)] = self.ignore_index
        return label

    def __getitem__(self, index: int):
        image, label = self.load(index)
        return self.transform(image, label) if self.transform is not None else (image, label)

    def check(self, probe: int = 4) -> None:
        """Load the first ``probe`` samples (a fast up-front check; errors name the file)."""
        for i in range(min(probe, len(self))):
            self.load(i)


# -- layouts -----------------------------------------------------------------------------------------------------

def _voc_root(root: Path) -> Path | None:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    return None


def detect_layout(root: str | os.PathLike) -> str:
    """'ade20k', 'voc' or 'masks' for a data folder; a ``UserError`` describing the layouts otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder '{root}' does not exist; pass --data DIR")
    if (root / "images" / "training").is_dir() and (root / "annotations").is_dir():
        return "ade20k"
    if _voc_root(root) is not None:
        return "voc"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "masks"
    raise UserError(f"'{root}' is not a segmentation data folder: expected ADE20K (images/training + "
                    "annotations/training), Pascal VOC (JPEGImages + SegmentationClass + ImageSets/Segmentation) "
                    "or images/<split> + masks/<split> + classes.txt")


def _pairs(image_dir: Path, mask_dir: Path, stems: list[str] | None = None) -> list[tuple[Path, Path]]:
    """(image, mask) for every image in ``image_dir`` (or the listed ``stems``); a missing mask is an error."""
    if not image_dir.is_dir():
        raise UserError(f"missing folder '{image_dir}'")
    images = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in _IMAGE_EXTENSIONS}
    pairs = []
    for stem in sorted(images) if stems is None else stems:
        if stem not in images:
            raise UserError(f"image '{stem}' is listed but not found in '{image_dir}'")
        mask = mask_dir / f"{stem}.png"
        if not mask.is_file():
            raise UserError(f"no mask for image {images[stem]} (expected {mask})")
        pairs.append((images[stem], mask))
    return pairs


def segmentation_dataset(root: str | os.PathLike, split: str, transform: Callable | None = None,
                         layout: str | None = None) -> SegmentationDataset:
    """The ``split`` ('train', 'val', 'test') of a data folder in any of the three layouts."""
    root = Path(root)
    layout = layout or detect_layout(root)
    if layout == "ade20k":
        folder = {"train": "training", "val": "validation"}.get(split)
        if folder is None:
            raise UserError(f"the ADE20K layout has no '{split}' split (only train and val: validation is the "
                            "held-out one)")
        pairs = _pairs(root / "images" / folder, root / "annotations" / folder)
        return SegmentationDataset(pairs, ADE20K_CLASSES, transform, reduce_zero_label=True, root=root)
    if layout == "voc":
        voc = _voc_root(root) or root
        listing = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise UserError(f"no split list {listing}; the VOC layout needs ImageSets/Segmentation/{split}.txt")
        stems = [s.strip() for s in listing.read_text().splitlines() if s.strip()]
        pairs = _pairs(voc / "JPEGImages", voc / "SegmentationClass", stems)
        return SegmentationDataset(pairs, VOC_CLASSES, transform, root=voc)
    if layout == "masks":
        classes_file = root / "classes.txt"
        if not classes_file.is_file():
            raise UserError(f"'{root}' has no classes.txt; write one class name per line (line i = label i)")
        names = [s.strip() for s in classes_file.read_text().splitlines() if s.strip()]
        if len(names) < 2:
            raise UserError(f"{classes_file} lists {len(names)} class; segmentation needs at least 2")
        if not (root / "images" / split).is_dir():
            raise UserError(f"'{root}' has no images/{split}/ folder (splits are images/<split> + masks/<split>)")
        pairs = _pairs(root / "images" / split, root / "masks" / split)
        return SegmentationDataset(pairs, names, transform, root=root)
    raise ValueError(f"unknown layout {layout!r}")


# -- transforms --------------------------------------------------------------------------------------------------

def normalize_image(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32, normalized by ``mean`` and ``std`` (of [0, 1] values)."""
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255.0)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def _coin() -> bool:
    return bool(torch.randint(2, ()))


def photometric_distortion(image: np.ndarray, hue_delta: int = 18) -> np.ndarray:
    """MMSeg's PhotoMetricDistortion on (H, W, 3) uint8, each step with probability 1/2: brightness ± 32,
    contrast × [0.5, 1.5] (before or after the colour steps), saturation × [0.5, 1.5], hue ± ``hue_delta``
    (on the 0..180 scale)."""
    def clip(x: np.ndarray) -> np.ndarray:
        return np.clip(x, 0, 255).astype(np.uint8)

    def contrast(x: np.ndarray) -> np.ndarray:
        return clip(x.astype(np.float32) * _uniform(0.5, 1.5)) if _coin() else x

    image = clip(image.astype(np.float32) + _uniform(-32, 32)) if _coin() else image
    contrast_first = _coin()
    if contrast_first:
        image = contrast(image)
    saturation = _uniform(0.5, 1.5) if _coin() else None
    hue = int(torch.randint(-hue_delta, hue_delta + 1, ())) if _coin() and hue_delta else None
    if saturation is not None or hue is not None:
        hsv = np.array(Image.fromarray(image).convert("HSV"))
        if saturation is not None:
            hsv[..., 1] = clip(hsv[..., 1].astype(np.float32) * saturation)
        if hue is not None:  # PIL's hue runs over 0..255, MMSeg's (OpenCV's) over 0..180
            hsv[..., 0] = np.round(hsv[..., 0].astype(np.float32) + hue * 256 / 180).astype(np.int64) % 256
        image = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    return image if contrast_first else contrast(image)


def _random_crop_box(label: np.ndarray, crop: tuple[int, int], cat_max_ratio: float,
                     ignore_index: int) -> tuple[int, int]:
    """Top-left of a crop; up to 10 tries for one where no class covers more than ``cat_max_ratio``."""
    h, w = label.shape
    for _ in range(10):
        y = int(torch.randint(max(h - crop[0], 0) + 1, ()))
        x = int(torch.randint(max(w - crop[1], 0) + 1, ()))
        if cat_max_ratio >= 1.0:
            break
        patch = label[y:y + crop[0], x:x + crop[1]]
        _, counts = np.unique(patch[patch != ignore_index], return_counts=True)
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return y, x


@dataclass
class SegTrainTransform:
    """MMSeg's ADE20K training pipeline: (image (H, W, 3) uint8, label (H, W)) -> ((3, *crop), (*crop) int64).

    Resize to ``scale`` × r (r uniform in ``ratio_range``; (long, short) edge bounds, aspect kept), random crop
    (``cat_max_ratio``), horizontal flip, photometric distortion, normalize, pad to ``crop`` (image 0 after
    normalization, label ``ignore_index``). Randomness from torch's generator (seeded per loader worker).
    """

    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop: tuple[int, int] = (512, 512)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    hue_delta: int = 18
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    ignore_index: int = IGNORE_INDEX

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = label.shape
        ratio = _uniform(*self.ratio_range)
        factor = min(max(self.scale) * ratio / max(h, w), min(self.scale) * ratio / min(h, w))
        size = (int(w * factor + 0.5), int(h * factor + 0.5))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        label = np.asarray(Image.fromarray(label.astype(np.int32)).resize(size, Image.NEAREST)).astype(np.int64)
        y, x = _random_crop_box(label, self.crop, self.cat_max_ratio, self.ignore_index)
        image = image[y:y + self.crop[0], x:x + self.crop[1]]
        label = label[y:y + self.crop[0], x:x + self.crop[1]]
        if float(torch.rand(())) < self.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.photometric:
            image = photometric_distortion(np.ascontiguousarray(image), self.hue_delta)
        x_t = normalize_image(image, self.mean, self.std)
        y_t = torch.from_numpy(np.array(label, dtype=np.int64))
        pad_h, pad_w = self.crop[0] - y_t.shape[0], self.crop[1] - y_t.shape[1]
        if pad_h > 0 or pad_w > 0:
            x_t = torch.nn.functional.pad(x_t, (0, pad_w, 0, pad_h))
            y_t = torch.nn.functional.pad(y_t, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return x_t, y_t


@dataclass
class SegEvalTransform:
    """(image (H, W, 3) uint8, label (H, W)) -> (normalized (3, H, W), (H, W) int64) at the original size:
    the test-time resizing is the inference's job (:func:`unireplknet.models.seg_inference.segment`)."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return normalize_image(image, self.mean, self.std), torch.from_numpy(np.array(label, dtype=np.int64))


def collate_segmentation(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[Any, Any]:
    """Samples -> (images (N, 3, H, W), labels (N, H, W)) when they share a size (training crops), else lists
    of each (evaluation at every image's own size)."""
    images, labels = zip(*batch)
    if all(img.shape == images[0].shape for img in images):
        return torch.stack(images), torch.stack(labels)
    return list(images), list(labels)
