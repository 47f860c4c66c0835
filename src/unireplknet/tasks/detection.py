"""Object detection and instance segmentation (paper Table 6): Cascade Mask R-CNN (or Mask R-CNN) on the
UniRepLKNet backbone, COCO data, COCO box and mask AP.

``data``: ``scenes`` (the built-in marker-context scenes, written once to the cache as a COCO folder) or a COCO
folder (``train/``, ``val/`` and ``annotations/instances_{train,val}.json``; ``val`` is then the held-out split).
Detections are the model's eval outputs: per image ``dict(boxes (D, 4) xyxy pixels, labels (D,) in 1..K,
scores (D,), masks (D, H, W) bool)``. COCO metrics come from faster-coco-eval (same numbers as pycocotools, ~3.5×
faster: docs/detection.md). A detector's output is a list of boxes after NMS: no ONNX export.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from unireplknet.data.coco import CocoDetection, collate_detection, mask_api, read_coco_json, write_json_atomic
from unireplknet.data.datasets import IMG_EXTENSIONS
from unireplknet.data.synth_detection import CUES
from unireplknet.engine.config import TrainConfig
from unireplknet.engine.loops import eval_batches
from unireplknet.engine.task import Criterion, EvalContext, Request, Task, TaskData
from unireplknet.errors import UserError
from unireplknet.tasks import register_task
from unireplknet.utils.atomic import atomic_file
from unireplknet.utils.typed import check

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

    with atomic_file(path) as f:
        Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(f, format="PNG")
    return Path(path)


@dataclass
class DetectionArgs:
    architecture: Literal["cascade_mask_rcnn", "mask_rcnn"] = "cascade_mask_rcnn"
    backbone: str | None = None  # a timm model (e.g. convnext_atto) instead of the UniRepLKNet of `model`/`arch`
    min_size: int = 800  # test-time short side (the model's own resize)
    max_size: int = 1333  # long side cap, training and test
    train_scales: list[int] = field(default_factory=lambda: list(range(480, 801, 32)))  # random short side
    crop: bool = True  # DETR-style random-crop branch (half the samples)
    crop_scales: list[int] = field(default_factory=lambda: [400, 500, 600])
    crop_size: list[int] = field(default_factory=lambda: [384, 600])
    head: dict[str, Any] = field(default_factory=dict)  # CascadeMaskRCNN settings (fpn_channels, roi_samples, ...)
    scene_size: int = 128  # built-in scenes: image side
    scene_train_images: int = 1200  # built-in scenes: training images (val and test stay 150 each, unchanged)
    scene_marker: str = "background"  # built-in scenes: "class" = the marker glyph is a training instance of its own
    # class (marker_a / marker_b, not scored on val/test); "background" = it is not annotated
    scene_cue: str = "glyph"  # built-in scenes: what sets the mode: the marker's shape ("glyph") or its colour
    draw_threshold: float = 0.3  # predict: boxes drawn from this score
    label_pretrain_steps: int = 0  # > 0: first train the backbone this many steps as a multi-label classifier of
    # the classes each training image holds (tasks/detection_pretrain.py), then the detector from it
    label_pretrain_lr: float = 5e-4  # its AdamW lr (constant)

    def __post_init__(self) -> None:
        check([(self.min_size >= 32 and self.max_size >= self.min_size, "need 32 <= min_size <= max_size"),
               (bool(self.train_scales) and min(self.train_scales) >= 16, "train_scales must be sides >= 16"),
               (len(self.crop_size) == 2 and 0 < self.crop_size[0] <= self.crop_size[1], "crop_size is [lo, hi]"),
               (self.scene_size >= 64, "scene_size must be at least 64"),
               (self.scene_train_images >= 1, "scene_train_images must be at least 1"),
               (self.scene_marker in ("class", "background"), "scene_marker must be 'class' or 'background'"),
               (self.scene_cue in CUES, f"scene_cue must be one of {', '.join(CUES)}"),
               (self.label_pretrain_steps >= 0, "label_pretrain_steps must be >= 0"),
               (self.label_pretrain_lr > 0, "label_pretrain_lr must be > 0")])


@register_task
class DetectionTask(Task):
    name = "detection"
    Args = DetectionArgs
    default_config = "detection_default"
    builtin_data = ("scenes",)
    primary_metric = "bbox_ap"
    mode = "max"
    curves: ClassVar[dict[str, str]] = {"box_ap": "bbox_ap", "mask_ap": "segm_ap"}

    def build_data(self, cfg: TrainConfig, args: DetectionArgs) -> TaskData:
        from unireplknet.data.coco import train_transforms
        from unireplknet.data.datasets import cache_dir, data_folder

        if cfg.data in self.builtin_data:
            from unireplknet.data.synth_detection import scene_splits, synth_coco_root, write_synth_coco

            label_marker = args.scene_marker == "class"
            root = synth_coco_root(cache_dir(), args.scene_size, args.scene_train_images, label_marker, args.scene_cue)
            root = write_synth_coco(root, size=args.scene_size, splits=scene_splits(args.scene_train_images),
                                    label_marker=label_marker, cue=args.scene_cue)
            splits = ("train", "val", "test")
        else:
            root = data_folder(cfg.data or "", "a COCO folder (train/, val/, annotations/instances_*.json), or "
                                               f"one of: {', '.join(self.builtin_data)}")
            splits = ("train", "val", "test") if (root / "annotations" / "instances_test.json").is_file() \
                else ("train", "val")
        crop = (args.crop_scales, tuple(args.crop_size)) if args.crop else None
        sets = {split: CocoDetection(root, split, skip_empty=split == "train",
                                     transforms=train_transforms(args.train_scales, args.max_size, crop=crop)
                                     if split == "train" else None) for split in splits}
        if sets["train"].class_names != sets["val"].class_names:
            raise UserError(f"the categories of {sets['val'].ann_file} differ from the training ones; use one "
                            "category list")
        info = {"class_names": sets["train"].class_names, "cat_ids": sets["train"].cat_ids,
                "skipped_degenerate": sum(d.skipped_degenerate for d in sets.values())}
        return TaskData(sets["train"], sets["val"], sets.get("test"), info, collate=collate_detection)

    def resume_mismatch(self, meta: Mapping[str, Any], data: TaskData) -> str | None:
        if list(meta.get("class_names") or []) != list(data.info["class_names"]):
            return "it was trained on other categories"
        return None

    def model_meta(self, cfg: TrainConfig, args: DetectionArgs, data: TaskData) -> dict[str, Any]:
        size = cfg.model.removeprefix("unireplknet_") if cfg.model else "a"
        kwargs = {**(cfg.arch or {}), **args.head, "num_classes": len(data.info["class_names"]),
                  "min_size": args.min_size, "max_size": args.max_size}
        if args.backbone:
            kwargs["timm_backbone"] = args.backbone
        name = f"{args.architecture}_timm" if args.backbone else f"{args.architecture}_unireplknet_{size}"
        return {"model": name, "model_kwargs": kwargs,
                "class_names": data.info["class_names"], "cat_ids": data.info["cat_ids"],
                "input_size": [3, args.min_size, args.min_size]}

    def build_model(self, cfg: TrainConfig, args: DetectionArgs, data: TaskData) -> nn.Module:
        import unireplknet

        meta = self.model_meta(cfg, args, data)
        try:
            model = unireplknet.create_model(meta["model"], pretrained=cfg.pretrained, drop_path_rate=cfg.drop_path,
                                             **meta["model_kwargs"])
        except (TypeError, ValueError) as err:
            raise UserError(f"bad detection model settings (model/arch/task_args.head): {err}") from None
        if cfg.finetune:
            from unireplknet.models.detection import load_backbone

            load_backbone(model, cfg.finetune)
        if args.label_pretrain_steps:
            from unireplknet.tasks.detection_pretrain import pretrain_on_image_labels, pretrained_backbone

            def run_pretraining() -> None:
                from unireplknet.engine.distributed import resolve_device

                model.to(resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0))))
                pretrain_on_image_labels(model, data.train, data.val, len(data.info["class_names"]),
                                         args.label_pretrain_steps, args.label_pretrain_lr, cfg.batch_size,
                                         data.collate, seed=cfg.seed)
                model.cpu()

            pretrained_backbone(model, Path(cfg.output) / "image_label_backbone.pt" if cfg.output else None,
                                run_pretraining)
        return model

    def model_label(self, cfg: TrainConfig) -> str:
        args = self.parse_args(cfg.task_args)
        return f"{args.architecture} on {f'{args.backbone} (timm)' if args.backbone else super().model_label(cfg)}"

    def criterion(self, cfg: TrainConfig, args: DetectionArgs, data: TaskData) -> Criterion:
        """The detector's own losses (RPN, every cascade stage's box and mask losses, weighted), summed."""
        return lambda model, images, targets: sum(model(images, targets).values())

    def evaluate(self, model: nn.Module, loader: Any, ctx: EvalContext) -> dict[str, Any]:
        """COCO box and mask AP (percent) over the images seen (every rank's, gathered)."""
        from unireplknet.engine.distributed import all_gather_object

        seen: list[tuple[int, Detection]] = []
        for detections, _, targets in eval_batches(model, loader, ctx):
            seen += [(int(t["image_id"]), {k: v.cpu() for k, v in d.items()}) for d, t in zip(detections, targets)]
        if ctx.distributed:
            seen = [pair for part in all_gather_object(seen) for pair in part]
        dataset = loader.dataset
        ids = [i for i, _ in seen]
        metrics = evaluate_detections(dataset, [d for _, d in seen], ids) if seen else {}
        return {**metrics, "samples": len(ids)}

    def extra_summary(self, model: nn.Module, cfg: TrainConfig, args: DetectionArgs, data: TaskData,
                      device: torch.device) -> dict[str, Any]:
        """The degenerate boxes skipped, and the process CPU time so far (all threads; the recipe's budget is set
        in CPU time because wall time depends on what else the machine runs)."""
        return {"skipped_degenerate_boxes": data.info["skipped_degenerate"],
                "process_cpu_s": round(time.process_time(), 1)}

    def summary_lines(self, summary: Mapping[str, Any]) -> list[str]:
        ap = {k: summary.get(f"test_{k}", float("nan")) for k in ("bbox_ap", "bbox_ap50", "bbox_ap75", "segm_ap")}
        return [f"  held-out ({summary['test_split']}) box AP {ap['bbox_ap']:.2f} (AP50 {ap['bbox_ap50']:.2f}, AP75 "
                f"{ap['bbox_ap75']:.2f})  mask AP {ap['segm_ap']:.2f}  ({summary['test_samples']} images)"]

    def export_blocker(self, meta: Mapping[str, Any]) -> str | None:
        return "a detector returns a list of boxes per image after NMS, which ONNX export does not cover here"

    def predict(self, model: nn.Module, meta: Mapping[str, Any], request: Request) -> Any:
        """COCO-format results for the images (``--data``: image ids from that dataset's annotation files), and
        with ``--output`` also ``results.json`` and one PNG per image with the boxes and masks drawn."""
        from torchvision.transforms.v2.functional import pil_to_tensor

        from unireplknet.tasks.classification import collect_files, load_image

        self.check_img_size(request.img_size)
        files = collect_files(request.inputs, IMG_EXTENSIONS)
        images = [load_image(f, lambda img: pil_to_tensor(img).float() / 255) for f in files]
        ids = dict(enumerate(range(1, len(files) + 1)))
        if request.data:
            from unireplknet.data.datasets import data_folder

            known: dict[str, int] = {}
            for ann in sorted((data_folder(request.data, "a COCO folder") / "annotations").glob("instances_*.json")):
                known |= image_ids_by_file_name(read_coco_json(ann))
            ids = {i: known.get(f.name, i + 1) for i, f in enumerate(files)}
        model.eval().to(request.device)
        detections = []
        with torch.inference_mode():
            for start in range(0, len(images), request.batch_size):
                batch = [img.to(request.device) for img in images[start:start + request.batch_size]]
                detections += [{k: v.cpu() for k, v in d.items()} for d in model(batch)]
        label_to_cat = {i + 1: c for i, c in enumerate(meta.get("cat_ids") or range(1, 1 + len(meta["class_names"])))}
        results = coco_results(detections, [ids[i] for i in range(len(files))], label_to_cat)
        if request.output is not None:
            args = self.parse_args(meta.get("task_args") or {})
            write_results_json(request.output / "results.json", results)
            for f, img, det in zip(files, images, detections):
                save_png(draw_detections(img, det, meta["class_names"], args.draw_threshold),
                         request.output / f"{f.stem}.png")
        return results
