"""Video datasets (paper §3.3, eq. 5; Table 9): folders of video files (decoded with PyAV), folders of frame
images (Kinetics-style ``root/<class>/<clip>/`` or a CSV of ``path,label``), and the built-in moving-digits
motion dataset. Every dataset returns ``(frames (NF, 3, h, w) float32 normalized, label)``.

Clips are sampled to NF frames by :func:`sample_frame_indices` (``random``
segments when training, ``uniform`` otherwise). The first clips are decoded when the dataset is built, so a
folder of broken files fails at once (``UserError``); a clip that fails later is skipped like a corrupt image
(target -1, a warning once).
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from unireplknet.data.datasets import CORRUPT_TARGET, IMG_EXTENSIONS
from unireplknet.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["DIRECTIONS", "MovingDigits", "VideoClipDataset", "decode_video", "list_clips", "read_clip",
           "sample_frame_indices"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
MEAN, STD = 0.5, 0.5


def decode_video(path: str | os.PathLike, size: int | None = None) -> list[np.ndarray]:
    """Every frame of a video file as (h, w, 3) uint8 RGB arrays (PyAV), resized to ``size``² while decoding
    when given (so a long clip never sits in memory at full resolution). UserError if it does not decode."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"'{path}' has no video stream")
            if size is None:
                return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            return [f.to_ndarray(width=size, height=size, format="rgb24") for f in container.decode(video=0)]
    except UserError:
        raise
    except Exception as err:  # av.error.* and anything else the demuxer/decoder raises
        raise UserError(f"cannot decode video '{path}' ({type(err).__name__}: {err}); check the file") from None


def sample_frame_indices(total: int, num_frames: int, mode: str = "uniform",
                         rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices of ``num_frames`` frames out of ``total`` (sorted, distinct).

    The clip is cut into ``num_frames`` equal segments; ``"uniform"`` takes the centre of each
    (``floor((i + 0.5)·total / num_frames)``), ``"random"`` a random frame in each (training).
    """
    if mode not in ("uniform", "random"):
        raise ValueError(f"temporal sampling must be 'uniform' or 'random', not {mode!r}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if total < num_frames:
        raise ValueError(f"the video has {total} frames, fewer than the {num_frames} requested; "
                         "lower the number of frames or drop the clip")
    edges = np.arange(num_frames + 1) * total / num_frames
    if mode == "uniform":
        return np.floor((edges[:-1] + edges[1:]) / 2).astype(np.int64)
    rng = rng or np.random.default_rng()
    lo = np.ceil(edges[:-1]).astype(np.int64)
    hi = np.maximum(np.ceil(edges[1:]).astype(np.int64), lo + 1)  # exclusive, each segment non-empty
    return rng.integers(lo, hi).astype(np.int64)


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)


def list_clips(root: str | os.PathLike) -> tuple[list[tuple[Path, str]], Path]:
    """(path, label) of every clip: a CSV file of ``path,label`` rows (paths relative to the CSV, a header
    row allowed), or a folder ``root/<class>/<clip>`` where a clip is a video file or a folder of frames."""
    root = Path(root)
    if root.is_file():
        rows = []
        with open(root, newline="") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or (i == 0 and row[:2] == ["path", "label"]):
                    continue
                if len(row) < 2:
                    raise UserError(f"'{root}' line {i + 1}: expected 'path,label', got {row}")
                p = Path(row[0])
                rows.append((p if p.is_absolute() else root.parent / p, row[1].strip()))
        return rows, root.parent
    if not root.is_dir():
        raise UserError(f"video data '{root}' does not exist; pass a folder of class folders or a CSV")
    clips = []
    for cls in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        for item in sorted(cls.iterdir()):
            if (item.is_file() and item.suffix.lower() in VIDEO_EXTENSIONS) or item.is_dir():
                clips.append((item, cls.name))
    return clips, root


def read_clip(path: Path, num_frames: int, size: int, rng: np.random.Generator | None = None) -> torch.Tensor:
    """A video file or a folder of frames -> ``(num_frames, 3, size, size)`` normalized frames: uniform segment
    centres, or (with ``rng``: training) a random frame per segment and a random horizontal flip of the clip."""
    from PIL import Image

    if path.is_dir():
        files = _frame_files(path)
        total = len(files)
    else:
        frames = decode_video(path, size)
        total = len(frames)
    if total < num_frames:
        raise UserError(f"'{path}' has {total} frames, fewer than the {num_frames} sampled per clip; lower "
                        "task_args.num_frames or remove the clip")
    out = []
    for t in sample_frame_indices(total, num_frames, "random" if rng is not None else "uniform", rng):
        if path.is_dir():
            with Image.open(files[t]) as im:
                img = im.convert("RGB")
        else:
            img = Image.fromarray(frames[t])
        out.append(np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0)
    arr = (np.stack(out).transpose(0, 3, 1, 2) - MEAN) / STD  # (NF, 3, size, size)
    if rng is not None and rng.random() < 0.5:
        arr = arr[..., ::-1]  # horizontal flip of the whole clip
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


class VideoClipDataset(Dataset):
    """Clips from :func:`list_clips` -> ``(NF, 3, size, size)`` frames (resized, normalized) and the label."""

    def __init__(self, root: str | os.PathLike, num_frames: int = 16, size: int = 224, train: bool = False,
                 class_names: list[str] | None = None, probe: int = 4) -> None:
        clips, self.root = list_clips(root)
        if not clips:
            raise UserError(f"no clips under '{root}': put video files ({', '.join(VIDEO_EXTENSIONS)}) or "
                            "folders of frame images in <root>/<class>/, or give a CSV of path,label")
        self.class_names = list(class_names) if class_names else sorted({lab for _, lab in clips})
        index = {n: i for i, n in enumerate(self.class_names)}
        unknown = sorted({lab for _, lab in clips if lab not in index})
        if unknown:
            raise UserError(f"labels {unknown[:5]} in '{root}' are not training classes; use the same classes")
        self.samples = [(p, index[lab]) for p, lab in clips]
        self.num_frames, self.size, self.train = num_frames, size, train
        self._warned: set[int] = set()
        for i in range(min(probe, len(self.samples))):
            self.load(i, np.random.default_rng(0))  # fail now, with the file's name, on unreadable data

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    def load(self, index: int, rng: np.random.Generator | None) -> torch.Tensor:
        return read_clip(self.samples[index][0], self.num_frames, self.size, rng if self.train else None)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()))) if self.train else None
        try:
            return self.load(index, rng), self.samples[index][1]
        except UserError as err:  # one broken clip must not stop an epoch: skip it like a corrupt image
            if index not in self._warned:
                self._warned.add(index)
                log.warning("skipping clip %s (%s)", self.samples[index][0], err)
            return torch.zeros(self.num_frames, 3, self.size, self.size), CORRUPT_TARGET


# ----------------------------------------------------------------------------------------- moving digits
#: (dx, dy) per class: E, NE, N, NW, W, SW, S, SE (image rows grow downwards).
DIRECTIONS = ((1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1))
DIRECTION_NAMES = ["E", "NE", "N", "NW", "W", "SW", "S", "SE"]


class MovingDigits(Dataset):
    """The built-in video dataset: a handwritten digit (scikit-learn's 8×8 digits, upscaled to half the
    frame) moving in one of 8 directions over ``total_frames`` frames, of which ``num_frames`` are sampled
    (random segments when training, uniform otherwise). Any one frame shows a digit at a random place, so
    only the motion between frames tells the class.

    Train clips are drawn fresh at every access from the training digits; val/test clips are fixed (seeded
    by index) and use held-out digits (the stratified 80/20 split of :class:`DigitsDataset`).
    """

    class_names = DIRECTION_NAMES

    def __init__(self, split: str, num_frames: int = 4, size: int = 32, total_frames: int = 8,
                 per_class: int = 100, train: bool | None = None) -> None:
        from PIL import Image
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', not {split!r}")
        if total_frames < num_frames:
            raise ValueError(f"total_frames ({total_frames}) must be >= num_frames ({num_frames})")
        self.split, self.num_frames, self.size, self.total_frames = split, num_frames, size, total_frames
        self.train = split == "train" if train is None else train
        self.patch = size // 2
        self.step = (size - self.patch) / (total_frames - 1 + 2)  # pixels per frame, room for the start jitter
        if self.step < 1:
            raise ValueError(f"frames of {size}² are too small for {total_frames} frames of motion; "
                             "use a larger size or fewer frames")
        digits = load_digits()
        idx = np.arange(len(digits.target))
        tr, va = train_test_split(idx, test_size=0.2, random_state=0, stratify=digits.target)
        chosen = np.sort(tr if split == "train" else va)
        self.digits = np.stack([
            np.asarray(Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).resize(
                (self.patch, self.patch), Image.BILINEAR), dtype=np.float32) / 255.0 for i in chosen])
        self.labels = [k for k in range(len(DIRECTIONS)) for _ in range(per_class)]
        self.seed_base = {"train": 0, "val": 10**6, "test": 2 * 10**6}[split]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> list[int]:
        return self.labels

    def make_clip(self, label: int, rng: np.random.Generator) -> np.ndarray:
        """(total_frames, size, size) float32 in [0, 1]: one digit moving in ``DIRECTIONS[label]``."""
        S, p, T = self.size, self.patch, self.total_frames
        dx, dy = DIRECTIONS[label]
        step = self.step * rng.uniform(0.7, 1.0)
        span = step * (T - 1)
        # start so that the whole path stays inside the frame
        x0 = rng.uniform(0 if dx >= 0 else span, S - p - (span if dx > 0 else 0))
        y0 = rng.uniform(0 if dy >= 0 else span, S - p - (span if dy > 0 else 0))
        digit = self.digits[rng.integers(len(self.digits))] * rng.uniform(0.6, 1.0)
        frames = np.zeros((T, S, S), dtype=np.float32)
        for t in range(T):
            x, y = int(round(x0 + dx * step * t)), int(round(y0 + dy * step * t))
            x, y = min(max(x, 0), S - p), min(max(y, 0), S - p)
            frames[t, y:y + p, x:x + p] = digit
        return frames + rng.normal(0, 0.05, frames.shape).astype(np.float32)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.train:
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))
            label = int(rng.integers(len(DIRECTIONS)))  # fresh clip of a random class every time
        else:
            rng = np.random.default_rng(self.seed_base + index)
            label = self.labels[index]
        clip = self.make_clip(label, rng)
        idx = sample_frame_indices(self.total_frames, self.num_frames, "random" if self.train else "uniform",
                                   rng)
        frames = (clip[idx] - MEAN) / STD  # (NF, S, S)
        return torch.from_numpy(np.repeat(frames[:, None], 3, axis=1)), label
