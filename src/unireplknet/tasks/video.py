"""Video classification (paper §3.3 eq. 5, Table 9): NF sampled frames tiled into one image for the unchanged
backbone.

``data``: ``moving_digits`` (built-in motion dataset) or a folder with ``train/`` and ``val/`` (each
``<class>/<clip>`` with a clip a video file decoded by PyAV or a folder of frame images), or with ``train.csv`` and
``val.csv`` (``path,label``); an optional ``test/`` or ``test.csv`` is the test split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from unireplknet.data.video import VIDEO_EXTENSIONS
from unireplknet.engine.config import TrainConfig
from unireplknet.engine.task import Request, TaskData
from unireplknet.errors import UserError
from unireplknet.tasks import register_task
from unireplknet.tasks.classification import Classifier, backbone_kwargs
from unireplknet.tasks.pointcloud import build_embedder_classifier
from unireplknet.utils.typed import check


@dataclass
class VideoArgs:
    num_frames: int = 16  # NF
    frame_size: int = 224  # h = w
    grid: list[int] | None = None  # [rows, cols] of the tiling (default: the most square)
    total_frames: int = 8  # built-in moving digits: frames per clip
    per_class: int = 200
    val_per_class: int = 50

    def __post_init__(self) -> None:
        check([(self.num_frames >= 1 and self.frame_size >= 1, "num_frames and frame_size must be at least 1"),
               (self.grid is None or (len(self.grid) == 2 and self.grid[0] * self.grid[1] == self.num_frames),
                f"grid {self.grid} must be [rows, cols] with rows x cols = num_frames")])


def _split(root: Path, name: str) -> Path | None:
    return next((c for c in (root / name, root / f"{name}.csv") if c.exists()), None)


@register_task
class VideoTask(Classifier):
    name = "video"
    Args = VideoArgs
    default_config = "video_default"
    builtin_data = ("moving_digits",)
    mixes = ()
    input_suffixes: ClassVar[tuple[str, ...]] = VIDEO_EXTENSIONS

    def build_data(self, cfg: TrainConfig, args: VideoArgs) -> TaskData:
        from unireplknet.data.datasets import data_folder
        from unireplknet.data.video import MovingDigits, VideoClipDataset

        NF, size = args.num_frames, args.frame_size
        if cfg.data in self.builtin_data:
            if args.total_frames < NF:
                raise UserError(f"moving_digits makes {args.total_frames} frames, fewer than num_frames={NF}; raise "
                                "task_args.total_frames")
            kw = {"num_frames": NF, "size": size, "total_frames": args.total_frames}
            try:
                train = MovingDigits("train", per_class=args.per_class, **kw)
            except ValueError as err:
                raise UserError(f"moving_digits: {err}") from None
            val = MovingDigits("val", per_class=args.val_per_class, **kw)
            test = MovingDigits("test", per_class=args.val_per_class, **kw)
            return TaskData(train, val, test, {"class_names": list(train.class_names)})
        root = data_folder(cfg.data or "", "train/ and val/ class folders of clips (or train.csv and val.csv), or "
                                           f"one of: {', '.join(self.builtin_data)}")
        tr, va = _split(root, "train"), _split(root, "val")
        if tr is None or va is None:
            raise UserError(f"video data '{root}' needs train/ and val/ class folders (or train.csv and val.csv); "
                            f"or use one of: {', '.join(self.builtin_data)}")
        train = VideoClipDataset(tr, NF, size, train=True)
        val = VideoClipDataset(va, NF, size, class_names=train.class_names)
        te = _split(root, "test")
        test = VideoClipDataset(te, NF, size, class_names=train.class_names) if te is not None else None
        return TaskData(train, val, test, {"class_names": list(train.class_names)})

    def model_meta(self, cfg: TrainConfig, args: VideoArgs, data: TaskData) -> dict[str, Any]:
        return {"model": None, "model_kwargs": backbone_kwargs(cfg, len(data.info["class_names"]), 3),
                "embedder": {"name": "video_tiler", "kwargs": {"num_frames": args.num_frames, "grid": args.grid}},
                "head": None, "class_names": list(data.info["class_names"]),
                "input_size": [args.num_frames, 3, args.frame_size, args.frame_size]}

    def build_model(self, cfg: TrainConfig, args: VideoArgs, data: TaskData) -> nn.Module:
        return build_embedder_classifier(cfg, self.model_meta(cfg, args, data))

    def model_label(self, cfg: TrainConfig) -> str:
        return f"video embedder + {super().model_label(cfg)}"

    def read_input(self, path: Path, meta: Mapping[str, Any], request: Request) -> torch.Tensor:
        from unireplknet.data.video import read_clip

        num_frames, _, size, _ = (int(v) for v in meta["input_size"])
        return read_clip(path, num_frames, size)

    def input_files(self, inputs: Sequence[str]) -> list[Path]:
        """Clips: video files, folders of frame images (one clip each), and folders of such clips."""
        from unireplknet.data.datasets import IMG_EXTENSIONS

        def is_frame_folder(p: Path) -> bool:
            return p.is_dir() and any(q.suffix.lower() in IMG_EXTENSIONS for q in p.iterdir())

        clips: list[Path] = []
        for text in inputs:
            p = Path(text)
            if p.is_dir() and not is_frame_folder(p):
                clips += [q for q in sorted(p.iterdir())
                          if is_frame_folder(q) or q.suffix.lower() in self.input_suffixes]
            elif p.exists():
                clips.append(p)
            else:
                raise UserError(f"input '{p}' does not exist; check the path")
        if not clips:
            raise UserError("no clips given: pass video files or folders of frame images")
        return clips
