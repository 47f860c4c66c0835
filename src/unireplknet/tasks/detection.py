"""Detection and instance segmentation: COCO evaluation, COCO results JSON, drawn predictions.

Pure functions the detection task builds on (no engine dependency). Detections are the model's eval
outputs: per image ``dict(boxes (D, 4) xyxy pixels, labels (D,) in 1..K, scores (D,), masks (D, H, W) bool)``.
COCO metrics come from faster-coco-eval (same numbers as pycocotools, ~3.5× faster: docs/detection.md).
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from unireplknet.data.coco import CocoDetection, collate_detection, mask_api, read_coco_json, write_json_atomic
from unireplknet.errors import UserError

log = logging.getLogger(__name__)
Detection = dict[str, torch.Tensor]
METRICS = ("ap", "ap50", "ap75", "aps", "apm", "apl")  # COCOeval.stats[0:6]


@torch.no_grad()
def predict_detections(model: torch.nn.Module, dataset: Dataset, batch_size: int = 8,
                       device: str | torch.device = "cpu") -> list[Detection]:
    """The model's detections (eval mode, on the CPU) for every sample of a detection dataset, in order."""
    model.eval()
    outputs = []
    for images, _ in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_detection):
        for det in model([img.to(device) for img in images]):
            outputs.append({k: v.cpu() for k, v in det.items()})
    return outputs


def coco_results(detections: Sequence[Detection], image_ids: Sequence[int],
                 label_to_cat_id: Mapping[int, int]) -> list[dict[str, Any]]:
    """Detections -> COCO results entries (image_id, category_id (the JSON's), bbox [x, y, w, h], score and,
    with masks, segmentation as compressed RLE with string counts)."""
    if len(detections) != len(image_ids):
        raise ValueError(f"{len(detections)} detections for {len(image_ids)} image ids")
    results = []
    for det, image_id in zip(detections, image_ids):
        boxes = det["boxes"].detach().cpu().double()
        boxes[:, 2:] -= boxes[:, :2]
        rles = [None] * len(boxes)
        if "masks" in det and len(boxes):
            masks = det["masks"].detach().cpu().numpy().astype(np.uint8).transpose(1, 2, 0)  # (H, W, D)
            rles = mask_api().encode(np.asfortranarray(masks))
        for box, label, score, rle in zip(boxes.tolist(), det["labels"].tolist(), det["scores"].tolist(), rles):
            entry = dict(image_id=int(image_id), category_id=int(label_to_cat_id[int(label)]),
                         bbox=[round(v, 2) for v in box], score=round(float(score), 5))
            if rle is not None:
                entry["segmentation"] = dict(size=list(rle["size"]), counts=rle["counts"].decode("ascii"))
            results.append(entry)
    return results


def coco_evaluate(coco_gt: Mapping[str, Any] | str | os.PathLike, results: Sequence[Mapping[str, Any]],
                  iou_types: Sequence[str] = ("bbox", "segm"), image_ids: Sequence[int] | None = None
                  ) -> dict[str, float]:
    """COCO AP of ``results`` against the GT instances JSON (dict or path), in percent:
    ``{bbox,segm}_{ap,ap50,ap75,aps,apm,apl}``. ``image_ids`` limits the evaluation to those images
    (default: every GT image). A size range without GT objects reads -1, as in COCO's summary."""
    from faster_coco_eval import COCO, COCOeval_faster

    if isinstance(coco_gt, (str, os.PathLike)):
        coco_gt = read_coco_json(Path(coco_gt))
    gt = COCO(copy.deepcopy(dict(coco_gt)), print_function=log.debug)
    known = set(gt.getImgIds())
    unknown = {r["image_id"] for r in results} - known
    if unknown:
        raise UserError(f"results name image id(s) {sorted(unknown)[:5]} that the annotation file does not have; "
                        "take the image ids from the same annotation file")
    dt = gt.loadRes(copy.deepcopy(list(results)))
    metrics = {}
    for iou_type in iou_types:
        ev = COCOeval_faster(gt, dt, iou_type, print_function=log.debug)
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        for name, value in zip(METRICS, ev.stats[:6]):
            metrics[f"{iou_type}_{name}"] = float(value) * 100 if value >= 0 else -1.0
    return metrics


def evaluate_detections(dataset: CocoDetection, detections: Sequence[Detection],
                        image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """COCO box and mask AP (percent) of ``detections`` (in ``dataset`` order, or for ``image_ids``)
    against the dataset's annotation file, crowd regions included as COCO does."""
    ids = list(image_ids) if image_ids is not None else list(dataset.image_ids)
    results = coco_results(detections, ids, dataset.label_to_cat_id)
    types = ("bbox", "segm") if all("masks" in d for d in detections) else ("bbox",)
    return coco_evaluate(dataset.coco, results, types, ids)


def image_ids_by_file_name(coco_gt: Mapping[str, Any]) -> dict[str, int]:
    """``file_name`` (and its base name) -> image id of an instances JSON, for naming predicted files."""
    ids = {}
    for img in coco_gt["images"]:
        ids[Path(img["file_name"]).name] = ids[img["file_name"]] = int(img["id"])
    return ids


def write_results_json(path: str | os.PathLike, results: Sequence[Mapping[str, Any]]) -> Path:
    """Write COCO results entries to ``path`` atomically; returns the path."""
    write_json_atomic(path, list(results))
    return Path(path)


def draw_detections(image: torch.Tensor, detection: Detection, class_names: Sequence[str] | None = None,
                    score_thresh: float = 0.3) -> torch.Tensor:
    """(3, H, W) image (float in [0, 1] or uint8) with the masks (alpha 0.45) and labelled boxes of the
    detections scoring >= ``score_thresh`` drawn on it -> (3, H, W) uint8."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    img = image if image.dtype == torch.uint8 else (image.clamp(0, 1) * 255).round().to(torch.uint8)
    keep = detection["scores"] >= score_thresh
    boxes, labels, scores = detection["boxes"][keep], detection["labels"][keep], detection["scores"][keep]
    palette = [tuple(int(c) for c in np.random.default_rng(int(k)).integers(40, 256, 3)) for k in labels.tolist()]
    if "masks" in detection and keep.any():
        img = draw_segmentation_masks(img, detection["masks"][keep].bool(), alpha=0.45, colors=palette)
    names = [f"{class_names[k - 1] if class_names else k} {s:.2f}" for k, s in zip(labels.tolist(), scores.tolist())]
    if len(boxes):
        img = draw_bounding_boxes(img, boxes, labels=names, colors=palette, width=2)
    return img


def save_png(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Save a (3, H, W) uint8 image as PNG atomically; returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
