"""Image classification datasets: ImageFolder trees (corrupt images skipped) and the built-in digits set.

Both return ``(image, target)`` with a PIL image before the transform. A sample whose file cannot be
decoded comes back as ``(zeros, -1)`` after the transform and a warning is logged once per file;
:func:`drop_corrupt` removes such samples from a batch so one bad JPEG never stops an epoch.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from unireplknet.errors import UserError

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
CORRUPT_TARGET = -1


def cache_dir() -> Path:
    """Where built-in datasets are generated once and kept: ``$UNIREPLKNET_CACHE`` (default
    ``~/.cache/unireplknet``)."""
    return Path(os.environ.get("UNIREPLKNET_CACHE", Path.home() / ".cache" / "unireplknet"))


def data_folder(path: str | os.PathLike, expected: str) -> Path:
    """``path`` as a folder; a UserError that says whether it is missing or a file, and what is ``expected``."""
    root = Path(path)
    if root.is_dir():
        return root
    state = "is a file, not a folder" if root.exists() else "does not exist"
    raise UserError(f"data '{root}' {state}; pass --data with {expected}")


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` (torchvision's ImageFolder layout) with corrupt-image skipping.

    ``class_names`` fixes the class order (pass the training split's to the validation split).
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None,
                 class_names: list[str] | None = None, in_chans: int = 3) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"data folder '{self.root}' does not exist; pass --data DIR with train/ and val/ "
                            "class folders (or --data digits for the built-in dataset)")
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not found:
            raise UserError(f"'{self.root}' has no class folders; put the images of each class in "
                            f"'{self.root}/<class name>/'")
        self.class_names = list(class_names) if class_names is not None else found
        index = {name: i for i, name in enumerate(self.class_names)}
        self.samples: list[tuple[str, int]] = []
        for name in found:
            if name not in index:
                raise UserError(f"class folder '{name}' in '{self.root}' is not a training class; "
                                "use the same class folders in train/ and val/")
            for dirpath, _, files in sorted(os.walk(self.root / name, followlinks=True)):
                for fname in sorted(files):
                    if fname.lower().endswith(IMG_EXTENSIONS):
                        self.samples.append((os.path.join(dirpath, fname), index[name]))
        if not self.samples:
            raise UserError(f"no images found under '{self.root}' (looked for {', '.join(IMG_EXTENSIONS)}); "
                            "put image files in its class folders")
        self.transform = transform
        self.mode = "L" if in_chans == 1 else "RGB"
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    def load(self, index: int) -> Image.Image:
        path, _ = self.samples[index]
        with Image.open(path) as img:
            return img.convert(self.mode)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            img = self.load(index)
        except Exception as err:  # any decoding failure: count and skip, never crash mid-epoch
            if index not in self._warned:
                self._warned.add(index)
                log.warning("skipping unreadable image %s (%s)", self.samples[index][0], err)
            return self.placeholder(), CORRUPT_TARGET
        if self.transform is not None:
            img = self.transform(img)
        return img, self.samples[index][1]

    def placeholder(self) -> torch.Tensor:
        """A zero sample with the transform's output shape (the batch then drops it)."""
        img = Image.new(self.mode, (8, 8))
        return torch.zeros_like(self.transform(img)) if self.transform is not None else img

    def check_readable(self, probe: int = 8) -> None:
        """Fail early (``UserError``) when none of the first ``probe`` images can be decoded."""
        n = min(probe, len(self.samples))
        errors = []
        for i in range(n):
            try:
                self.load(i)
                return
            except Exception as err:
                errors.append(f"{self.samples[i][0]}: {err}")
        raise UserError(f"cannot read any of the first {n} images under '{self.root}' ({errors[0]}); "
                        "check that the files are valid images")


class DigitsDataset(Dataset):
    """scikit-learn's 1,797 handwritten 8x8 digits, upsampled to ``size`` and replicated to RGB.

    The held-out split is fixed: a stratified 80/20 split with seed 0 (1,437 train / 360 val images).
    """

    class_names = [str(i) for i in range(10)]
    VAL_FRACTION = 0.2

    def __init__(self, split: str, transform: Callable | None = None, size: int = 32,
                 in_chans: int = 3) -> None:
        state = random.getstate()  # importing scikit-learn the first time draws from Python's global `random`:
        try:  # keep the run's seeded stream the same whether or not it was imported before (resume in-process)
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split
        finally:
            random.setstate(state)

        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', not {split!r}")
        digits = load_digits()
        idx = np.arange(len(digits.target))
        train_idx, val_idx = train_test_split(idx, test_size=self.VAL_FRACTION, random_state=0,
                                              stratify=digits.target)
        chosen = np.sort(train_idx if split == "train" else val_idx)
        pixels = (digits.images[chosen] * (255.0 / 16.0)).round().astype(np.uint8)
        mode = "L" if in_chans == 1 else "RGB"
        self.images = [Image.fromarray(p, mode="L").resize((size, size), Image.BICUBIC).convert(mode)
                       for p in pixels]
        self.labels = digits.target[chosen].astype(int).tolist()
        self.transform = transform
        self.root = "digits"

    def __len__(self) -> int:
        return len(self.images)

    @property
    def targets(self) -> list[int]:
        return self.labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, self.labels[index]


def drop_corrupt(images: Any, targets: Any) -> tuple[Any, Any, int]:
    """Remove the placeholder samples of unreadable images; returns (images, targets, number removed). Only class
    labels (a 1-D integer tensor) carry the placeholder; other targets (masks, boxes, values) pass unchanged."""
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1 or targets.is_floating_point():
        return images, targets, 0
    keep = targets != CORRUPT_TARGET
    n_bad = int((~keep).sum())
    if n_bad:
        images, targets = images[keep], targets[keep]
    return images, targets, n_bad
