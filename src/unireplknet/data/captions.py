"""Image–caption datasets for contrastive (CLIP) training: the built-in generated shapes with generated captions
(objects, colours, counts, positions; whole colour–shape classes held out for zero-shot evaluation), a folder of
images with same-stem ``.txt`` captions, and OpenCLIP's CSV (``filepath`` / ``title`` columns, tab-separated).

Every dataset returns ``(image (3, S, S) float, {"text": token ids (L,), "label": class index or NO_CLASS})``;
``class_names`` / ``prompts`` (one list of prompt sentences per class) are the zero-shot classes of the split
(empty for real data).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from unireplknet.data.datasets import IMG_EXTENSIONS
from unireplknet.errors import UserError

log = logging.getLogger(__name__)

Tokenizer = Callable[[Sequence[str]], torch.Tensor]  # sentences -> (N, L) token ids
NO_CLASS = -100  # label of a sample without a zero-shot class (real captions)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 175, 60), "blue": (50, 90, 235), "yellow": (235, 215, 45),
    "purple": (150, 60, 205), "orange": (245, 140, 25), "cyan": (40, 210, 220), "white": (235, 235, 235)}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
#: Zero-shot classes never seen in training: 4 colours x 2 shapes each, every shape at least once, so that telling
#: them apart takes both the colour and the shape.
HELD_OUT = ("red triangle", "red ring", "green square", "green cross", "blue circle", "blue diamond",
            "yellow triangle", "yellow square")
REGIONS: dict[str, tuple[float, float, float, float]] = {  # position phrase -> (x0, y0, x1, y1) in [0, 1]
    "on the left": (0.0, 0.0, 0.5, 1.0), "on the right": (0.5, 0.0, 1.0, 1.0),
    "at the top": (0.0, 0.0, 1.0, 0.5), "at the bottom": (0.0, 0.5, 1.0, 1.0)}
PAIRED_REGIONS = (("on the left", "on the right"), ("at the top", "at the bottom"))
COUNT_WORDS = {2: "two", 3: "three"}
#: Caption templates; the zero-shot prompts of a class are the same templates around "a <colour> <shape>".
TEMPLATES = ("{}", "a picture of {}", "an image of {}", "a drawing of {}")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(colour: str, shape: str, count: int = 1) -> str:
    """'an orange ring', 'two red circles'."""
    if count == 1:
        return f"{article(colour)} {colour} {shape}"
    return f"{COUNT_WORDS[count]} {colour} {shape}{'es' if shape.endswith('s') else 's'}"


def all_classes() -> list[str]:
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]


def class_prompts(name: str) -> list[str]:
    colour, shape = name.split(" ")
    return [t.format(noun_phrase(colour, shape)) for t in TEMPLATES]


def check_classes(held_out: Sequence[str]) -> list[str]:
    """The held-out class names, checked against the colour–shape grid."""
    known = all_classes()
    bad = [c for c in held_out if c not in known]
    if bad or not held_out:
        raise UserError(f"held_out classes {bad or '[]'} are not '<colour> <shape>' names; colours: "
                        f"{', '.join(COLOURS)}; shapes: {', '.join(SHAPES)}")
    if len(held_out) > len(known) - 2:
        raise UserError(f"held_out names {len(held_out)} of the {len(known)} classes; keep at least 2 for training")
    return list(dict.fromkeys(held_out))


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour: tuple[int, ...]) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, round(r * 0.45)))
    elif shape == "square":
        s = r * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    else:  # cross
        t = r * 0.35
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=colour)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=colour)


@dataclass(frozen=True)
class Group:
    """``count`` objects of one class in one region."""

    colour: str
    shape: str
    count: int
    region: str

    def phrase(self, with_position: bool) -> str:
        words = noun_phrase(self.colour, self.shape, self.count)
        return f"{words} {self.region}" if with_position else words


def render(groups: Sequence[Group], size: int, rng: np.random.Generator) -> Image.Image:
    """Draw the groups on a dark grey noisy background (2x supersampled) -> an RGB image ``size`` x ``size``."""
    big = 2 * size
    pixels = np.clip(rng.integers(0, 40) + rng.normal(0, 6, (big, big, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    for g in groups:
        x0, y0, x1, y1 = (v * big for v in REGIONS[g.region])
        placed: list[tuple[float, float, float]] = []
        for _ in range(g.count):
            for _attempt in range(50):
                r = rng.uniform(0.075, 0.11) * big
                cx, cy = rng.uniform(x0 + r + 1, x1 - r - 1), rng.uniform(y0 + r + 1, y1 - r - 1)
                if all((cx - px) ** 2 + (cy - py) ** 2 > (r + pr + 2) ** 2 for px, py, pr in placed):
                    break
            placed.append((cx, cy, r))
            colour = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in COLOURS[g.colour])
            _draw(draw, g.shape, cx, cy, r, colour)
    return img.resize((size, size), Image.BOX)


class ShapeCaptions(Dataset):
    """Generated images of 1–``max_groups`` groups of 1–3 coloured shapes in regions of the image, with a caption
    naming them (e.g. "a picture of two red circles on the left and a blue ring on the right"); sample ``i`` is
    the same for the same ``seed``. ``classes`` are the colour–shape classes the split draws from (its zero-shot
    classes); with one group per image, the label is the group's class.

    With ``twins``, a sample is a pair (images (2, 3, S, S), tokens (2, L), labels (2,)): the second is the first
    with one group's shape changed (same colours, counts, places, caption words otherwise), a hard negative of the
    first within the batch, so that matching captions takes the shape and not only colours, counts and places."""

    def __init__(self, n: int, classes: Sequence[str], size: int, seed: int, tokenizer: Tokenizer,
                 transform: Callable[[Image.Image], torch.Tensor], max_groups: int = 2, p_position: float = 0.7,
                 stream: int = 0, twins: bool = False) -> None:
        self.n, self.class_names, self.size, self.seed = n, list(classes), size, seed
        self.tokenizer, self.transform, self.max_groups, self.p_position = tokenizer, transform, max_groups, p_position
        self.stream, self.twins = stream, twins
        self.prompts = [class_prompts(c) for c in self.class_names]

    def __len__(self) -> int:
        return self.n

    def sample(self, index: int, twin: bool = False) -> tuple[Image.Image, str, int]:
        """(image, caption, label) of sample ``index`` (``twin``: with one group's shape changed)."""
        rng = np.random.default_rng([self.stream, self.seed, index])
        n_groups = int(rng.integers(1, self.max_groups + 1)) if len(self.class_names) > 1 else 1
        regions = (list(PAIRED_REGIONS[rng.integers(len(PAIRED_REGIONS))]) if n_groups == 2
                   else [list(REGIONS)[rng.integers(len(REGIONS))]])
        order = rng.permutation(len(regions))
        labels = [int(k) for k in rng.choice(len(self.class_names), n_groups, replace=False)]
        counts = [int(rng.integers(1, 4)) for _ in labels]
        positions = [bool(rng.random() < self.p_position) for _ in labels]
        template, render_seed, swap = TEMPLATES[rng.integers(len(TEMPLATES))], int(rng.integers(2**32)), rng.random()
        if twin:  # another shape of the same colour for one group (another class when the colour has no other)
            j = int(rng.integers(n_groups))
            colour = self.class_names[labels[j]].split(" ")[0]
            options = [k for k, c in enumerate(self.class_names) if k not in labels and c.startswith(f"{colour} ")]
            options = options or [k for k in range(len(self.class_names)) if k not in labels]
            labels[j] = options[int(swap * len(options))]
        groups = [Group(*self.class_names[k].split(" "), counts[i], regions[order[i]]) for i, k in enumerate(labels)]
        caption = template.format(" and ".join(g.phrase(p) for g, p in zip(groups, positions)))
        return (render(groups, self.size, np.random.default_rng(render_seed)), caption,
                labels[0] if n_groups == 1 else NO_CLASS)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.twins:
            pair = [self.sample(index, twin) for twin in (False, True)]
            return (torch.stack([self.transform(img) for img, _, _ in pair]),
                    {"text": self.tokenizer([c for _, c, _ in pair]), "label": torch.tensor([k for _, _, k in pair])})
        img, caption, label = self.sample(index)
        return self.transform(img), {"text": self.tokenizer([caption])[0], "label": label}


# ------------------------------------------------------------------------------------------------ real data
class CaptionFiles(Dataset):
    """Images with their captions (``items``: (image path, caption)); an unreadable image is a one-line error
    naming the file."""

    def __init__(self, items: Sequence[tuple[Path, str]], tokenizer: Tokenizer,
                 transform: Callable[[Image.Image], torch.Tensor], source: str) -> None:
        self.items, self.tokenizer, self.transform, self.source = list(items), tokenizer, transform, source
        self.class_names: list[str] = []
        self.prompts: list[list[str]] = []
        if not self.items:
            raise UserError(f"'{source}' has no image with a caption; see docs/clip.md for the layouts")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        path, caption = self.items[index]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except Exception as err:  # any decoding failure
            raise UserError(f"cannot read image '{path}' ({type(err).__name__}: {err}); fix or remove it from "
                            f"'{self.source}'") from None
        return self.transform(image), {"text": self.tokenizer([caption])[0], "label": NO_CLASS}


def read_caption_folder(root: Path) -> list[tuple[Path, str]]:
    """Every image under ``root`` (recursively) with the caption in the same-stem ``.txt`` file beside it."""
    items = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS):
        txt = path.with_suffix(".txt")
        if not txt.is_file():
            raise UserError(f"image '{path}' has no caption file '{txt.name}' beside it; add one or remove the image")
        caption = txt.read_text(encoding="utf-8", errors="replace").strip()
        if not caption:
            raise UserError(f"caption file '{txt}' is empty; write the caption or remove the image")
        items.append((path, caption))
    return items


def read_caption_csv(path: Path, sep: str = "\t", img_key: str = "filepath",
                     caption_key: str = "title") -> list[tuple[Path, str]]:
    """OpenCLIP's CSV: a header with ``img_key`` and ``caption_key`` columns; image paths relative to the CSV's
    folder (or absolute). A missing image or an empty caption is a one-line error naming the file and row."""
    try:
        return _read_csv(path, sep, img_key, caption_key)
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"cannot read '{path}' as a UTF-8 CSV ({type(err).__name__}: {err}); pass a text file with a "
                        "header row") from None


def _read_csv(path: Path, sep: str, img_key: str, caption_key: str) -> list[tuple[Path, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=sep)
        missing = [k for k in (img_key, caption_key) if k not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"'{path}' has no column {' or '.join(repr(k) for k in missing)} (columns: "
                            f"{reader.fieldnames}); set task_args.csv_img_key / csv_caption_key / csv_separator "
                            f"(now {sep!r})")
        items = []
        for row_no, row in enumerate(reader, start=2):
            image = path.parent / (row[img_key] or "").strip()
            caption = (row[caption_key] or "").strip()
            if not row[img_key] or not image.is_file():
                raise UserError(f"{path}:{row_no}: image '{image}' does not exist (paths are relative to the CSV's "
                                "folder); fix the path or remove the row")
            if not caption:
                raise UserError(f"{path}:{row_no}: empty caption for '{image}'; write one or remove the row")
            items.append((image, caption))
    return items


def read_captions(source: str | Path, sep: str = "\t", img_key: str = "filepath",
                  caption_key: str = "title") -> list[tuple[Path, str]]:
    """(image, caption) pairs of a CSV/TSV file or a folder of images with same-stem ``.txt`` captions."""
    path = Path(source)
    if path.is_dir():
        return read_caption_folder(path)
    if path.is_file():
        return read_caption_csv(path, sep, img_key, caption_key)
    raise UserError(f"caption data '{source}' does not exist; pass a CSV of image paths and captions, a folder of "
                    "images with same-stem .txt captions, or 'shape_captions'")
