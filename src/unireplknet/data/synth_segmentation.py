"""The embedded segmentation dataset ("beacons"): the objects' class is set by a marker away from them.

Each ``size``×``size`` image shows 2–4 striped grey objects (ellipses and rotated rectangles of random size,
shade and stripe angle: their look says nothing about their class) among plain grey decoy discs and thin grey
strokes on a dull, noisy gradient, and one *beacon*: a saturated disc in one of ``num_object_classes`` hues,
``min_gap`` (6) pixels or more from every object. Every object takes the class of the beacon's hue;
the beacon, the decoys and the rest are background (0). So the far side of an object is 20–50 px (at 64²)
from the only evidence of its class, farther than a stack of 3×3 convs sees in its early layers: the paper's
case for large kernels on dense tasks.

Deterministic: sample ``i`` of a split comes from ``numpy.random.default_rng((seed, split, i))``.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable

import numpy as np
from torch.utils.data import Dataset

SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_LENGTHS = {"train": 4000, "val": 300, "test": 300}
MARKER_LABELS = ("background", "class", "ignore")
IGNORE_INDEX = 255
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


def _check_marker(marker: str) -> None:
    if marker not in MARKER_LABELS:
        raise ValueError(f"marker must be one of {list(MARKER_LABELS)}, not {marker!r}")


def _disc(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float) -> np.ndarray:
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2


def _free_spot(rng: np.random.Generator, size: int, radius: float, taken: list[tuple[float, float, float]],
               clearance: float, tries: int = 100) -> tuple[float, float] | None:
    """A centre for a disc of ``radius`` inside the image, ``clearance`` px from every taken disc; None if none.

    Rejection sampling, vectorised: all ``tries`` candidates are drawn at once, then the generator is rewound and
    advanced by the draws a one-at-a-time loop would have made, so the samples stay what they were.
    """
    state = rng.bit_generator.state
    centres = rng.uniform(radius + 1, size - radius - 1, (tries, 2))
    others = np.asarray(taken, dtype=np.float64).reshape(-1, 3)
    gaps = np.hypot(centres[:, None, 0] - others[:, 0], centres[:, None, 1] - others[:, 1])
    fits = (gaps >= radius + others[:, 2] + clearance).all(axis=1)
    first = int(np.argmax(fits)) if fits.any() else None
    rng.bit_generator.state = state
    rng.random(2 * (tries if first is None else first + 1))
    return None if first is None else (float(centres[first, 0]), float(centres[first, 1]))


def make_sample(rng: np.random.Generator, size: int = 64, num_object_classes: int = 4,
                objects: tuple[int, int] = (2, 4), beacon_radius: float = 5.0,
                min_gap: float = 6.0, radius: tuple[float, float] = (8.0, 14.0),
                marker: str = "background") -> tuple[np.ndarray, np.ndarray]:
    """One image (size, size, 3) uint8 and its label map (size, size) int64 (0 = background, 255 = not scored).

    ``marker``: the label of the beacon's own pixels, one of :data:`MARKER_LABELS`: ``"background"`` (0),
    ``"class"`` (the class it gives the objects) or ``"ignore"`` (255).
    """
    _check_marker(marker)
    scale = size / 64
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Background: a dull gradient between two low-saturation colours, thin grey strokes.
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
    cls = int(rng.integers(1, num_object_classes + 1))
    beacon_radius *= scale
    taken = [(*rng.uniform(beacon_radius + 1, size - beacon_radius - 1, 2), beacon_radius)]
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        r = rng.uniform(*radius) * scale
        spot = _free_spot(rng, size, r, taken, min_gap * scale)
        if spot is None:
            continue
        taken.append((*spot, r))
        mask = _object_mask(yy, xx, *spot, r, rng)
        local = float(image[int(spot[0]), int(spot[1])].mean())  # keep the object visible on its background
        shade = rng.uniform(0.3, 0.9)
        while abs(shade - local) < 0.15:
            shade = rng.uniform(0.3, 0.9)
        phi, period = rng.uniform(0, np.pi), rng.uniform(3, 5) * scale  # stripes: objects are easy to find ...
        stripes = np.sign(np.sin(2 * np.pi * (xx * np.cos(phi) + yy * np.sin(phi)) / period))
        image[mask] = (shade + rng.uniform(0.08, 0.15) * stripes[mask])[:, None]
        label[mask] = cls  # ... but only the beacon tells their class
    for _ in range(rng.integers(0, 3)):  # plain grey decoys shaped like the beacon
        r = rng.uniform(3, 6) * scale
        if (spot := _free_spot(rng, size, r, taken, 2 * scale)) is not None:
            taken.append((*spot, r))
            image[_disc(yy, xx, *spot, r)] = rng.uniform(0.2, 0.9)
    by, bx, _ = taken[0]
    hue = (cls - 1) / num_object_classes + rng.uniform(-0.03, 0.03)
    beacon = _disc(yy, xx, by, bx, beacon_radius)
    label[beacon] = {"background": 0, "class": cls, "ignore": IGNORE_INDEX}[marker]
    image[beacon] = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0))
    image = image + rng.normal(0, 0.05, image.shape)
    return (image.clip(0, 1) * 255).round().astype(np.uint8), label


class BeaconsDataset(Dataset):
    """Split ``'train'``, ``'val'`` or ``'test'`` of the embedded set; samples as :class:`SegmentationDataset`'s:
    ``transform(image (H, W, 3) uint8, label (H, W) int64)``, or the arrays without a transform."""

    def __init__(self, split: str, transform: Callable | None = None, length: int | None = None,
                 size: int = 64, num_object_classes: int = 4, seed: int = 0, marker: str = "background") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, not {split!r}")
        self.split, self.transform, self.size, self.seed = split, transform, size, seed
        self.length = DEFAULT_LENGTHS[split] if length is None else length
        _check_marker(marker)
        self.num_object_classes, self.marker = num_object_classes, marker
        self.class_names = class_names(num_object_classes)
        self.root = "beacons"

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng((self.seed, SPLITS[self.split], index))
        return make_sample(rng, self.size, self.num_object_classes, marker=self.marker)

    def __getitem__(self, index: int):
        image, label = self.load(index)
        return self.transform(image, label) if self.transform is not None else (image, label)
