"""Referring video object segmentation data: a sentence picks out one object of a clip, the target is its mask in
every frame (Refer-DAVIS17 / Ref-YouTube-VOS, paper Table 15).

Every dataset returns ``((frames (T, 3, S, S) float32 normalized, tokens (L,) int64), (masks (T, S, S) uint8,
valid (T,) bool, expression index int64))``: ``valid`` marks the frames of a window that exist (a video's last
window is padded by repeating its last frame), the index groups the windows of one expression for the metrics.

* :class:`MovingShapes` — the built-in data (``--data moving_shapes``): clips of several coloured shapes moving in
  straight lines; the expression names colour, size, shape and motion ("the small red square moving left"), and
  each distractor differs from the target in exactly one of them, so every attribute matters. The colour-shape
  pairs of :data:`HELD_OUT_PAIRS` never appear in training; the test split's targets all have one.
* :class:`ReferVOS` — the Ref-YouTube-VOS layout (which ReferFormer's conversion also gives Refer-DAVIS17):
  ``<split>/JPEGImages/<video>/<frame>.jpg``, ``<split>/Annotations/<video>/<frame>.png`` (palette PNGs, pixel =
  object id) and ``meta_expressions/<split>/meta_expressions.json`` (or ``<split>/meta_expressions.json``):
  ``{"videos": {video: {"expressions": {id: {"exp": "...", "obj_id": "1"}}, "frames": [...]}}}``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from unireplknet.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["COLOURS", "EXPRESSION_TYPES", "HELD_OUT_PAIRS", "MOTIONS", "MovingShapes", "ReferVOS", "SHAPES",
           "SIZES", "read_frames", "words"]

EXPRESSION_TYPES = ("full_video", "first_frame")  # Table 15: written watching the whole video / the first frame
COLOURS = {"red": (0.85, 0.15, 0.15), "green": (0.15, 0.72, 0.2), "blue": (0.2, 0.35, 0.92),
           "yellow": (0.9, 0.8, 0.12)}
SHAPES = ("square", "circle", "triangle")
SIZES = {"small": 0.085, "large": 0.14}  # radius as a fraction of the frame side
MOTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
HELD_OUT_PAIRS = frozenset({("red", "triangle"), ("green", "square"), ("blue", "circle")})
ATTRIBUTES = ("colour", "size", "shape", "motion")
_VALUES = {"colour": tuple(COLOURS), "size": tuple(SIZES), "shape": SHAPES, "motion": tuple(MOTIONS)}
_SYNONYMS = {"small": ("small", "little"), "large": ("large", "big")}
_FULL_VIDEO = ("the {size} {colour} {shape} moving {motion}", "a {size} {colour} {shape} that moves {motion}",
               "the {colour} {shape} which is {size} and goes {motion}", "{size} {colour} {shape} heading {motion}")
_FIRST_FRAME = ("the {size} {colour} {shape}{where}", "a {colour} {shape} that is {size}{where}")
_WHERE = {"left": " on the left", "right": " on the right", "up": " at the top", "down": " at the bottom"}


def words(text: str) -> list[str]:
    """Lower-case word tokens of a sentence (letters and digits)."""
    return re.findall(r"[a-z0-9]+", text.lower())


@dataclass(frozen=True)
class Shape:
    colour: str
    size: str
    shape: str
    motion: str

    def replace(self, attribute: str, value: str) -> Shape:
        return Shape(**{**self.__dict__, attribute: value})


def _raster(kind: str, cx: float, cy: float, r: float, S: int) -> tuple[slice, slice, np.ndarray]:
    """A shape centred at (cx, cy) with 'radius' r (areas within 20% of a disc's) on an S×S grid of pixel centres:
    (rows, cols, bool mask of that box)."""
    rows = slice(max(0, int(cy - 1.3 * r)), min(S, int(cy + 1.3 * r) + 2))
    cols = slice(max(0, int(cx - 1.3 * r)), min(S, int(cx + 1.3 * r) + 2))
    dy = np.arange(rows.start, rows.stop)[:, None] + 0.5 - cy
    dx = np.arange(cols.start, cols.stop)[None] + 0.5 - cx
    if kind == "circle":
        inside = dx * dx + dy * dy <= r * r
    elif kind == "square":
        inside = np.maximum(np.abs(dx), np.abs(dy)) <= 0.88 * r
    else:  # a triangle pointing up
        top, base, half = -1.2 * r, 0.9 * r, 1.25 * r
        inside = (dy <= base) & (dy >= top) & (np.abs(dx) <= (dy - top) / (base - top) * half)
    return rows, cols, inside


class MovingShapes(Dataset):
    """The built-in referring data: ``num_frames`` frames of ``size``² with 3-5 shapes moving in straight lines.

    The target has a random (colour, size, shape, motion); 2-4 distractors each change one attribute of it (a
    different attribute each), so a model that ignores any attribute fails on the clips with that distractor.
    ``expression_type`` ``full_video`` names all four ("the small red square moving left"); ``first_frame`` names
    what the first frame shows: colour, size and shape, plus where the target is relative to its look-alike (the
    distractor differing in motion only), "on the left", "at the top", .... Train clips are drawn fresh at every
    access (from torch's RNG, so the run's seed fixes them); val clips (seen pairs) and test clips (targets with a
    held-out colour-shape pair) are fixed by their index.
    """

    def __init__(self, split: str, clips: int, num_frames: int = 4, size: int = 64,
                 tokenize: Callable[[str], torch.Tensor] | None = None, expression_type: str = "full_video",
                 mean: Sequence[float] = (0.5,) * 3, std: Sequence[float] = (0.25,) * 3) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', not {split!r}")
        if expression_type not in (*EXPRESSION_TYPES, "all"):
            raise ValueError(f"expression_type must be one of {EXPRESSION_TYPES} or 'all', not {expression_type!r}")
        if size < 24 or num_frames < 2:
            raise ValueError(f"moving_shapes needs frames of at least 24² and 2 frames, got {size}² and {num_frames}")
        self.split, self.clips, self.T, self.S = split, clips, num_frames, size
        self.tokenize, self.expression_type = tokenize, expression_type
        self.mean, self.std = np.asarray(mean, np.float32)[:, None, None], np.asarray(std, np.float32)[:, None, None]
        self.seed_base = {"train": 0, "val": 10**7, "test": 2 * 10**7}[split]

    def __len__(self) -> int:
        return self.clips

    @property
    def num_expressions(self) -> int:
        return self.clips

    @staticmethod
    def vocabulary() -> list[str]:
        """Every word the expressions use."""
        texts = [*_FULL_VIDEO, *_FIRST_FRAME, *_WHERE.values()]
        values = [w for attr in ATTRIBUTES for v in _VALUES[attr] for w in _SYNONYMS.get(v, (v,))]
        return sorted({w for t in texts for w in words(re.sub(r"\{\w+\}", " ", t))} | set(values))

    def _target(self, rng: np.random.Generator) -> Shape:
        while True:
            s = Shape(*(str(rng.choice(_VALUES[a])) for a in ATTRIBUTES))
            if ((s.colour, s.shape) in HELD_OUT_PAIRS) == (self.split == "test"):
                return s

    def _distractors(self, target: Shape, rng: np.random.Generator) -> list[Shape]:
        """2-4 shapes, each differing from the target in one attribute (a different one each); training never
        shows a held-out colour-shape pair."""
        out = []
        for attr in rng.permutation(ATTRIBUTES)[: rng.integers(2, 5)]:
            options = [target.replace(attr, v) for v in _VALUES[attr] if v != getattr(target, attr)]
            if self.split != "test":
                options = [o for o in options if (o.colour, o.shape) not in HELD_OUT_PAIRS]
            out.append(options[rng.integers(len(options))])
        return out

    def _tracks(self, shapes: list[Shape], rng: np.random.Generator) -> np.ndarray | None:
        """Centres (n, T, 2) of straight paths inside the frame that never overlap (None when 64 random tries
        for a shape all collide)."""
        S, T = self.S, self.T
        radii = np.array([SIZES[s.size] * S * 1.25 for s in shapes])
        centres = np.zeros((len(shapes), T, 2))
        for i, s in enumerate(shapes):
            step = np.array(MOTIONS[s.motion])[None] * rng.uniform(0.04, 0.065, (64, 1)) * S  # (64, 2)
            lo = radii[i] + np.maximum(0, -step * (T - 1))
            hi = S - radii[i] - np.maximum(0, step * (T - 1))
            paths = rng.uniform(lo, hi)[:, None] + step[:, None] * np.arange(T)[None, :, None]  # (64, T, 2)
            gaps = np.linalg.norm(centres[None, :i] - paths[:, None], axis=-1) - radii[None, :i, None] - radii[i]
            ok = np.flatnonzero((gaps > 1).all(axis=(1, 2)))
            if not len(ok):
                return None
            centres[i] = paths[ok[0]]
        return centres

    def expression(self, target: Shape, twin_offset: np.ndarray | None, rng: np.random.Generator,
                   kind: str) -> str:
        """The sentence for ``target``; ``twin_offset`` = target minus look-alike centre in the first frame."""
        attrs = {a: str(rng.choice(_SYNONYMS.get(getattr(target, a), (getattr(target, a),)))) for a in ATTRIBUTES}
        if kind == "full_video":
            return str(rng.choice(_FULL_VIDEO)).format(**attrs)
        where = ""
        if twin_offset is not None:
            axis = int(np.abs(twin_offset).argmax())
            where = _WHERE[(("left", "right"), ("up", "down"))[axis][int(twin_offset[axis] > 0)]]
        return str(rng.choice(_FIRST_FRAME)).format(**attrs, where=where)

    def make(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
        """One clip: frames (T, 3, S, S) float32 in [0, 1], target masks (T, S, S) uint8, the expression."""
        S, T = self.S, self.T
        while True:
            target = self._target(rng)
            shapes = [target, *self._distractors(target, rng)]
            centres = self._tracks(shapes, rng)
            if centres is not None:
                break
        kind = self.expression_type if self.expression_type != "all" else str(rng.choice(EXPRESSION_TYPES))
        twin = next((i for i, s in enumerate(shapes) if s == target.replace("motion", s.motion) and i), None)
        text = self.expression(target, None if twin is None else centres[0, 0] - centres[twin, 0], rng, kind)
        background = rng.uniform(0.05, 0.3)
        frames = np.full((T, 3, S, S), background, np.float32) + rng.normal(0, 0.03, (T, 3, S, S)).astype(np.float32)
        masks = np.zeros((T, S, S), np.uint8)
        tint = [np.asarray(COLOURS[s.colour], np.float32) * rng.uniform(0.85, 1.0) for s in shapes]
        radius = [SIZES[s.size] * S * rng.uniform(0.92, 1.08) for s in shapes]
        for t in range(T):
            for i, s in enumerate(shapes):  # the paths never overlap: no occlusion
                rows, cols, m = _raster(s.shape, *centres[i, t], radius[i], S)
                frames[t][:, rows, cols][:, m] = tint[i][:, None]
                if i == 0:
                    masks[t, rows, cols] = m
        return np.clip(frames, 0, 1), masks, text

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
        seed = int(torch.randint(0, 2**62, ())) if self.split == "train" else self.seed_base + index
        frames, masks, text = self.make(np.random.default_rng(seed))
        tokens = self.tokenize(text) if self.tokenize is not None else torch.zeros(0, dtype=torch.long)
        frames = torch.from_numpy((frames - self.mean) / self.std)
        return (frames, tokens), (torch.from_numpy(masks), torch.ones(self.T, dtype=torch.bool),
                                  torch.tensor(index))

    def text_of(self, index: int) -> str:
        """The expression of a fixed (val/test) clip."""
        return self.make(np.random.default_rng(self.seed_base + index))[2]


FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


def _image_file(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / f"{stem}{s}" for s in FRAME_SUFFIXES) if p.is_file()), None)


def read_frames(paths: Sequence[Path], size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Frame images -> (n, 3, size, size) float32, resized (bilinear) and normalized; UserError naming a file that
    does not decode."""
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                out.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255.0)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read frame '{p}' ({err}); replace or remove it") from None
    arr = (np.stack(out).transpose(0, 3, 1, 2) - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(
        std, np.float32)[:, None, None]
    return torch.from_numpy(np.ascontiguousarray(arr, np.float32))


def read_annotation(path: Path, frame_size: tuple[int, int]) -> np.ndarray:
    """A palette (or grey) PNG -> (H, W) object ids; UserError naming the file when it does not decode, holds RGB
    colours instead of ids, or differs in size from its frame (``frame_size`` = (width, height))."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "1"):
                raise UserError(f"annotation '{path}' is {im.mode}, not a palette PNG whose pixel values are object "
                                "ids; convert it (Image.convert('P') keeps ids only for palette data)")
            if im.size != frame_size:
                raise UserError(f"annotation '{path}' is {im.size[0]}x{im.size[1]} but its frame is "
                                f"{frame_size[0]}x{frame_size[1]}; masks must match their frames")
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read annotation '{path}' ({err}); replace or remove it") from None


@dataclass(frozen=True)
class Expression:
    video: str
    exp_id: str
    text: str
    obj_id: int
    kind: str | None  # "full_video" / "first_frame" when the file says so


class ReferVOS(Dataset):
    """One split of the Ref-YouTube-VOS layout (see the module docstring) as windows of ``num_frames`` frames.

    Training: one item per expression, a random window of consecutive frames at each access. Evaluation: every
    expression's frames cut into consecutive windows (the last padded, ``valid`` False there). Frames and masks are
    resized to ``size``² (masks nearest). The files are checked up front: a missing frame or annotation, an empty
    sentence or (with ``<split>/meta.json``) an object id the video lacks is a UserError naming the file.
    ``expression_type``: keep only expressions whose ``"type"`` field says so ("all": every expression).
    """

    def __init__(self, root: str | Path, split: str, num_frames: int, size: int, train: bool = False,
                 expression_type: str = "all", mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225),
                 tokenize: Callable[[str], torch.Tensor] | None = None) -> None:
        self.root, self.split, self.T, self.S, self.train = Path(root), split, num_frames, size, train
        self.mean, self.std, self.tokenize = mean, std, tokenize
        self.frames_dir, self.masks_dir = self.root / split / "JPEGImages", self.root / split / "Annotations"
        source = next((p for p in (self.root / "meta_expressions" / split / "meta_expressions.json",
                                   self.root / split / "meta_expressions.json") if p.is_file()), None)
        if source is None:
            raise UserError(f"no expressions for split '{split}' in '{root}': expected meta_expressions/{split}/"
                            f"meta_expressions.json or {split}/meta_expressions.json")
        for d in (self.frames_dir, self.masks_dir):
            if not d.is_dir():
                raise UserError(f"'{d}' does not exist: split '{split}' needs JPEGImages/ and Annotations/ folders")
        self.frames: dict[str, list[str]] = {}
        self.expressions = self._read(source, expression_type)
        self.files = {v: [self._frame_file(v, f) for f in names] for v, names in self.frames.items()}
        self.items = [(i, 0) for i in range(len(self.expressions))] if train else [
            (i, s) for i, e in enumerate(self.expressions) for s in range(0, len(self.frames[e.video]), num_frames)]
        self._ids: dict[str, set[int]] = {}

    def _read(self, source: Path, expression_type: str) -> list[Expression]:
        try:
            videos = json.loads(source.read_text())["videos"]
            assert isinstance(videos, dict)
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as err:
            raise UserError(f"'{source}' is not a meta_expressions file ({{\"videos\": {{video: {{\"expressions\": "
                            f"..., \"frames\": [...]}}}}}}): {err}") from None
        objects = self._objects()
        out = []
        for video, entry in sorted(videos.items()):
            frames = [str(f) for f in entry.get("frames") or []]
            if not frames:
                raise UserError(f"video '{video}' in '{source}' lists no frames")
            for exp_id, e in sorted((entry.get("expressions") or {}).items(), key=lambda kv: str(kv[0])):
                text, obj = str(e.get("exp") or "").strip(), str(e.get("obj_id", ""))
                where = f"expression {exp_id} of video '{video}' in '{source}'"
                if not words(text):
                    raise UserError(f"{where} has an empty sentence; write one or remove the expression")
                if not obj.isdigit() or int(obj) < 1 or int(obj) > 255:
                    raise UserError(f"{where} has obj_id {obj!r}; it must be an object id 1-255 of the annotations")
                if objects is not None and obj not in objects.get(video, {obj}):
                    raise UserError(f"{where} names object {obj}, which video '{video}' does not have (its objects "
                                    f"in meta.json: {', '.join(sorted(objects[video]))})")
                kind = e.get("type")
                if expression_type == "all" or kind == expression_type:
                    out.append(Expression(video, str(exp_id), text, int(obj), kind))
            self.frames[video] = frames
        if not out:
            raise UserError(f"no {expression_type} expressions in '{source}'" + (
                "" if expression_type == "all" else ": mark them with \"type\": \"first_frame\" / \"full_video\""))
        return out

    def _objects(self) -> dict[str, set[str]] | None:
        """Object ids per video from ``<split>/meta.json`` (Ref-YouTube-VOS), when it exists."""
        path = self.root / self.split / "meta.json"
        if not path.is_file():
            return None
        try:
            return {v: set(map(str, e.get("objects", {}))) for v, e in json.loads(path.read_text())["videos"].items()}
        except (OSError, ValueError, KeyError, AttributeError) as err:
            raise UserError(f"'{path}' is not a meta.json ({{\"videos\": {{video: {{\"objects\": ...}}}}}}): {err}"
                            ) from None

    def _frame_file(self, video: str, frame: str) -> tuple[Path, Path]:
        image = _image_file(self.frames_dir / video, frame)
        if image is None:
            raise UserError(f"frame '{self.frames_dir / video / frame}.jpg' is missing (listed in the expressions "
                            "file); add it or drop it from 'frames'")
        mask = self.masks_dir / video / f"{frame}.png"
        if not mask.is_file():
            raise UserError(f"annotation '{mask}' is missing; every listed frame needs one")
        return image, mask

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_expressions(self) -> int:
        return len(self.expressions)

    def text_of(self, index: int) -> str:
        return self.expressions[index].text

    def object_ids(self, video: str) -> set[int]:
        """Object ids found in a video's annotations (read once per video)."""
        if video not in self._ids:
            from PIL import Image

            ids: set[int] = set()
            for image, mask in self.files[video]:
                with Image.open(image) as im:
                    ids |= set(np.unique(read_annotation(mask, im.size)).tolist())
            self._ids[video] = ids
        return self._ids[video]

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
        from PIL import Image

        e_idx, start = self.items[index]
        e = self.expressions[e_idx]
        files = self.files[e.video]
        if e.obj_id not in self.object_ids(e.video):
            raise UserError(f"expression {e.exp_id} of video '{e.video}' names object {e.obj_id}, which no "
                            f"annotation in '{self.masks_dir / e.video}' contains")
        if self.train:
            start = int(torch.randint(0, max(len(files) - self.T, 0) + 1, ()))
        picked = [min(t, len(files) - 1) for t in range(start, start + self.T)]
        valid = torch.tensor([t < len(files) for t in range(start, start + self.T)])
        frames = read_frames([files[t][0] for t in picked], self.S, self.mean, self.std)
        masks = []
        for t in picked:
            image, mask = files[t]
            with Image.open(image) as im:
                ids = read_annotation(mask, im.size)
            target = Image.fromarray(((ids == e.obj_id) * 255).astype(np.uint8)).resize((self.S, self.S),
                                                                                         Image.NEAREST)
            masks.append(np.asarray(target) > 127)
        tokens = self.tokenize(e.text) if self.tokenize is not None else torch.zeros(0, dtype=torch.long)
        return (frames, tokens), (torch.from_numpy(np.stack(masks).astype(np.uint8)), valid, torch.tensor(e_idx))
