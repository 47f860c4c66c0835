"""Segmentation metrics (MMSegmentation's definitions) against a float64 brute force; prediction PNGs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from unireplknet.tasks.segmentation import (
    confusion_matrix,
    format_class_table,
    label_image,
    overlay_image,
    palette,
    segmentation_metrics,
    write_prediction_pngs,
)


def brute_force(preds, labels, k, ignore=255):
    """Per-class sets of pixel positions, float64; means skip undefined classes."""
    inter = np.zeros(k)
    union = np.zeros(k)
    gt_area = np.zeros(k)
    for pred, label in zip(preds, labels):
        p, g = pred.numpy().ravel(), label.numpy().ravel()
        for c in range(k):
            in_gt = {i for i in range(g.size) if g[i] == c}
            in_pred = {i for i in range(g.size) if p[i] == c and g[i] != ignore}
            inter[c] += len(in_gt & in_pred)
            union[c] += len(in_gt | in_pred)
            gt_area[c] += len(in_gt)
    iou = [inter[c] / union[c] if union[c] else math.nan for c in range(k)]
    acc = [inter[c] / gt_area[c] if gt_area[c] else math.nan for c in range(k)]
    return (100 * np.nanmean(iou), 100 * np.nanmean(acc), 100 * inter.sum() / gt_area.sum(), iou, acc)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_a_float64_brute_force_on_random_maps(seed):
    gen = torch.Generator().manual_seed(seed)
    k = 6
    preds, labels = [], []
    for _ in range(3):
        h, w = torch.randint(5, 20, (2,), generator=gen).tolist()
        label = torch.randint(0, k - 2, (h, w), generator=gen)  # class k-1 never in the ground truth ...
        label[torch.rand(h, w, generator=gen) < 0.2] = 255
        pred = torch.randint(0, k - 1, (h, w), generator=gen)  # ... class k-1 nowhere: NaN, excluded
        preds.append(pred)
        labels.append(label)
    confusion = sum(confusion_matrix(p, g, k) for p, g in zip(preds, labels))
    m = segmentation_metrics(confusion)
    miou, macc, aacc, iou, acc = brute_force(preds, labels, k)
    assert m["miou"] == pytest.approx(miou, abs=1e-9)
    assert m["macc"] == pytest.approx(macc, abs=1e-9)
    assert m["aacc"] == pytest.approx(aacc, abs=1e-9)
    assert m["per_class_iou"][k - 1] is None and m["per_class_acc"][k - 2] is None
    assert m["per_class_iou"][k - 2] == 0.0  # predicted but absent from the ground truth: counts as 0
    for ours, ref in zip(m["per_class_iou"], iou):
        assert (ours is None and math.isnan(ref)) or ours == pytest.approx(100 * ref, abs=1e-9)
    # DDP: the confusion of the whole equals the sum of the shards' confusions.
    whole = confusion_matrix(torch.cat([p.ravel() for p in preds]), torch.cat([g.ravel() for g in labels]), k)
    assert torch.equal(whole, confusion)


def test_out_of_range_labels_or_predictions_raise():
    with pytest.raises(ValueError, match="label values"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 7], [255, 1]]), 5)
    with pytest.raises(ValueError, match="prediction values"):
        confusion_matrix(torch.tensor([[0, 9]]), torch.tensor([[0, 1]]), 5)
    confusion_matrix(torch.tensor([[0, 9]]), torch.tensor([[0, 255]]), 5)  # ignored pixels are not checked


def test_class_table_lists_every_class_and_the_means():
    m = segmentation_metrics(confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 3))
    table = format_class_table(m, ["sky", "road", "car"])
    assert "| sky |" in table and "| car |" in table and "aAcc 66.67" in table
    assert table.splitlines()[4] == "| car | - | - |"  # in neither prediction nor ground truth


def test_prediction_pngs_hold_class_indices_and_a_blended_overlay(tmp_path):
    colours = palette(21)
    assert colours[0].tolist() == [0, 0, 0] and colours[1].tolist() == [128, 0, 0]
    assert colours[15].tolist() == [192, 128, 128]  # VOC 'person'
    assert len({tuple(c) for c in palette(150)}) == 150
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    label = rng.integers(0, 21, (9, 13))
    label[0, 0] = 255
    label_path, overlay_path = write_prediction_pngs(tmp_path / "out", "img1", image, label, colours, alpha=0.5)
    assert label_path.name == "img1.png" and overlay_path.name == "img1_overlay.png"
    with Image.open(label_path) as img:
        assert img.mode == "P"
        assert np.array_equal(np.array(img), label)
    with Image.open(overlay_path) as img:
        over = np.array(img).astype(int)
    assert np.array_equal(over[0, 0], image[0, 0])  # ignored pixel untouched
    blend = np.round((image[1, 2].astype(float) + colours[label[1, 2]]) / 2)
    assert np.abs(over[1, 2] - blend).max() <= 1
    assert np.array_equal(np.array(overlay_image(image, label, colours, alpha=0.0)), image)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img1.png", "img1_overlay.png"]
    with pytest.raises(ValueError, match="256 classes"):
        label_image(np.full((2, 2), 300), palette(301))
