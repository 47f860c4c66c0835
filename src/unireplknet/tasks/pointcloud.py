"""Point cloud classification (paper §3.3 eq. 4, Table 10): the multi-view projection embedder, the unchanged
backbone, overall and mean class accuracy.

``data``: ``shapes`` (built-in procedural shapes), a ModelNet40 / ScanObjectNN HDF5 folder
(``ply_data_{train,test}*.h5`` or ``{training,test}_*.h5``) or a ModelNet ``.off`` tree
(``<class>/{train,test}/*.off``); for these two the test files are the held-out split, as in Table 10.
``img_size`` is the projection size (paper: 224).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from unireplknet.data.pointcloud import POINT_FILE_SUFFIXES
from unireplknet.engine.config import TrainConfig
from unireplknet.engine.task import Request, TaskData
from unireplknet.errors import UserError
from unireplknet.tasks import register_task
from unireplknet.tasks.classification import Classifier, backbone_kwargs, build_backbone, load_finetune
from unireplknet.utils.typed import check


@dataclass
class PointCloudArgs:
    num_points: int = 1024
    views: int = 3
    point_dim: int = 8
    hidden: int = 16
    tau: float = 0.05
    per_class: int = 200  # built-in shapes: training clouds per class
    val_per_class: int = 50
    up_axis: int = 1
    aug_rotate: bool = True
    aug_scale: list[float] = field(default_factory=lambda: [0.8, 1.25])
    aug_jitter: float = 0.01
    aug_dropout: float = 0.3
    off_sample_points: int = 2048

    def __post_init__(self) -> None:
        check([(self.num_points >= 1, "num_points must be at least 1"), (self.views >= 1, "views must be >= 1"),
               (self.up_axis in (0, 1, 2), "up_axis must be 0, 1 or 2"), (len(self.aug_scale) == 2,
                                                                          "aug_scale must be [low, high]"),
               (self.per_class >= 1 and self.val_per_class >= 1, "per_class and val_per_class must be >= 1")])


def build_embedder_classifier(cfg: TrainConfig, meta: Mapping[str, Any]) -> nn.Module:
    """embedder -> training-form backbone with its classifier, from the task's ``model_meta``."""
    from unireplknet.models.multimodal import build_embedder_model

    model = build_embedder_model(meta, build_backbone(cfg, meta["model_kwargs"]))
    if cfg.finetune:
        load_finetune(model, cfg.finetune)
    return model


@register_task
class PointCloudTask(Classifier):
    name = "pointcloud"
    Args = PointCloudArgs
    default_config = "pointcloud_default"
    builtin_data = ("shapes",)
    mixes = ()
    input_suffixes: ClassVar[tuple[str, ...]] = POINT_FILE_SUFFIXES

    def build_data(self, cfg: TrainConfig, args: PointCloudArgs) -> TaskData:
        from unireplknet.data.datasets import data_folder
        from unireplknet.data.pointcloud import (
            H5PointCloudDataset,
            OffMeshDataset,
            PointAugment,
            ProceduralShapes,
            find_h5_split,
            looks_like_off_tree,
        )

        aug = PointAugment(up_axis=args.up_axis, rotate=args.aug_rotate, scale=tuple(args.aug_scale),
                           jitter=args.aug_jitter, max_dropout=args.aug_dropout)
        P = args.num_points
        if cfg.data in self.builtin_data:
            train = ProceduralShapes("train", P, args.per_class, augment=aug, seed=cfg.seed)
            val = ProceduralShapes("val", P, args.val_per_class, seed=cfg.seed)
            test = ProceduralShapes("test", P, args.val_per_class, seed=cfg.seed)
            return TaskData(train, val, test, {"class_names": list(train.class_names)})
        root = data_folder(cfg.data or "", "a ModelNet40 / ScanObjectNN HDF5 folder or a ModelNet .off tree, or "
                                           f"one of: {', '.join(self.builtin_data)}")
        train_files = find_h5_split(root, "train")
        if train_files:
            train = H5PointCloudDataset(train_files, P, train=True, augment=aug, seed=cfg.seed)
            val = H5PointCloudDataset(find_h5_split(root, "test"), P, class_names=train.class_names)
        elif looks_like_off_tree(root):
            train = OffMeshDataset(root, "train", P, train=True, augment=aug, sample_points=args.off_sample_points,
                                   seed=cfg.seed)
            val = OffMeshDataset(root, "test", P, class_names=train.class_names,
                                 sample_points=args.off_sample_points, seed=cfg.seed + 1)
        else:
            raise UserError(f"'{root}' holds no point clouds: expected ply_data_train*.h5 (ModelNet40), "
                            "training_*.h5 (ScanObjectNN) or <class>/train/*.off (ModelNet meshes)")
        # ModelNet40 / ScanObjectNN have no validation split: their test split is both (as in Table 10)
        return TaskData(train, val, val, {"class_names": list(train.class_names)})

    def model_meta(self, cfg: TrainConfig, args: PointCloudArgs, data: TaskData) -> dict[str, Any]:
        embedder = {"img_size": cfg.img_size, "views": args.views, "point_dim": args.point_dim, "hidden": args.hidden,
                    "tau": args.tau}
        return {"model": None, "model_kwargs": backbone_kwargs(cfg, len(data.info["class_names"]), 3),
                "embedder": {"name": "pointcloud_projector", "kwargs": embedder}, "head": None,
                "class_names": list(data.info["class_names"]), "input_size": [args.num_points, 3]}

    def build_model(self, cfg: TrainConfig, args: PointCloudArgs, data: TaskData) -> nn.Module:
        return build_embedder_classifier(cfg, self.model_meta(cfg, args, data))

    def model_label(self, cfg: TrainConfig) -> str:
        return f"pointcloud embedder + {super().model_label(cfg)}"

    def example_input(self, meta: Mapping[str, Any], batch: int, img_size: int | None = None,
                      seed: int = 0) -> torch.Tensor:
        """Random clouds like the data's: points inside the unit sphere."""
        x = super().example_input(meta, batch, img_size, seed)
        return x / x.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)

    def read_input(self, path: Path, meta: Mapping[str, Any], request: Request) -> torch.Tensor:
        from unireplknet.data.pointcloud import read_point_file

        return torch.from_numpy(read_point_file(path, int(meta["input_size"][0])))
