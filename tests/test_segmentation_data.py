"""Segmentation data: the ADE20K, Pascal VOC and mask-folder layouts (tiny fixtures written in each real
layout), bad masks, the MMSeg training pipeline and the embedded "beacons" generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unireplknet.data.segmentation import (
    ADE20K_CLASSES,
    VOC_CLASSES,
    SegEvalTransform,
    SegTrainTransform,
    detect_layout,
    photometric_distortion,
    segmentation_dataset,
)
from unireplknet.data.synth_segmentation import BeaconsDataset, class_names, make_sample
from unireplknet.errors import UserError
from unireplknet.tasks.segmentation import palette


def _image(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _mask(path, values: np.ndarray, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(values.astype(np.uint8))
    if mode == "P":
        img.putpalette(palette(256).reshape(-1).tolist())
    img.save(path)


@pytest.fixture
def ade20k(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    raw = np.array([[0, 1, 2, 150], [255, 5, 5, 0], [3, 3, 3, 3]])
    for folder, stems in (("training", ["ADE_train_00000001", "ADE_train_00000002"]),
                          ("validation", ["ADE_val_00000001"])):
        for i, stem in enumerate(stems):
            _image(root / "images" / folder / f"{stem}.jpg", 3, 4, seed=i)
            _mask(root / "annotations" / folder / f"{stem}.png", raw)
    return root, raw


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    raw = np.array([[0, 15, 15, 255], [20, 0, 1, 255]])
    for stem in ("2007_000032", "2007_000039", "2007_000063"):
        _image(root / "JPEGImages" / f"{stem}.jpg", 2, 4)
        _mask(root / "SegmentationClass" / f"{stem}.png", raw, mode="P")
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000032\n2007_000039\n")
    (lists / "val.txt").write_text("2007_000063\n")
    return tmp_path, raw


@pytest.fixture
def mask_folder(tmp_path):
    root = tmp_path / "plain"
    (root / "classes.txt").parent.mkdir(parents=True)
    (root / "classes.txt").write_text("background\nroad\ncar\n")
    raw = np.array([[0, 1, 2], [255, 2, 1]])
    for split in ("train", "val", "test"):
        _image(root / "images" / split / "a.png", 2, 3)
        _mask(root / "masks" / split / "a.png", raw)
    return root, raw


def test_ade20k_layout_ignores_zero_and_shifts_the_other_labels(ade20k):
    root, raw = ade20k
    assert detect_layout(root) == "ade20k"
    train = segmentation_dataset(root, "train")
    assert len(train) == 2 and len(train.class_names) == len(ADE20K_CLASSES) == 150
    image, label = train[0]
    assert image.shape == (3, 4, 3) and image.dtype == np.uint8
    expected = np.where((raw == 0) | (raw == 255), 255, raw - 1)
    assert np.array_equal(label, expected) and label[0, 3] == 149
    assert len(segmentation_dataset(root, "val")) == 1
    with pytest.raises(UserError, match="no 'test' split"):
        segmentation_dataset(root, "test")


def test_voc_layout_reads_palette_indices_and_split_lists(voc):
    parent, raw = voc
    assert detect_layout(parent) == "voc"
    train = segmentation_dataset(parent, "train", SegEvalTransform())
    assert [p[0].stem for p in train.samples] == ["2007_000032", "2007_000039"]
    assert train.class_names == list(VOC_CLASSES)
    image, label = train[1]
    assert image.shape == (3, 2, 4) and image.dtype == torch.float32
    assert torch.equal(label, torch.from_numpy(raw))  # indices, not colours; 255 borders kept as ignore
    assert len(segmentation_dataset(parent, "val")) == 1


def test_mask_folder_layout_with_classes_file_and_three_splits(mask_folder):
    root, raw = mask_folder
    assert detect_layout(root) == "masks"
    for split in ("train", "val", "test"):
        ds = segmentation_dataset(root, split)
        assert ds.class_names == ["background", "road", "car"]
        assert np.array_equal(ds[0][1], raw)
    (root / "classes.txt").unlink()
    with pytest.raises(UserError, match="classes.txt"):
        segmentation_dataset(root, "train")


def test_unknown_folder_layout_is_explained(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(UserError, match="not a segmentation data folder"):
        detect_layout(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        detect_layout(tmp_path / "missing")


def test_bad_masks_are_errors_naming_the_file(mask_folder, ade20k):
    root, raw = mask_folder
    mask = root / "masks" / "train" / "a.png"
    _mask(mask, np.zeros((3, 3)))
    with pytest.raises(UserError, match=r"a\.png is 3×3 but its image .*a\.png is 3×2"):
        segmentation_dataset(root, "train").check()
    _mask(mask, np.array([[0, 1, 3], [255, 2, 1]]))
    with pytest.raises(UserError, match=r"masks/train/a\.png has labels \[3\] outside the classes 0\.\.2"):
        segmentation_dataset(root, "train")[0]
    Image.fromarray(np.zeros((2, 3, 3), dtype=np.uint8)).save(mask)
    with pytest.raises(UserError, match="RGB image; masks must hold class indices"):
        segmentation_dataset(root, "train").check()
    mask.unlink()
    with pytest.raises(UserError, match="no mask for image"):
        segmentation_dataset(root, "train")
    ade_root, ade_raw = ade20k
    bad = ade_raw.copy()
    bad[0, 0] = 151
    _mask(ade_root / "annotations" / "validation" / "ADE_val_00000001.png", bad)
    with pytest.raises(UserError, match=r"ADE_val_00000001\.png has labels \[151\] outside the classes 1\.\.150"):
        segmentation_dataset(ade_root, "val").check()


def test_train_transform_crops_flips_and_pads_with_ignore():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (30, 40))
    tf = SegTrainTransform(scale=(40, 30), ratio_range=(0.5, 2.0), crop=(32, 32))
    seen_pad = False
    for seed in range(12):
        torch.manual_seed(seed)
        x, y = tf(image, label)
        assert x.shape == (3, 32, 32) and y.shape == (32, 32) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= {0, 1, 2, 3, 4, 255}
        seen_pad |= bool((y == 255).any())
    assert seen_pad  # ratio < 1 leaves the resized image smaller than the crop
    torch.manual_seed(3)
    a = tf(image, label)
    torch.manual_seed(3)
    b = tf(image, label)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # No resize, no crop, no jitter: only the flip is left; the label follows the image.
    plain = SegTrainTransform(scale=(40, 30), ratio_range=(1.0, 1.0), crop=(30, 40), photometric=False,
                              flip_prob=1.0, cat_max_ratio=1.0)
    x, y = plain(image, label)
    assert torch.equal(y, torch.from_numpy(label[:, ::-1].copy()))
    assert torch.allclose(x, SegEvalTransform()(image[:, ::-1], label)[0])


def test_crop_prefers_windows_where_no_class_dominates():
    label = np.zeros((8, 40), dtype=np.int64)
    label[:, 30:] = np.arange(10) % 3  # only the right end holds several classes
    image = np.zeros((8, 40, 3), dtype=np.uint8)
    tf = SegTrainTransform(scale=(40, 8), ratio_range=(1.0, 1.0), crop=(8, 8), photometric=False, flip_prob=0.0)
    mixed = 0
    for seed in range(20):
        torch.manual_seed(seed)
        mixed += len(tf(image, label)[1].unique()) > 1
    assert mixed >= 15  # one random window in 33 would be mixed 3 times in 33


def test_photometric_distortion_keeps_grey_grey_and_stays_in_range():
    grey = np.repeat(np.random.default_rng(1).integers(0, 256, (6, 7, 1), dtype=np.uint8), 3, axis=2)
    colour = np.random.default_rng(2).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    changed = 0
    for seed in range(10):
        torch.manual_seed(seed)
        out = photometric_distortion(grey)
        assert out.dtype == np.uint8 and out.shape == grey.shape
        assert np.abs(out.astype(int)[..., 0] - out[..., 1]).max() <= 1  # hue and saturation leave grey alone
        torch.manual_seed(seed)
        changed += not np.array_equal(photometric_distortion(colour), colour)
    assert changed >= 7


def test_beacons_are_deterministic_by_seed_split_and_index():
    a, b = BeaconsDataset("train"), BeaconsDataset("train")
    for i in (0, 7):
        assert all(np.array_equal(u, v) for u, v in zip(a[i], b[i]))
    other = BeaconsDataset("train", seed=1)[0][1]
    assert not np.array_equal(a[0][1], other)
    assert not np.array_equal(a[0][1], BeaconsDataset("test")[0][1])
    assert len(BeaconsDataset("val")) == 300 and class_names(4)[0] == "background"
    image, label = make_sample(np.random.default_rng(0), size=96)
    assert image.shape == (96, 96, 3) and label.shape == (96, 96) and label.max() <= 4


def test_every_object_takes_the_class_of_the_one_beacon_far_from_it():
    import colorsys

    for i in range(20):
        image, label = make_sample(np.random.default_rng(i))
        classes = set(np.unique(label).tolist()) - {0}
        assert len(classes) == 1  # one beacon per image sets every object's class
        rgb = image.reshape(-1, 3) / 255.0
        hsv = np.array([colorsys.rgb_to_hsv(*p) for p in rgb]).reshape(64, 64, 3)
        ys, xs = np.nonzero((hsv[..., 1] > 0.6) & (hsv[..., 2] > 0.6))
        by, bx = np.median(ys), np.median(xs)
        hue = np.median(hsv[ys, xs, 0])
        assert round(hue * 4) % 4 + 1 == classes.pop()
        oy, ox = np.nonzero(label)
        assert np.hypot(oy - by, ox - bx).min() >= 5 + 6 - 1.5  # beacon radius + gap, pixel rounding


def _free_spot_one_at_a_time(rng, size, radius, taken, clearance, tries=100):
    for _ in range(tries):
        cy, cx = rng.uniform(radius + 1, size - radius - 1, 2)
        if all(np.hypot(cy - y, cx - x) >= radius + r + clearance for y, x, r in taken):
            return cy, cx
    return None


@pytest.mark.parametrize("case", range(40))
def test_vectorised_free_spot_draws_what_a_loop_draws_and_leaves_the_generator_where_it_would(case):
    from unireplknet.data.synth_segmentation import _free_spot

    setup = np.random.default_rng(case)
    taken = [tuple(v) for v in setup.uniform([0, 0, 3], [64, 64, 14], (int(setup.integers(1, 8)), 3))]
    radius, clearance = float(setup.uniform(3, 14)), float(setup.uniform(2, 8))
    ours, loop = np.random.default_rng((case, 1)), np.random.default_rng((case, 1))
    spot = _free_spot(ours, 64, radius, taken, clearance)
    expected = _free_spot_one_at_a_time(loop, 64, radius, taken, clearance)
    assert (spot is None) == (expected is None)
    if spot is not None:
        assert spot == (float(expected[0]), float(expected[1]))
    assert ours.random() == loop.random()  # the next draw agrees: the same number of draws was consumed


def test_the_marker_label_option_relabels_the_marker_only():
    for i in range(10):
        image, label = make_sample(np.random.default_rng(i))
        image2, label2 = make_sample(np.random.default_rng(i), marker="class")
        image3, label3 = make_sample(np.random.default_rng(i), marker="ignore")
        assert np.array_equal(image, image2) and np.array_equal(image, image3)
        changed = label2 != label
        cls = int(label.max())
        assert np.all(label[changed] == 0) and np.all(label2[changed] == cls)
        assert np.array_equal(changed, label3 == 255)
        assert 60 <= changed.sum() <= 90  # the disc of radius 5: about 81 pixels
        ys, xs = np.nonzero(changed)
        assert image2[ys, xs].astype(float).std(axis=-1).mean() > 50  # a saturated colour, not a grey object
    split = BeaconsDataset("val", marker="class", length=3)
    assert int((split[0][1] > 0).sum()) > int((BeaconsDataset("val", length=3)[0][1] > 0).sum())
    with pytest.raises(ValueError, match="marker must be one of"):
        BeaconsDataset("val", marker="beacon")
