"""Point cloud classification (paper §3.3 eq. 4, Table 10): the multi-view projection embedder, the unchanged
backbone, overall and mean class accuracy.

``cfg.data``: ``shapes`` (embedded procedural shapes), a ModelNet40 / ScanObjectNN HDF5 folder
(``ply_data_{train,test}*.h5`` or ``{training,test}_*.h5``) or a ModelNet ``.off`` tree
(``<class>/{train,test}/*.off``); for these two the test files are the held-out split, as in Table 10.
``cfg.img_size`` is the projection size (paper: 224). ``cfg.task_args`` (defaults below): ``num_points``,
``views``, ``point_dim``, ``hidden``, ``tau``, ``per_class`` / ``val_per_class`` (shapes), ``up_axis``,
``aug_scale``, ``aug_jitter``, ``aug_dropout``, ``aug_rotate``, ``off_sample_points``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unireplknet.errors import UserError
from unireplknet.tasks.base import TaskData
from unireplknet.tasks.embedded_classification import EmbeddedClassificationTask

DEFAULTS: dict[str, Any] = {"num_points": 1024, "views": 3, "point_dim": 8, "hidden": 16, "tau": 0.05,
                            "per_class": 200, "val_per_class": 50, "up_axis": 1, "aug_rotate": True,
                            "aug_scale": [0.8, 1.25], "aug_jitter": 0.01, "aug_dropout": 0.3,
                            "off_sample_points": 2048}
EMBEDDED = ("shapes",)


def task_args(cfg: Any) -> dict[str, Any]:
    unknown = set(cfg.task_args or {}) - set(DEFAULTS)
    if unknown:
        raise UserError(f"unknown point cloud task_args {sorted(unknown)}; known: {', '.join(DEFAULTS)}")
    return {**DEFAULTS, **(cfg.task_args or {})}


class PointCloudTask(EmbeddedClassificationTask):
    name = "pointcloud"
    default_config = "pointcloud_default"

    def build_data(self, cfg: Any) -> TaskData:
        from unireplknet.data.pointcloud import (
            H5PointCloudDataset,
            OffMeshDataset,
            PointAugment,
            ProceduralShapes,
            find_h5_split,
            looks_like_off_tree,
        )

        a = task_args(cfg)
        if a["num_points"] < 1:
            raise UserError("task_args.num_points must be at least 1")
        aug = PointAugment(up_axis=a["up_axis"], rotate=a["aug_rotate"], scale=tuple(a["aug_scale"]),
                           jitter=a["aug_jitter"], max_dropout=a["aug_dropout"])
        P = a["num_points"]
        if cfg.data == "shapes":
            train = ProceduralShapes("train", P, a["per_class"], augment=aug, seed=cfg.seed)
            val = ProceduralShapes("val", P, a["val_per_class"], seed=cfg.seed)
            test = ProceduralShapes("test", P, a["val_per_class"], seed=cfg.seed)
            return TaskData(train, val, test, {"class_names": list(train.class_names)})
        root = Path(str(cfg.data))
        if not root.is_dir():
            raise UserError(f"point cloud data '{root}' does not exist; pass --data with a ModelNet40 / "
                            f"ScanObjectNN HDF5 folder or a ModelNet .off tree, or one of: {', '.join(EMBEDDED)}")
        train_files = find_h5_split(root, "train")
        if train_files:
            train = H5PointCloudDataset(train_files, P, train=True, augment=aug, seed=cfg.seed)
            val = H5PointCloudDataset(find_h5_split(root, "test"), P, class_names=train.class_names)
        elif looks_like_off_tree(root):
            train = OffMeshDataset(root, "train", P, train=True, augment=aug,
                                   sample_points=a["off_sample_points"], seed=cfg.seed)
            val = OffMeshDataset(root, "test", P, class_names=train.class_names,
                                 sample_points=a["off_sample_points"], seed=cfg.seed + 1)
        else:
            raise UserError(f"'{root}' holds no point clouds: expected ply_data_train*.h5 (ModelNet40), "
                            "training_*.h5 (ScanObjectNN) or <class>/train/*.off (ModelNet meshes)")
        return TaskData(train, val, None, {"class_names": list(train.class_names), "val_split": "test"})

    def embedder_spec(self, cfg: Any, data: TaskData) -> tuple[str, dict[str, Any]]:
        a = task_args(cfg)
        return "pointcloud_projector", {"img_size": cfg.img_size, "views": a["views"], "point_dim": a["point_dim"],
                                        "hidden": a["hidden"], "tau": a["tau"]}

    def input_shape(self, cfg: Any) -> list[int]:
        return [task_args(cfg)["num_points"], 3]
