"""The embedded detection dataset: procedural scenes whose object classes are set by a far-away marker.

Each ``size``² image has a noisy colour-gradient background, a few distractor strokes, one *marker* in a
random corner and 2–6 objects (disks, squares, triangles) of random colour and size that may occlude each
other. The marker — a hollow square (mode A) or a filled cross (mode B) — decides the class of every object
in the image: the same-looking disk is ``disk_a`` or ``disk_b`` depending on a glyph up to the whole image
away, so a model must carry context across the image (the paper's case for large kernels on dense tasks).
6 classes; masks are the visible parts; objects left with under half their area visible are dropped.
With ``label_marker`` the marker is also a training instance of its own class (``marker_a`` / ``marker_b``: 8
categories), so the glyph's look gets a local signal; val and test list the same 8 categories but no marker
instances, so COCO AP (a mean over the categories with ground truth) scores only the 6 object classes.
With ``cue="colour"`` the marker is one disc for both modes and its colour (red or blue) sets the mode; no
object takes a colour near either, so the marker is still the only evidence of the mode. ``cue="beacon"`` puts
that disc on a dull scene, as in the segmentation beacons set: a low-saturation background, grey strokes and
grey objects (brightness at least ``MIN_CONTRAST / 2`` from what is behind them), so the disc is the only
saturated part of the image.

:func:`write_synth_coco` writes the ``train``/``val``/``test`` splits in the COCO layout (PNG images,
compressed-RLE masks), so the embedded set goes through the same :class:`~unireplknet.data.coco.CocoDetection`
code as real data. Everything is a function of ``seed``.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from unireplknet.data.coco import mask_api, write_json_atomic

log = logging.getLogger(__name__)

SHAPES = ("disk", "square", "triangle")
MODES = ("a", "b")
CLASS_NAMES = [f"{s}_{m}" for m in MODES for s in SHAPES]  # category id i+1 for CLASS_NAMES[i]
MARKER_NAMES = [f"marker_{m}" for m in MODES]  # with label_marker: category ids 7, 8
SPLITS = {"train": 1200, "val": 150, "test": 150}
VERSION = 2  # bump when the generator changes: cached folders are rebuilt
MIN_CONTRAST = 80.0  # RGB distance of an object's colour from the image under its centre
MIN_VISIBLE = 0.5  # objects left with less of their area visible are dropped
CUES = ("glyph", "colour", "beacon")  # what tells the modes apart: the marker's shape, or its colour (on a
# colourful scene for "colour", on a grey one for "beacon")
MODE_COLOURS = ((225.0, 35.0, 35.0), (35.0, 80.0, 225.0))  # cue="colour": the marker disc of mode a / b


def mode_of(category_id: int) -> int | None:
    """The mode (0 = a, 1 = b) of an object category id 1..6; None for the marker categories 7, 8."""
    return (category_id - 1) // len(SHAPES) if 1 <= category_id <= len(CLASS_NAMES) else None


def image_modes(coco: dict) -> dict[int, int]:
    """Image id -> the scene's mode, from an instances JSON of the embedded set (images with an object)."""
    return {a["image_id"]: mode_of(a["category_id"]) for a in coco["annotations"]
            if mode_of(a["category_id"]) is not None}


def _shape_mask(kind: str, cx: float, cy: float, r: float, angle: float, yy: np.ndarray, xx: np.ndarray
                ) -> np.ndarray:
    """Boolean (H, W) mask of a disk / rotated square / rotated triangle of circumradius ``r``."""
    dx, dy = xx - cx, yy - cy
    if kind == "disk":
        return dx * dx + dy * dy <= r * r
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    if kind == "square":
        h = r / np.sqrt(2)
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    inside = np.ones_like(u, dtype=bool)  # triangle: three half-planes at distance r/2 from the centre
    for k in range(3):
        a = angle + np.pi / 2 + 2 * np.pi * k / 3
        inside &= (np.cos(a) * dx + np.sin(a) * dy) <= r / 2
    return inside


def _marker(mode: str, corner: int, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """The mode glyph (14 px) in one corner: hollow square (a), filled cross (b) or, for ``mode="disc"``
    (the colour cue), a filled disc."""
    m = 14
    x0 = 3 if corner % 2 == 0 else size - m - 3
    y0 = 3 if corner < 2 else size - m - 3
    u, v = xx - x0, yy - y0
    box = (u >= 0) & (u < m) & (v >= 0) & (v < m)
    if mode == "disc":
        return (u - m / 2 + 0.5) ** 2 + (v - m / 2 + 0.5) ** 2 <= (m / 2) ** 2
    if mode == "a":
        return box & ((u < 3) | (u >= m - 3) | (v < 3) | (v >= m - 3))
    return box & ((np.abs(u - m / 2 + 0.5) < 2) | (np.abs(v - m / 2 + 0.5) < 2))


def make_scene(rng: np.random.Generator, size: int = 128, with_marker: bool = False, cue: str = "glyph"
               ) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image (size, size, 3) uint8 and its objects as (category id 1..6, visible mask (size, size) bool);
    ``with_marker`` appends the marker as (7 or 8, its mask). The image does not depend on ``with_marker``.
    ``cue="colour"``: the marker is a disc in the mode's colour (:data:`MODE_COLOURS`), and no object takes a
    colour within ``MIN_CONTRAST`` of either mode colour; ``cue="beacon"``: the same disc on a grey scene."""
    if cue not in CUES:
        raise ValueError(f"cue must be one of {CUES}, got {cue!r}")
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    grey = cue == "beacon"
    if grey:  # a dull scene: low-saturation background, grey strokes and objects
        c0, c1 = (255 * np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.2), rng.uniform(0.3, 0.7)))
                  for _ in range(2))
    else:
        c0, c1 = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    t = (np.cos(rng.uniform(0, 2 * np.pi)) * xx + np.sin(rng.uniform(0, 2 * np.pi)) * yy) / size
    img = c0 + (c1 - c0) * ((t - t.min()) / (np.ptp(t) + 1e-6))[..., None]
    img += rng.normal(0, 12, (size, size, 3))
    for _ in range(int(rng.integers(1, 4))):  # distractor strokes
        p, q = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
        d = np.abs((q[1] - p[1]) * (xx - p[0]) - (q[0] - p[0]) * (yy - p[1])) / (np.linalg.norm(q - p) + 1e-6)
        img[d < rng.uniform(0.8, 1.8)] = rng.uniform(0, 255) if grey else rng.uniform(0, 255, 3)
    mode_index, corner = int(rng.integers(2)), int(rng.integers(4))
    objects: list[tuple[int, np.ndarray, int]] = []  # (category, visible mask, full area)
    for _ in range(int(rng.integers(2, 6))):
        kind = int(rng.integers(len(SHAPES)))
        r = rng.uniform(0.11, 0.24) * size
        cx, cy = rng.uniform(r * 0.7, size - r * 0.7, 2)
        full = _shape_mask(SHAPES[kind], cx, cy, r, rng.uniform(0, 2 * np.pi), yy, xx)
        background = img[int(cy), int(cx)]
        if grey:  # a grey shade whose brightness differs from what is behind it
            colour = np.full(3, rng.uniform(0, 255))
            while abs(colour[0] - background.mean()) < MIN_CONTRAST / 2:
                colour = np.full(3, rng.uniform(0, 255))
        else:
            colour = rng.uniform(0, 255, 3)
            while np.linalg.norm(colour - background) < MIN_CONTRAST or (  # visible against what is behind it
                    cue == "colour" and min(np.linalg.norm(colour - np.array(c)) for c in MODE_COLOURS) < MIN_CONTRAST):
                colour = rng.uniform(0, 255, 3)
        img[full] = colour + rng.normal(0, 8, (int(full.sum()), 3))
        objects = [(c, m & ~full, a) for c, m, a in objects]
        objects.append((1 + mode_index * len(SHAPES) + kind, full, int(full.sum())))
    if cue == "glyph":
        marker = _marker(MODES[mode_index], corner, size, yy, xx)  # drawn last: always visible
        img[marker] = (245, 245, 245) if rng.random() < 0.5 else (15, 15, 15)
    else:
        marker = _marker("disc", corner, size, yy, xx)
        img[marker] = np.array(MODE_COLOURS[mode_index]) + rng.normal(0, 8, (int(marker.sum()), 3))
    objects = [(c, m & ~marker, a) for c, m, a in objects]
    kept = [(c, m) for c, m, a in objects if m.sum() >= MIN_VISIBLE * a and m.sum() >= 40]
    if with_marker:
        kept.append((1 + len(CLASS_NAMES) + mode_index, marker))
    return np.clip(img, 0, 255).astype(np.uint8), kept


def scene_splits(train_images: int = SPLITS["train"]) -> dict[str, int]:
    """Split sizes with ``train_images`` training images; val and test keep their default images (sample ``i``
    of a split depends only on ``seed``, the split and ``i``, so held-out sets match across training sizes)."""
    return dict(SPLITS, train=train_images)


def synth_coco_root(cache: Path, size: int = 128, train_images: int = SPLITS["train"],
                    label_marker: bool = False, cue: str = "glyph") -> Path:
    """The cache folder of the embedded set at this image side, training size, marker labelling and cue."""
    suffix = ("" if train_images == SPLITS["train"] else f"-train{train_images}") + ("-markers" if label_marker else "")
    suffix += "" if cue == "glyph" else f"-{cue}"
    return Path(cache) / f"synth_detection-{size}{suffix}"


def _fingerprint(seed: int, size: int, splits: dict[str, int], label_marker: bool, cue: str = "glyph") -> str:
    key = [VERSION, seed, size, sorted(splits.items())] + (["markers"] if label_marker else [])
    key += [] if cue == "glyph" else [cue]
    return hashlib.sha1(json.dumps(key).encode()).hexdigest()[:12]


def write_synth_coco(root: str | os.PathLike, seed: int = 0, size: int = 128,
                     splits: dict[str, int] | None = None, label_marker: bool = False, cue: str = "glyph") -> Path:
    """Write (or reuse, when already complete for these settings) the embedded dataset under ``root``:
    ``{split}/NNNNN.png`` and ``annotations/instances_{split}.json``; returns ``root``. ``label_marker``: the
    ``train`` split also annotates each marker (categories 7, 8), the other splits list those categories only.
    ``cue``: see :func:`make_scene`."""
    from PIL import Image

    root, splits = Path(root), dict(splits or SPLITS)
    stamp = root / ".synth_detection"
    if cue not in CUES:
        raise ValueError(f"cue must be one of {CUES}, got {cue!r}")
    fingerprint = _fingerprint(seed, size, splits, label_marker, cue)
    if stamp.is_file() and stamp.read_text().strip() == fingerprint:
        return root
    api = mask_api()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        names = CLASS_NAMES + (MARKER_NAMES if label_marker else [])
        categories = [dict(id=i + 1, name=n, supercategory=n.split("_")[0]) for i, n in enumerate(names)]
        for split_index, (split, count) in enumerate(splits.items()):
            (tmp / split).mkdir(parents=True)
            images, anns = [], []
            for i in range(count):
                rng = np.random.default_rng([seed, split_index, i])
                img, objects = make_scene(rng, size, with_marker=label_marker and split == "train", cue=cue)
                name = f"{i:05d}.png"
                Image.fromarray(img).save(tmp / split / name)
                images.append(dict(id=i + 1, file_name=name, height=size, width=size))
                for cat, mask in objects:
                    rle = api.encode(np.asfortranarray(mask.astype(np.uint8)))
                    anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=cat, iscrowd=0,
                                     bbox=[float(v) for v in api.toBbox(rle)], area=float(mask.sum()),
                                     segmentation=dict(size=[size, size], counts=rle["counts"].decode("ascii"))))
            write_json_atomic(tmp / "annotations" / f"instances_{split}.json",
                              dict(images=images, annotations=anns, categories=categories))
        (tmp / ".synth_detection").write_text(fingerprint)
        if stamp.is_file() and stamp.read_text().strip() == fingerprint:  # another run wrote it meanwhile: keep
            shutil.rmtree(tmp, ignore_errors=True)  # that one, which it may already be reading
            return root
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("embedded detection dataset written to %s (%s)", root, ", ".join(f"{k} {v}" for k, v in splits.items()))
    return root
