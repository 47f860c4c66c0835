"""Referring data: the built-in moving shapes (every attribute matters, held-out colour-shape pairs, determinism)
and the Ref-YouTube-VOS / Refer-DAVIS17 layout on fixtures written here, with its bad-input errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from unireplknet.data.referring import (
    ATTRIBUTES,
    COLOURS,
    HELD_OUT_PAIRS,
    MOTIONS,
    SHAPES,
    MovingShapes,
    ReferVOS,
    words,
)
from unireplknet.errors import UserError
from unireplknet.modalities.text import WordTokenizer

PALETTE = [0, 0, 0, 200, 0, 0, 0, 200, 0] + [0] * (256 * 3 - 9)


def write_refer_vos(root: Path, splits=("train", "valid"), videos: int = 2, frames: int = 5, size=(40, 30)) -> Path:
    """A tiny dataset in the Ref-YouTube-VOS layout: per video two rectangles (ids 1 and 2) moving right/down, JPEG
    frames, palette PNG annotations, meta_expressions/<split>/meta_expressions.json and <split>/meta.json."""
    from PIL import Image

    W, H = size
    for split in splits:
        meta, objects = {"videos": {}}, {"videos": {}}
        for v in range(videos):
            name = f"{split}_video{v}"
            (root / split / "JPEGImages" / name).mkdir(parents=True)
            (root / split / "Annotations" / name).mkdir(parents=True)
            names = [f"{t:05d}" for t in range(frames)]
            for t, stem in enumerate(names):
                ids = np.zeros((H, W), np.uint8)
                ids[5:12, 2 + 3 * t: 10 + 3 * t] = 1
                ids[15 + 2 * t: 22 + 2 * t, 20:28] = 2
                rgb = np.zeros((H, W, 3), np.uint8) + 30
                rgb[ids == 1], rgb[ids == 2] = (220, 40, 40), (40, 200, 60)
                Image.fromarray(rgb).save(root / split / "JPEGImages" / name / f"{stem}.jpg", quality=95)
                png = Image.fromarray(ids, mode="P")
                png.putpalette(PALETTE)
                png.save(root / split / "Annotations" / name / f"{stem}.png")
            meta["videos"][name] = {"frames": names, "expressions": {
                "0": {"exp": "the red box moving right", "obj_id": "1", "type": "full_video"},
                "1": {"exp": "the green box", "obj_id": "2", "type": "first_frame"}}}
            objects["videos"][name] = {"objects": {"1": {"category": "box"}, "2": {"category": "box"}}}
        (root / "meta_expressions" / split).mkdir(parents=True)
        (root / "meta_expressions" / split / "meta_expressions.json").write_text(json.dumps(meta))
        (root / split / "meta.json").write_text(json.dumps(objects))
    return root


# -- moving shapes -----------------------------------------------------------------------------------------------------
def _attributes(text: str) -> dict[str, str]:
    w = set(words(text))
    return {"colour": next(c for c in COLOURS if c in w), "shape": next(s for s in SHAPES if s in w)}


def test_every_distractor_differs_in_one_attribute_and_training_never_shows_held_out_pairs():
    for split in ("train", "val", "test"):
        data = MovingShapes(split, 1)
        for seed in range(200):
            rng = np.random.default_rng(seed)
            target = data._target(rng)
            assert ((target.colour, target.shape) in HELD_OUT_PAIRS) == (split == "test")
            others = data._distractors(target, rng)
            assert 2 <= len(others) <= 4
            changed = [[a for a in ATTRIBUTES if getattr(o, a) != getattr(target, a)] for o in others]
            assert all(len(c) == 1 for c in changed) and len({c[0] for c in changed}) == len(changed)
            if split != "test":
                assert not any((o.colour, o.shape) in HELD_OUT_PAIRS for o in others)


@pytest.mark.parametrize("split", ["train", "test"])
def test_clips_show_the_named_object(split):
    """The mask covers pixels of the named colour in every frame, and its centre moves the named way."""
    data = MovingShapes(split, 1, num_frames=4, size=48, expression_type="full_video")
    for seed in range(20):
        frames, masks, text = data.make(np.random.default_rng(seed))
        assert frames.shape == (4, 3, 48, 48) and masks.shape == (4, 48, 48) and masks.dtype == np.uint8
        attrs = _attributes(text)
        assert ((attrs["colour"], attrs["shape"]) in HELD_OUT_PAIRS) == (split == "test")
        motion = next(m for m in MOTIONS if m in words(text))
        colour = np.asarray(COLOURS[attrs["colour"]])
        centres = []
        for t in range(4):
            m = masks[t] > 0
            assert m.sum() > 10
            pixels = frames[t][:, m].T  # (n, 3)
            assert np.all(np.abs(pixels / pixels.max(1, keepdims=True) - colour / colour.max()) < 0.05)
            ys, xs = np.nonzero(m)
            centres.append((xs.mean(), ys.mean()))
        dx, dy = np.subtract(centres[-1], centres[0])
        assert np.sign([dx, dy]).tolist() == [float(v) for v in MOTIONS[motion]] or (
            abs(dx) > 2 * abs(dy) if MOTIONS[motion][0] else abs(dy) > 2 * abs(dx))
        assert np.dot([dx, dy], MOTIONS[motion]) > 2


def test_first_frame_expressions_and_determinism():
    data = MovingShapes("val", 30, num_frames=3, size=40, expression_type="first_frame",
                        tokenize=WordTokenizer(MovingShapes.vocabulary(), 16))
    texts = [data.text_of(i) for i in range(30)]
    assert not any(m in words(t) for t in texts for m in ("moving", "moves", "goes", "heading"))
    assert any(set(words(t)) & {"left", "right", "top", "bottom"} for t in texts)
    (f1, tok1), (m1, valid, idx) = data[3]
    (f2, tok2), (m2, _, _) = data[3]
    assert torch.equal(f1, f2) and torch.equal(m1, m2) and torch.equal(tok1, tok2) and int(idx) == 3
    assert valid.all() and tok1.shape == (16,) and int((tok1 == WordTokenizer.UNK).sum()) == 0
    assert set(MovingShapes.vocabulary()) >= {w for t in texts for w in words(t)}


# -- the Ref-YouTube-VOS layout ----------------------------------------------------------------------------------------
def test_refer_vos_windows_masks_and_types(tmp_path):
    root = write_refer_vos(tmp_path / "ref")
    tok = WordTokenizer(["the", "red", "green", "box", "moving", "right"], 8)
    train = ReferVOS(root, "train", num_frames=2, size=32, train=True, tokenize=tok)
    val = ReferVOS(root, "valid", num_frames=2, size=32, tokenize=tok)
    assert len(train) == 4 and train.num_expressions == 4
    assert len(val) == 4 * 3 and val.num_expressions == 4  # 5 frames in windows of 2: 3 windows
    (frames, tokens), (masks, valid, idx) = val[5]  # expression 1 (windows 3-5), its last window: frame 4
    assert frames.shape == (2, 3, 32, 32) and masks.shape == (2, 32, 32)
    assert valid.tolist() == [True, False] and int(idx) == 1
    # expression 1 is object 2 (the green box, rows 15-22 of 30 in frame 4, resized to 32)
    assert masks[0].sum() > 0 and masks[0][:, :16].sum() == 0
    assert tokens.tolist()[:3] == [2, 4, 5]  # the green box
    first = ReferVOS(root, "valid", num_frames=2, size=32, expression_type="first_frame")
    assert first.num_expressions == 2 and all(e.kind == "first_frame" for e in first.expressions)
    (_, _), (m, v, _) = train[0]  # a random window of the red box
    assert v.all() and m.flatten(1).sum(1).gt(0).all()


def _first_files(root: Path, split: str = "train") -> tuple[Path, Path]:
    return (next((root / split / "JPEGImages" / f"{split}_video0").glob("*.jpg")),
            next((root / split / "Annotations" / f"{split}_video0").glob("*.png")))


def test_refer_vos_bad_input_names_the_file(tmp_path):
    from PIL import Image

    # a missing frame
    root = write_refer_vos(tmp_path / "a", splits=("train",))
    frame, _ = _first_files(root)
    frame.unlink()
    with pytest.raises(UserError, match=re.escape(str(frame))):
        ReferVOS(root, "train", 2, 32)
    # a mask of the wrong size
    root = write_refer_vos(tmp_path / "b", splits=("train",))
    _, mask = _first_files(root)
    Image.new("P", (20, 20)).save(mask)
    with pytest.raises(UserError, match=f"{re.escape(str(mask))}.*20x20"):
        ReferVOS(root, "train", 5, 32)[0]
    # an expression naming an absent object id: meta.json says so up front; without it, the annotations do
    root = write_refer_vos(tmp_path / "c", splits=("train",))
    exp_file = root / "meta_expressions" / "train" / "meta_expressions.json"
    meta = json.loads(exp_file.read_text())
    meta["videos"]["train_video1"]["expressions"]["1"]["obj_id"] = "7"
    exp_file.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="object 7.*meta.json"):
        ReferVOS(root, "train", 2, 32)
    (root / "train" / "meta.json").unlink()
    data = ReferVOS(root, "train", 2, 32)
    with pytest.raises(UserError, match="names object 7, which no annotation.*train_video1"):
        data[len(data) - 1]
    # an empty caption
    meta["videos"]["train_video1"]["expressions"]["1"] = {"exp": "  ", "obj_id": "1"}
    exp_file.write_text(json.dumps(meta))
    with pytest.raises(UserError, match=f"{re.escape(str(exp_file))}.* empty sentence"):
        ReferVOS(root, "train", 2, 32)
    # an RGB annotation is not a map of ids
    root = write_refer_vos(tmp_path / "d", splits=("train",))
    _, mask = _first_files(root)
    Image.new("RGB", (40, 30)).save(mask)
    with pytest.raises(UserError, match=f"{re.escape(str(mask))}.*palette"):
        ReferVOS(root, "train", 5, 32)[0]
