"""Video classification (paper §3.3 eq. 5, Table 9): NF sampled frames tiled into one image for the unchanged
backbone.

``cfg.data``: ``moving_digits`` (embedded motion dataset) or a folder with ``train/`` and ``val/`` (each
``<class>/<clip>`` with a clip a video file decoded by PyAV or a folder of frame images), or with
``train.csv`` and ``val.csv`` (``path,label``); an optional ``test/`` or ``test.csv`` is the test split.
``cfg.task_args`` (defaults below): ``num_frames`` (NF), ``frame_size`` (h = w), ``grid`` ([rows, cols],
default the most square), ``total_frames``, ``per_class``, ``val_per_class`` (moving digits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unireplknet.errors import UserError
from unireplknet.tasks.base import TaskData
from unireplknet.tasks.embedded_classification import EmbeddedClassificationTask

DEFAULTS: dict[str, Any] = {"num_frames": 16, "frame_size": 224, "grid": None, "total_frames": 8,
                            "per_class": 200, "val_per_class": 50}
EMBEDDED = ("moving_digits",)


def task_args(cfg: Any) -> dict[str, Any]:
    unknown = set(cfg.task_args or {}) - set(DEFAULTS)
    if unknown:
        raise UserError(f"unknown video task_args {sorted(unknown)}; known: {', '.join(DEFAULTS)}")
    a = {**DEFAULTS, **(cfg.task_args or {})}
    if a["num_frames"] < 1 or a["frame_size"] < 1:
        raise UserError("task_args.num_frames and frame_size must be at least 1")
    if a["grid"] is not None and (len(a["grid"]) != 2 or a["grid"][0] * a["grid"][1] != a["num_frames"]):
        raise UserError(f"task_args.grid {a['grid']} must be [rows, cols] with rows x cols = num_frames")
    return a


def _split(root: Path, name: str) -> Path | None:
    for cand in (root / name, root / f"{name}.csv"):
        if cand.exists():
            return cand
    return None


class VideoTask(EmbeddedClassificationTask):
    name = "video"
    default_config = "video_default"

    def build_data(self, cfg: Any) -> TaskData:
        from unireplknet.data.video import MovingDigits, VideoClipDataset

        a = task_args(cfg)
        NF, size = a["num_frames"], a["frame_size"]
        if cfg.data == "moving_digits":
            if a["total_frames"] < NF:
                raise UserError(f"moving_digits makes {a['total_frames']} frames, fewer than num_frames={NF}; "
                                "raise task_args.total_frames")
            kw = {"num_frames": NF, "size": size, "total_frames": a["total_frames"]}
            try:
                train = MovingDigits("train", per_class=a["per_class"], **kw)
            except ValueError as err:
                raise UserError(f"moving_digits: {err}") from None
            val = MovingDigits("val", per_class=a["val_per_class"], **kw)
            test = MovingDigits("test", per_class=a["val_per_class"], **kw)
            return TaskData(train, val, test, {"class_names": list(train.class_names)})
        root = Path(str(cfg.data))
        tr, va = (_split(root, "train"), _split(root, "val")) if root.is_dir() else (None, None)
        if tr is None or va is None:
            raise UserError(f"video data '{root}' needs train/ and val/ class folders (or train.csv and "
                            f"val.csv); or use one of: {', '.join(EMBEDDED)}")
        train = VideoClipDataset(tr, NF, size, train=True)
        val = VideoClipDataset(va, NF, size, class_names=train.class_names)
        te = _split(root, "test")
        test = VideoClipDataset(te, NF, size, class_names=train.class_names) if te is not None else None
        return TaskData(train, val, test, {"class_names": list(train.class_names)})

    def embedder_spec(self, cfg: Any, data: TaskData) -> tuple[str, dict[str, Any]]:
        a = task_args(cfg)
        return "video_tiler", {"num_frames": a["num_frames"],
                               "grid": list(a["grid"]) if a["grid"] is not None else None}

    def input_shape(self, cfg: Any) -> list[int]:
        a = task_args(cfg)
        return [a["num_frames"], 3, a["frame_size"], a["frame_size"]]
