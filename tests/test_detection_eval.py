"""COCO evaluation on cases with known answers, the results JSON, drawn predictions, the embedded scenes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from unireplknet.data.coco import CocoDetection, mask_api
from unireplknet.data.synth_detection import (
    CLASS_NAMES,
    SHAPES,
    make_scene,
    scene_splits,
    synth_coco_root,
    write_synth_coco,
)
from unireplknet.errors import UserError
from unireplknet.tasks.detection import (
    coco_evaluate,
    coco_results,
    draw_detections,
    evaluate_detections,
    image_ids_by_file_name,
    predict_detections,
    save_png,
    write_results_json,
)

from .test_detection_data import write_fixture


def _box_mask(h: int, w: int, box: list[float]) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    x1, y1, x2, y2 = (int(v) for v in box)
    m[y1:y2, x1:x2] = True
    return m


def _gt_dataset(tmp_path, boxes: dict[int, list[list[float]]], h: int = 64, w: int = 96) -> CocoDetection:
    """Images 1..n with rectangle objects (category id 5), their masks the rectangles, in COCO format."""
    (tmp_path / "val").mkdir()
    (tmp_path / "annotations").mkdir()
    images, anns = [], []
    for image_id, bxs in boxes.items():
        Image.new("RGB", (w, h)).save(tmp_path / "val" / f"{image_id}.png")
        images.append(dict(id=image_id, file_name=f"{image_id}.png", height=h, width=w))
        for b in bxs:
            rle = mask_api().encode(np.asfortranarray(_box_mask(h, w, b).numpy().astype(np.uint8)))
            anns.append(dict(id=len(anns) + 1, image_id=image_id, category_id=5, iscrowd=0,
                             bbox=[b[0], b[1], b[2] - b[0], b[3] - b[1]], area=(b[2] - b[0]) * (b[3] - b[1]),
                             segmentation=dict(size=[h, w], counts=rle["counts"].decode())))
    data = dict(images=images, annotations=anns, categories=[dict(id=5, name="box")])
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(data))
    return CocoDetection(tmp_path, "val")


def _detections(boxes: list[list[float]], scores: list[float], h: int = 64, w: int = 96) -> dict[str, torch.Tensor]:
    return dict(boxes=torch.tensor(boxes).reshape(-1, 4), labels=torch.ones(len(boxes), dtype=torch.long),
                scores=torch.tensor(scores), masks=torch.stack([_box_mask(h, w, b) for b in boxes]) if boxes
                else torch.zeros(0, h, w, dtype=torch.bool))


def test_perfect_predictions_score_100_and_empty_ones_0(tmp_path):
    gt = {1: [[10, 10, 50, 50], [60, 5, 90, 40]], 2: [[0, 20, 40, 60]], 3: []}
    ds = _gt_dataset(tmp_path, gt)
    dets = [_detections(gt[i], [0.9] * len(gt[i])) for i in ds.image_ids]
    m = evaluate_detections(ds, dets)
    for t in ("bbox", "segm"):
        assert m[f"{t}_ap"] == pytest.approx(100) and m[f"{t}_ap50"] == pytest.approx(100)
        assert m[f"{t}_ap75"] == pytest.approx(100) and m[f"{t}_apl"] == -1.0  # no large objects: COCO's -1
    none = evaluate_detections(ds, [_detections([], []) for _ in ds.image_ids])
    assert none["bbox_ap"] == 0.0 and none["segm_ap50"] == 0.0


def test_shifted_box_loses_the_strict_thresholds(tmp_path):
    """One 40x40 object, one detection shifted 6 px: IoU 34/46 = 0.739 >= t for t in 0.50…0.70 (5 of the 10
    COCO thresholds), so AP = 50, AP50 = 100, AP75 = 0; the same for the rectangle masks."""
    ds = _gt_dataset(tmp_path, {7: [[10, 10, 50, 50]]})
    m = evaluate_detections(ds, [_detections([[16, 10, 56, 50]], [0.8])])
    for t in ("bbox", "segm"):
        assert m[f"{t}_ap"] == pytest.approx(50) and m[f"{t}_ap50"] == pytest.approx(100)
        assert m[f"{t}_ap75"] == pytest.approx(0)
    # a false positive scored above the true one halves the precision at every threshold it matters
    m2 = evaluate_detections(ds, [_detections([[60, 10, 90, 50], [10, 10, 50, 50]], [0.9, 0.8])])
    assert m2["bbox_ap"] == pytest.approx(50.0, abs=0.5)


def test_results_entries_and_json(tmp_path):
    fx_root = tmp_path / "coco"
    write_fixture(fx_root)
    ds = CocoDetection(fx_root, "val")
    det = _detections([[20, 10, 40, 30]], [0.75], 48, 64)
    det["labels"] = torch.tensor([3])
    results = coco_results([det], [100], ds.label_to_cat_id)
    (r,) = results
    assert r["image_id"] == 100 and r["category_id"] == 11 and r["bbox"] == [20, 10, 20, 20] and r["score"] == 0.75
    assert isinstance(r["segmentation"]["counts"], str)
    assert np.array_equal(mask_api().decode(r["segmentation"]), det["masks"][0].numpy().astype(np.uint8))
    path = write_results_json(tmp_path / "out" / "results.json", results)
    assert json.loads(path.read_text()) == results and not list(path.parent.glob(".*tmp"))
    assert coco_evaluate(ds.coco, results)["bbox_ap"] == pytest.approx(100)
    with pytest.raises(UserError, match="image id"):
        coco_evaluate(ds.coco, [dict(r, image_id=5)])
    assert image_ids_by_file_name(ds.coco) == {"0.png": 100, "1.png": 101}


def test_draw_detections_png(tmp_path):
    image = torch.full((3, 48, 64), 0.5)
    det = _detections([[10, 10, 30, 30], [35, 5, 60, 40]], [0.9, 0.1], 48, 64)
    drawn = draw_detections(image, det, ["box"], score_thresh=0.3)
    assert drawn.dtype == torch.uint8 and drawn.shape == (3, 48, 64)
    base = torch.full((3,), 128, dtype=torch.uint8)
    assert not torch.equal(drawn[:, 20, 20], base)  # inside the kept mask: tinted
    assert not torch.equal(drawn[:, 10, 20], base)  # on its box edge
    assert torch.equal(drawn[:, 25, 50], base)  # the low-score detection is not drawn
    path = save_png(drawn, tmp_path / "pred" / "a.png")
    assert np.array_equal(np.asarray(Image.open(path)), drawn.permute(1, 2, 0).numpy())


def test_embedded_scenes_are_deterministic_and_marker_decides_the_class(tmp_path):
    img_a, objs_a = make_scene(np.random.default_rng([0, 0, 3]), 96)
    img_b, objs_b = make_scene(np.random.default_rng([0, 0, 3]), 96)
    assert np.array_equal(img_a, img_b) and [c for c, _ in objs_a] == [c for c, _ in objs_b]
    assert not np.array_equal(img_a, make_scene(np.random.default_rng([0, 0, 4]), 96)[0])
    modes = set()
    for i in range(40):
        _, objs = make_scene(np.random.default_rng([1, 0, i]), 96)
        image_modes = {(c - 1) // len(SHAPES) for c, _ in objs}
        assert len(image_modes) <= 1  # one marker per image sets the class of all its objects
        modes |= image_modes
        assert all(m.sum() >= 30 for _, m in objs)
    assert modes == {0, 1}

    root = write_synth_coco(tmp_path / "synth", seed=0, size=96, splits=dict(train=6, val=3, test=3))
    stamp = (root / "annotations" / "instances_test.json").stat().st_mtime_ns
    assert write_synth_coco(root, seed=0, size=96, splits=dict(train=6, val=3, test=3)) == root
    assert (root / "annotations" / "instances_test.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    test = CocoDetection(root, "test")
    assert test.class_names == CLASS_NAMES and len(test) == 3
    img, t = test[0]
    assert img.shape == (3, 96, 96) and len(t["boxes"]) == len(t["masks"]) > 0
    for box, mask in zip(t["boxes"], t["masks"]):  # the box is the visible mask's extent
        ys, xs = torch.where(mask > 0)
        assert torch.equal(box, torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32))

    # More training images (task_args.scene_train_images): another cache folder, the same held-out images.
    assert synth_coco_root(tmp_path, 96) == tmp_path / "synth_detection-96"
    bigger = synth_coco_root(tmp_path, 96, 9)
    assert bigger != synth_coco_root(tmp_path, 96) and scene_splits(9) == {"train": 9, "val": 150, "test": 150}
    bigger = write_synth_coco(bigger, seed=0, size=96, splits=dict(scene_splits(9), val=3, test=3))
    assert len(CocoDetection(bigger, "train")) == 9
    for split in ("train", "test"):
        for name in ("00000.png", "00002.png"):
            assert (bigger / split / name).read_bytes() == (root / split / name).read_bytes()


def test_untrained_model_end_to_end_on_coco_fixture(tmp_path):
    from .test_detection_model import tiny_detector

    write_fixture(tmp_path)
    ds = CocoDetection(tmp_path, "val")
    torch.manual_seed(0)
    model = tiny_detector(num_classes=len(ds.class_names), min_size=48, max_size=64)
    dets = predict_detections(model, ds, batch_size=2)
    assert len(dets) == len(ds) and all(d["masks"].shape[1:] == (48, 64) for d in dets)
    metrics = evaluate_detections(ds, dets)
    assert set(metrics) == {f"{t}_{m}" for t in ("bbox", "segm") for m in ("ap", "ap50", "ap75", "aps", "apm", "apl")}
    assert all(-1 <= v <= 100 for v in metrics.values())


def test_label_marker_annotates_the_glyph_in_training_only_and_is_not_scored(tmp_path):
    """`task_args.scene_marker=class`: train instances gain the marker (category 7 for mode a, 8 for b); val/test
    list the 8 categories but no marker, so box AP (a mean over categories with ground truth) is unchanged by any
    marker detection."""
    from unireplknet.data.synth_detection import MARKER_NAMES

    for i in range(10):
        img, objs = make_scene(np.random.default_rng([2, 0, i]), 96)
        img2, objs2 = make_scene(np.random.default_rng([2, 0, i]), 96, with_marker=True)
        assert np.array_equal(img, img2) and len(objs2) == len(objs) + 1
        cat, marker = objs2[-1]
        assert all(np.array_equal(m, m2) for (_, m), (_, m2) in zip(objs, objs2))
        if objs:
            assert cat == 7 + (objs[0][0] - 1) // len(SHAPES)  # the marker's class names the objects' mode
        ys, xs = np.nonzero(marker)
        assert 14 * 14 > marker.sum() >= 40 and xs.max() - xs.min() == 13  # the 14-pixel glyph
    splits = dict(train=4, val=3, test=3)
    root = write_synth_coco(synth_coco_root(tmp_path, 96, 4, label_marker=True), size=96, splits=splits,
                            label_marker=True)
    assert root.name == "synth_detection-96-train4-markers"
    plain = write_synth_coco(tmp_path / "plain", size=96, splits=splits)
    train, test = CocoDetection(root, "train"), CocoDetection(root, "test")
    assert train.class_names == test.class_names == CLASS_NAMES + MARKER_NAMES
    markers = [a for a in train.coco["annotations"] if a["category_id"] > len(CLASS_NAMES)]
    assert len(markers) == 4 and len(train.coco["annotations"]) == 4 + len(CocoDetection(plain, "train").coco[
        "annotations"])
    assert all(a["category_id"] <= len(CLASS_NAMES) for a in test.coco["annotations"])
    assert (root / "test" / "00001.png").read_bytes() == (plain / "test" / "00001.png").read_bytes()
    gt = [dict(image_id=a["image_id"], category_id=a["category_id"], bbox=a["bbox"], score=0.9)
          for a in test.coco["annotations"]]
    fake = [dict(image_id=1, category_id=cat, bbox=[0.0, 0.0, 14.0, 14.0], score=0.99) for cat in (7, 8)]
    assert coco_evaluate(test.coco, gt, ("bbox",))["bbox_ap"] == pytest.approx(100.0)
    assert coco_evaluate(test.coco, gt + fake, ("bbox",)) == coco_evaluate(test.coco, gt, ("bbox",))


def _disc_cue_scenes(seed: int, cue: str, count: int = 24):
    """``count`` scenes of a disc cue with the marker labelled, as (image, marker mask, objects, mode); checks
    that every object's class carries the scene's mode and that the disc has the mode's colour."""
    from unireplknet.data.synth_detection import MODE_COLOURS

    modes = set()
    for i in range(count):
        img, objs = make_scene(np.random.default_rng([seed, 0, i]), 96, with_marker=True, cue=cue)
        (cat, marker), objects = objs[-1], objs[:-1]
        mode = cat - 7
        modes.add(mode)
        assert all((c - 1) // len(SHAPES) == mode for c, _ in objects)
        mean = img[marker].astype(float).mean(0)
        assert np.linalg.norm(mean - MODE_COLOURS[mode]) < 10 < np.linalg.norm(mean - MODE_COLOURS[1 - mode]) - 100
        yield img, marker, objects, mode
    assert modes == {0, 1}


def test_colour_cue_paints_the_mode_on_a_disc_and_keeps_objects_away_from_both_colours(tmp_path):
    """`task_args.scene_cue=colour`: the same disc glyph for both modes, its colour sets the mode; objects never
    take a colour near either mode colour, so only the marker tells the mode. The glyph cue is left as it was."""
    from unireplknet.data.synth_detection import MIN_CONTRAST, MODE_COLOURS

    glyph_only = make_scene(np.random.default_rng([3, 0, 0]), 96)
    assert np.array_equal(glyph_only[0], make_scene(np.random.default_rng([3, 0, 0]), 96, cue="glyph")[0])
    for img, marker, objects, _ in _disc_cue_scenes(3, "colour"):
        ys, xs = np.nonzero(marker)
        assert xs.max() - xs.min() == 13 and ys.max() - ys.min() == 13 and marker.sum() > 0.7 * 14 * 14  # a disc
        for _, m in objects:
            colour = np.median(img[m].astype(float), axis=0)  # the object's colour under its pixel noise
            assert min(np.linalg.norm(colour - np.array(c)) for c in MODE_COLOURS) > MIN_CONTRAST - 30
    root = write_synth_coco(synth_coco_root(tmp_path, 96, 3, cue="colour"), size=96,
                            splits=dict(train=3, val=2, test=2), cue="colour")
    assert root.name == "synth_detection-96-train3-colour" and len(CocoDetection(root, "train")) == 3
    with pytest.raises(ValueError, match="cue"):
        make_scene(np.random.default_rng(0), 96, cue="hue")


def test_beacon_cue_keeps_the_scene_grey_so_the_marker_is_its_only_saturated_part(tmp_path):
    """`task_args.scene_cue=beacon`: the colour-cue disc on a dull scene (low-saturation background, grey strokes
    and grey objects), as in the segmentation beacons set; the objects differ in brightness from what is behind
    them, and the glyph and colour cues are left as they were."""
    import hashlib

    # the glyph and colour scenes as the generator made them before the beacon cue came (fingerprints taken
    # from that version): the runs measured on them stay reproducible
    for cue, fingerprint in (("glyph", "d13b5fd2c85ddfe9"), ("colour", "d91149142a0b5bf7")):
        img, objs = make_scene(np.random.default_rng([3, 0, 1]), 96, with_marker=True, cue=cue)
        assert hashlib.sha1(img.tobytes() + bytes(c for c, _ in objs)).hexdigest()[:16] == fingerprint, cue
    for img, marker, objects, _ in _disc_cue_scenes(4, "beacon"):
        rgb = img.astype(float)
        chroma = rgb.max(-1) - rgb.min(-1)  # 0 for grey; the mode discs have ~190
        # under pixel noise (sd 12 on the background) a dull pixel's chroma stays far below the disc's
        assert np.median(chroma[~marker]) < 60 and np.percentile(chroma[~marker], 99.5) < 120 < chroma[marker].min()
        for _, m in objects:
            colour = np.median(rgb[m], axis=0)
            assert np.ptp(colour) < 12  # grey: the channels agree up to noise
    root = write_synth_coco(synth_coco_root(tmp_path, 96, 3, cue="beacon"), size=96,
                            splits=dict(train=3, val=2, test=2), cue="beacon")
    assert root.name == "synth_detection-96-train3-beacon" and len(CocoDetection(root, "train")) == 3


def test_a_set_written_by_another_run_meanwhile_is_kept_not_replaced(tmp_path, monkeypatch):
    """Two runs that start together both generate the set; the one that finishes second must not delete the
    folder the first is already reading from (it keeps that one and drops its own copy)."""
    import unireplknet.data.synth_detection as sd

    root, splits = tmp_path / "scenes", dict(train=2, val=1, test=1)
    real, other_run_files = sd.make_scene, []

    def make_scene_while_another_run_finishes(*args, **kwargs):
        if not other_run_files:
            monkeypatch.setattr(sd, "make_scene", real)
            sd.write_synth_coco(root, size=64, splits=splits)  # the other run, done first
            other_run_files.append((root / "train" / "00000.png").stat().st_ino)
            monkeypatch.setattr(sd, "make_scene", make_scene_while_another_run_finishes)
        return real(*args, **kwargs)

    monkeypatch.setattr(sd, "make_scene", make_scene_while_another_run_finishes)
    assert sd.write_synth_coco(root, size=64, splits=splits) == root and other_run_files
    assert (root / "train" / "00000.png").stat().st_ino == other_run_files[0]  # the other run's files, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["scenes"]  # no temporary copy left behind
    assert len(CocoDetection(root, "train")) == 2


def test_mode_of_and_image_modes_read_the_mode_from_the_category_ids():
    """Categories 1–3 are mode a, 4–6 mode b, the marker categories (7, 8) have none; an image's mode is its
    objects' (images with only a marker, or nothing, are absent)."""
    from unireplknet.data.synth_detection import image_modes, mode_of

    assert [mode_of(c) for c in range(0, 10)] == [None, 0, 0, 0, 1, 1, 1, None, None, None]
    coco = dict(annotations=[dict(image_id=1, category_id=5), dict(image_id=1, category_id=8),
                             dict(image_id=2, category_id=2), dict(image_id=3, category_id=7)])
    assert image_modes(coco) == {1: 1, 2: 0}
