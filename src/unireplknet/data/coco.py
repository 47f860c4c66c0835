"""COCO instance-segmentation data: ``root/{train,val}/`` images + ``root/annotations/instances_{split}.json``.

A sample is ``(image, target)``: ``image`` a float (3, H, W) tensor in [0, 1]; ``target`` a dict with
``boxes`` (n, 4) xyxy pixels, ``labels`` (n,) int64 in 1..K (COCO's sparse category ids sorted, then
numbered from 1; 0 is background), ``masks`` (n, H, W) uint8 from polygons or RLE (compressed or not) and
``image_id`` (the JSON's id). Crowd regions (``iscrowd=1``) are left out of the targets, as COCO training does;
COCO evaluation still sees them through :attr:`CocoDetection.coco`. Boxes with w or h <= 1 are skipped and
counted (:attr:`CocoDetection.skipped_degenerate`). Mask decoding uses faster-coco-eval (the ``detection``
extra), imported when a dataset is built.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from unireplknet.errors import UserError
from unireplknet.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)
Target = dict[str, Any]


def mask_api() -> Any:
    """faster-coco-eval's pycocotools-compatible mask module (RLE encode/decode, polygons)."""
    try:
        from faster_coco_eval.core import mask
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise UserError("COCO data needs faster-coco-eval: pip install 'unireplknet[detection]'") from err
    return mask


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_text(json.dumps(obj), path)


def read_coco_json(path: Path) -> dict[str, Any]:
    """Read and check an instances JSON: images, annotations and categories that refer to each other."""
    if not path.is_file():
        raise UserError(f"annotation file {path} not found; a COCO dataset folder holds train/, val/ and "
                        "annotations/instances_train.json, annotations/instances_val.json")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); re-export the COCO annotations") from err
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or
               not isinstance(data.get(k), list)]
    if missing:
        raise UserError(f"{path} lacks the COCO list(s) {', '.join(missing)}; expected an instances JSON "
                        "with 'images', 'annotations' and 'categories'")
    if not data["categories"]:
        raise UserError(f"{path} has no categories; list the object classes under 'categories'")
    image_ids = {img.get("id") for img in data["images"]}
    cat_ids = {c.get("id") for c in data["categories"]}
    for ann in data["annotations"]:
        if ann.get("image_id") not in image_ids:
            raise UserError(f"{path}: annotation {ann.get('id')} points to image id {ann.get('image_id')}, "
                            "which is not in 'images'; fix or drop that annotation")
        if ann.get("category_id") not in cat_ids:
            raise UserError(f"{path}: annotation {ann.get('id')} has category id {ann.get('category_id')}, "
                            "which is not in 'categories'")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise UserError(f"{path}: annotation {ann.get('id')} has no valid 'bbox' [x, y, w, h] ({bbox!r})")
    if not any(not a.get("iscrowd", 0) for a in data["annotations"]):
        raise UserError(f"{path} has no (non-crowd) annotations; a split to train or evaluate on needs objects")
    return data


def decode_mask(segmentation: Any, h: int, w: int, bbox: Sequence[float]) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, RLE with list or string counts; none: the box) -> (h, w) uint8."""
    api = mask_api()
    if isinstance(segmentation, list) and segmentation:
        return api.decode(api.merge(api.frPyObjects(segmentation, h, w)))
    if isinstance(segmentation, dict):
        if isinstance(segmentation.get("counts"), list):
            segmentation = api.frPyObjects(segmentation, h, w)
        return api.decode(segmentation)
    out = np.zeros((h, w), np.uint8)
    x, y, bw, bh = bbox
    out[int(y):int(np.ceil(y + bh)), int(x):int(np.ceil(x + bw))] = 1
    return out


class CocoDetection(Dataset):
    """One split of a COCO-layout folder; ``transforms(image, target) -> (image, target)`` runs on
    torchvision ``tv_tensors`` (so v2 transforms move boxes and masks along). ``skip_empty`` drops images
    without a usable object (for training, as MMDetection does); evaluation keeps them."""

    def __init__(self, root: str | os.PathLike, split: str, transforms: Callable | None = None,
                 skip_empty: bool = False) -> None:
        self.root, self.split = Path(root), split
        self.ann_file = self.root / "annotations" / f"instances_{split}.json"
        self.image_dir = self.root / split
        self.coco = read_coco_json(self.ann_file)
        self.transforms = transforms
        cats = sorted(self.coco["categories"], key=lambda c: c["id"])
        self.cat_ids = [c["id"] for c in cats]
        self.class_names = [str(c.get("name", c["id"])) for c in cats]
        cat_to_label = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        self.images = {img["id"]: img for img in self.coco["images"]}
        missing = [img.get("file_name") for img in self.coco["images"]
                   if not (self.image_dir / str(img.get("file_name"))).is_file()]
        if missing:
            raise UserError(f"{self.ann_file} lists {len(missing)} image(s) missing from {self.image_dir}, "
                            f"e.g. '{missing[0]}'; copy them there or drop them from the JSON")
        self.anns: dict[int, list[dict]] = {i: [] for i in self.images}
        self.skipped_degenerate = 0
        for ann in self.coco["annotations"]:
            if ann.get("iscrowd", 0):
                continue
            if ann["bbox"][2] <= 1 or ann["bbox"][3] <= 1:
                self.skipped_degenerate += 1
                continue
            self.anns[ann["image_id"]].append(dict(ann, label=cat_to_label[ann["category_id"]]))
        if self.skipped_degenerate:
            log.warning("skipped %d degenerate box(es) (w or h <= 1) in %s", self.skipped_degenerate, self.ann_file)
        self.image_ids = [i for i in self.images if self.anns[i] or not skip_empty]
        if len(self.image_ids) < len(self.images):
            log.info("%s: %d image(s) without objects left out of training", self.ann_file,
                     len(self.images) - len(self.image_ids))

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def label_to_cat_id(self) -> dict[int, int]:
        return {i + 1: cid for i, cid in enumerate(self.cat_ids)}

    def load_image(self, index: int) -> Image.Image:
        info = self.images[self.image_ids[index]]
        with Image.open(self.image_dir / info["file_name"]) as img:
            return img.convert("RGB")

    def target(self, index: int, h: int, w: int) -> Target:
        """The plain-tensor target of one image (boxes clipped to the image)."""
        image_id = self.image_ids[index]
        anns = self.anns[image_id]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        masks = np.stack([decode_mask(a.get("segmentation"), h, w, a["bbox"]) for a in anns]) if anns \
            else np.zeros((0, h, w), np.uint8)
        return dict(boxes=boxes, labels=torch.tensor([a["label"] for a in anns], dtype=torch.int64),
                    masks=torch.from_numpy(masks), image_id=image_id)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2.functional import pil_to_tensor

        img = self.load_image(index)
        image = tv_tensors.Image(pil_to_tensor(img).float() / 255)
        h, w = image.shape[-2:]
        target = self.target(index, h, w)
        if self.transforms is not None:
            target["boxes"] = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(h, w))
            target["masks"] = tv_tensors.Mask(target["masks"])
            image, target = self.transforms(image, target)
        plain = {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in target.items()}
        return image.as_subclass(torch.Tensor), plain


class RandomSizeCrop:
    """Crop a random (h, w) with each side drawn in [lo, hi] (capped by the image): DETR's crop branch."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        from torchvision.transforms import v2

        h, w = image.shape[-2:]
        size = [int(torch.randint(min(self.lo, s), min(self.hi, s) + 1, ()).item()) for s in (h, w)]
        return v2.RandomCrop(size)(image, target)


def train_transforms(scales: Sequence[int] = tuple(range(480, 801, 32)), max_size: int = 1333,
                     flip: float = 0.5, crop: tuple[Sequence[int], tuple[int, int]] | None = None) -> Callable:
    """Training augmentation (the reference's): horizontal flip, then a resize of the short side to a
    random one of ``scales`` (long side <= ``max_size``); with ``crop=(pre_scales, (lo, hi))`` half the
    samples are first resized to one of ``pre_scales``, cropped to random sides in [lo, hi] (DETR-style;
    the reference uses ((400, 500, 600), (384, 600))). Boxes left with w or h < 1 are dropped."""
    from torchvision.transforms import v2

    resize = v2.RandomShortestSize(list(scales), max_size)
    steps: list[Callable] = [v2.RandomHorizontalFlip(flip)]
    if crop is None:
        steps.append(resize)
    else:
        pre_scales, (lo, hi) = crop
        steps.append(v2.RandomChoice([resize, v2.Compose([v2.RandomShortestSize(list(pre_scales), max_size),
                                                          RandomSizeCrop(lo, hi), resize])]))
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1)]
    return v2.Compose(steps)


def collate_detection(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """A batch as (list of images, list of targets): images keep their own sizes."""
    return [b[0] for b in batch], [b[1] for b in batch]
