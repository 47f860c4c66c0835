"""The embedded segmentation dataset ("beacons"): an object's class is set by a marker away from it.

Each ``size``×``size`` image shows 2–3 grey objects (ellipses and rotated rectangles of random size, shade and
noise: their look says nothing about their class) on a dull, noisy gradient with thin grey clutter strokes.
Every object has a *beacon*, a small saturated disc of one of ``num_object_classes`` hues placed
``gap`` pixels beyond the object's edge in a random direction, nearer to its own object than to any other;
the object's pixels take the class of its beacon's hue. Beacons and everything else are background (0).
So labelling an object needs context ``gap`` + the object's size away (24–50 px at 64² by default), farther
than a stack of 3×3 convs sees in its early layers: the paper's case for large kernels on dense tasks.

Deterministic: sample ``i`` of a split comes from ``numpy.random.default_rng((seed, split, i))``.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable

import numpy as np
from torch.utils.data import Dataset

SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_LENGTHS = {"train": 4000, "val": 300, "test": 300}
HUE_NAMES = {0: "red", 90: "lime", 180: "cyan", 270: "violet", 45: "orange", 135: "green", 225: "blue",
             315: "magenta"}


def class_names(num_object_classes: int = 4) -> list[str]:
    hues = [round(360 * k / num_object_classes) for k in range(num_object_classes)]
    return ["background"] + [HUE_NAMES.get(h, f"hue{h}") for h in hues]


def _object_mask(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float,
                 rng: np.random.Generator) -> np.ndarray:
    """A random ellipse or rotated rectangle that fits in a disc of ``radius`` around (cy, cx)."""
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    aspect = rng.uniform(0.55, 1.0)
    if rng.random() < 0.5:
        return (u / radius) ** 2 + (v / (radius * aspect)) ** 2 <= 1.0
    half = radius / np.hypot(1.0, aspect)  # the rectangle's corners touch the bounding disc
    return (np.abs(u) <= half) & (np.abs(v) <= half * aspect)


def _place_objects(rng: np.random.Generator, size: int, count: int, radius: tuple[float, float],
                   gap: tuple[float, float], beacon_radius: float) -> list[tuple[float, float, float, float, float]]:
    """(cy, cx, r, by, bx) per object: disjoint objects, each beacon off every object and nearest its own."""
    placed: list[tuple[float, float, float, float, float]] = []
    margin = beacon_radius + 1
    for _ in range(400):
        if len(placed) == count:
            break
        r = rng.uniform(*radius)
        cy, cx = rng.uniform(r + 1, size - r - 1, 2)
        if any(np.hypot(cy - o[0], cx - o[1]) < r + o[2] + 4 for o in placed):
            continue
        theta, d = rng.uniform(0, 2 * np.pi), r + rng.uniform(*gap)
        by, bx = cy + d * np.sin(theta), cx + d * np.cos(theta)
        if not (margin <= by <= size - margin and margin <= bx <= size - margin):
            continue
        own = d - r
        ok = all(np.hypot(by - o[0], bx - o[1]) - o[2] > max(1.6 * own, own + 6) for o in placed) and \
            all(np.hypot(o[3] - cy, o[4] - cx) - r > max(1.6 * (np.hypot(o[3] - o[0], o[4] - o[1]) - o[2]),
                                                         np.hypot(o[3] - o[0], o[4] - o[1]) - o[2] + 6)
                for o in placed)
        if ok:
            placed.append((cy, cx, r, by, bx))
    return placed


def make_sample(rng: np.random.Generator, size: int = 64, num_object_classes: int = 4,
                objects: tuple[int, int] = (2, 3)) -> tuple[np.ndarray, np.ndarray]:
    """One image (size, size, 3) uint8 and its label map (size, size) int64 (0 = background)."""
    scale = size / 64
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Background: a dull gradient between two low-saturation colours, noise, thin grey strokes.
    c0, c1 = (np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.25), rng.uniform(0.25, 0.75)))
              for _ in range(2))
    t = ((xx * np.cos(a := rng.uniform(0, 2 * np.pi)) + yy * np.sin(a)) / size + 1) / 2
    image = (1 - t)[..., None] * c0 + t[..., None] * c1
    for _ in range(rng.integers(1, 4)):
        (y0, x0), (y1, x1) = rng.uniform(0, size, (2, 2))
        length = np.hypot(y1 - y0, x1 - x0) + 1e-6
        dist = np.abs((x1 - x0) * (y0 - yy) - (x0 - xx) * (y1 - y0)) / length
        along = ((xx - x0) * (x1 - x0) + (yy - y0) * (y1 - y0)) / length ** 2
        image[(dist <= rng.uniform(0.5, 1.3) * scale) & (along >= 0) & (along <= 1)] = rng.uniform(0.3, 0.8)
    label = np.zeros((size, size), dtype=np.int64)
    beacon_radius = 3.0 * scale
    count = int(rng.integers(objects[0], objects[1] + 1))
    for cy, cx, r, by, bx in _place_objects(rng, size, count, (7 * scale, 12 * scale), (5 * scale, 14 * scale),
                                            beacon_radius):
        cls = int(rng.integers(1, num_object_classes + 1))
        mask = _object_mask(yy, xx, cy, cx, r, rng)
        local = float(image[int(cy), int(cx)].mean())  # keep the object visible against its background
        shade = rng.uniform(0.3, 0.9)
        while abs(shade - local) < 0.15:
            shade = rng.uniform(0.3, 0.9)
        phi, period = rng.uniform(0, np.pi), rng.uniform(3, 5) * scale  # stripes: objects are easy to find ...
        stripes = np.sign(np.sin(2 * np.pi * (xx * np.cos(phi) + yy * np.sin(phi)) / period))
        image[mask] = (shade + rng.uniform(0.08, 0.15) * stripes[mask])[:, None]
        label[mask] = cls  # ... and only their beacon tells which class they are
        hue = (cls - 1) / num_object_classes + rng.uniform(-0.03, 0.03)
        image[(yy - by) ** 2 + (xx - bx) ** 2 <= beacon_radius ** 2] = colorsys.hsv_to_rgb(
            hue % 1.0, rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0))
    image = image + rng.normal(0, 0.05, image.shape)
    return (image.clip(0, 1) * 255).round().astype(np.uint8), label


class BeaconsDataset(Dataset):
    """Split ``'train'``, ``'val'`` or ``'test'`` of the embedded set; samples as :class:`SegmentationDataset`'s:
    ``transform(image (H, W, 3) uint8, label (H, W) int64)``, or the arrays without a transform."""

    def __init__(self, split: str, transform: Callable | None = None, length: int | None = None,
                 size: int = 64, num_object_classes: int = 4, seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, not {split!r}")
        self.split, self.transform, self.size, self.seed = split, transform, size, seed
        self.length = DEFAULT_LENGTHS[split] if length is None else length
        self.num_object_classes = num_object_classes
        self.class_names = class_names(num_object_classes)
        self.root = "beacons"

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng((self.seed, SPLITS[self.split], index))
        return make_sample(rng, self.size, self.num_object_classes)

    def __getitem__(self, index: int):
        image, label = self.load(index)
        return self.transform(image, label) if self.transform is not None else (image, label)
