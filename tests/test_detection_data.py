"""COCO-format data: fixtures in the real format (polygons, RLE, crowd, sparse ids), transforms, bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unireplknet.data.coco import CocoDetection, collate_detection, mask_api, train_transforms
from unireplknet.errors import UserError


def _rle(mask: np.ndarray, compressed: bool = True) -> dict:
    """COCO RLE of a (H, W) 0/1 mask: compressed (string counts) or uncompressed (column-major run lengths)."""
    if compressed:
        rle = mask_api().encode(np.asfortranarray(mask.astype(np.uint8)))
        return dict(size=list(rle["size"]), counts=rle["counts"].decode("ascii"))
    flat, counts, value, run = mask.flatten(order="F"), [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return dict(size=list(mask.shape), counts=counts)


def write_fixture(root: Path) -> dict:
    """A tiny COCO folder: 2 train images (polygon, compressed RLE, uncompressed RLE, crowd, degenerate box),
    2 val images (one without objects); category ids 3, 7, 11 (sparse)."""
    rng = np.random.default_rng(0)
    h, w = 48, 64
    for split, n in (("train", 2), ("val", 2)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / split / f"{i}.png")
    sq = np.zeros((h, w), np.uint8)
    sq[10:30, 20:40] = 1  # 20x20 square, box [20, 10, 20, 20]
    blob = np.zeros((h, w), np.uint8)
    blob[5:15, 2:12] = 1
    images = [dict(id=100 + i, file_name=f"{i}.png", height=h, width=w) for i in range(2)]
    cats = [dict(id=c, name=n) for c, n in ((7, "cat"), (3, "ant"), (11, "bee"))]
    train = dict(images=images, categories=cats, annotations=[
        dict(id=1, image_id=100, category_id=3, iscrowd=0, bbox=[20, 10, 20, 20], area=400,
             segmentation=[[20, 10, 40, 10, 40, 30, 20, 30]]),
        dict(id=2, image_id=100, category_id=11, iscrowd=0, bbox=[20, 10, 20, 20], area=400, segmentation=_rle(sq)),
        dict(id=3, image_id=101, category_id=7, iscrowd=0, bbox=[2, 5, 10, 10], area=100,
             segmentation=_rle(blob, compressed=False)),
        dict(id=4, image_id=101, category_id=7, iscrowd=1, bbox=[30, 20, 30, 25], area=750,
             segmentation=_rle(np.pad(np.ones((25, 30), np.uint8), ((20, 3), (30, 4))), compressed=False)),
        dict(id=5, image_id=101, category_id=3, iscrowd=0, bbox=[40, 40, 0.5, 6], area=3, segmentation=[]),
    ])
    val = dict(images=images, categories=cats, annotations=[
        dict(id=1, image_id=100, category_id=11, iscrowd=0, bbox=[20, 10, 20, 20], area=400, segmentation=_rle(sq))])
    (root / "annotations").mkdir()
    for split, data in (("train", train), ("val", val)):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return dict(train=train, val=val, square=sq, blob=blob)


def test_coco_fixture_loads_polygons_rle_and_ignores_crowd(tmp_path, caplog):
    fx = write_fixture(tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(tmp_path, "train")
    assert ds.skipped_degenerate == 1 and "1 degenerate box" in caplog.text and "instances_train.json" in caplog.text
    assert ds.class_names == ["ant", "cat", "bee"] and ds.label_to_cat_id == {1: 3, 2: 7, 3: 11}
    img, t = ds[0]
    assert img.shape == (3, 48, 64) and img.dtype == torch.float32 and img.min() >= 0 and img.max() <= 1
    assert t["image_id"] == 100 and t["labels"].tolist() == [1, 3]
    assert torch.equal(t["boxes"], torch.tensor([[20.0, 10, 40, 30]] * 2))
    assert torch.equal(t["masks"][1], torch.from_numpy(fx["square"]))  # compressed RLE, exact
    poly = t["masks"][0].numpy().astype(bool)  # the polygon rasterizes to (about) the same square
    assert (poly & fx["square"].astype(bool)).sum() / (poly | fx["square"].astype(bool)).sum() > 0.85
    _, t1 = ds[1]  # uncompressed RLE kept, crowd and degenerate left out
    assert t1["labels"].tolist() == [2] and torch.equal(t1["masks"][0], torch.from_numpy(fx["blob"]))
    val = CocoDetection(tmp_path, "val")
    assert len(val) == 2 and len(val[1][1]["boxes"]) == 0 and val[1][1]["masks"].shape == (0, 48, 64)
    assert len(CocoDetection(tmp_path, "val", skip_empty=True)) == 1
    images, targets = collate_detection([val[0], val[1]])
    assert len(images) == 2 and [t["image_id"] for t in targets] == [100, 101]


def test_train_transforms_move_boxes_and_masks_together(tmp_path):
    write_fixture(tmp_path)
    torch.manual_seed(0)
    for crop in (None, ((40, 48), (24, 40))):
        ds = CocoDetection(tmp_path, "train", train_transforms((32, 40, 56), 80, flip=0.5, crop=crop))
        for _ in range(8):
            img, t = ds[0]
            assert min(img.shape[-2:]) <= 56 and max(img.shape[-2:]) <= 80
            assert t["masks"].shape == (len(t["boxes"]), *img.shape[-2:]) and len(t["labels"]) == len(t["boxes"])
            # nearest-neighbour mask resampling moves an edge by up to one source pixel at the output scale
            tol = 1 + (img.shape[-1] / 64 if crop is None else 80 / 24)
            for box, mask in zip(t["boxes"], t["masks"]):
                ys, xs = torch.where(mask > 0)
                if len(xs):  # the box is the mask's extent (a flip or crop that missed either would be far off)
                    mbox = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
                    assert (mbox - box).abs().max() <= tol, (box, mbox)


@pytest.mark.parametrize("breakage,match", [
    ("no_json", "instances_train.json not found"),
    ("bad_json", "instances_train.json is not valid JSON"),
    ("no_lists", "lacks the COCO list"),
    ("missing_image", "missing from"),
    ("orphan", "points to image id 999"),
    ("bad_category", "category id 42"),
    ("empty", "has no \\(non-crowd\\) annotations"),
    ("bad_bbox", "no valid 'bbox'"),
])
def test_bad_coco_input_is_a_one_line_user_error(tmp_path, breakage, match):
    fx = write_fixture(tmp_path)
    ann = tmp_path / "annotations" / "instances_train.json"
    data = fx["train"]
    if breakage == "no_json":
        ann.unlink()
    elif breakage == "bad_json":
        ann.write_text("{not json")
    elif breakage == "no_lists":
        ann.write_text(json.dumps({"images": []}))
    elif breakage == "missing_image":
        (tmp_path / "train" / "1.png").unlink()
    else:
        if breakage == "orphan":
            data["annotations"][0]["image_id"] = 999
        elif breakage == "bad_category":
            data["annotations"][0]["category_id"] = 42
        elif breakage == "empty":
            data["annotations"] = [a for a in data["annotations"] if a["iscrowd"]]
        elif breakage == "bad_bbox":
            data["annotations"][0]["bbox"] = [1, 2, 3]
        ann.write_text(json.dumps(data))
    with pytest.raises(UserError, match=match) as err:
        CocoDetection(tmp_path, "train")
    message = str(err.value)
    assert "\n" not in message and ("instances_train.json" in message or "1.png" in message)
