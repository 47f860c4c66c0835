"""Point cloud datasets: ModelNet40 / ScanObjectNN HDF5 and .off fixtures written in the real formats, the
procedural shapes, augmentation, and the bad-input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unireplknet.data.pointcloud import (
    SHAPES,
    H5PointCloudDataset,
    OffMeshDataset,
    PointAugment,
    ProceduralShapes,
    find_h5_split,
    normalize_points,
    read_off,
    sample_mesh,
)
from unireplknet.errors import UserError

h5py = pytest.importorskip("h5py", reason="h5py is in the 'pointcloud' extra")


def write_h5(path: Path, data: np.ndarray, label: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data.astype(np.float32))
        f.create_dataset("label", data=label.astype(np.uint8))


def test_modelnet_h5_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_h5(tmp_path / "ply_data_train0.h5", rng.normal(size=(3, 64, 3)), np.array([[0], [1], [2]]))
    write_h5(tmp_path / "ply_data_train1.h5", rng.normal(size=(2, 64, 3)), np.array([[1], [0]]))
    write_h5(tmp_path / "ply_data_test0.h5", rng.normal(size=(2, 64, 3)), np.array([[2], [2]]))
    (tmp_path / "shape_names.txt").write_text("airplane\nbathtub\nbed\n")
    files = find_h5_split(tmp_path, "train")
    assert [f.name for f in files] == ["ply_data_train0.h5", "ply_data_train1.h5"]
    ds = H5PointCloudDataset(files, num_points=32)
    assert len(ds) == 5 and ds.class_names == ["airplane", "bathtub", "bed"]
    assert ds.targets == [0, 1, 2, 1, 0]
    pts, lab = ds[0]
    assert pts.shape == (32, 3) and lab == 0
    norms = np.linalg.norm(ds.points[0], axis=1)
    assert abs(norms.max() - 1) < 1e-5 and np.abs(ds.points[0].mean(0)).max() < 1e-5  # unit sphere, centred
    assert len(H5PointCloudDataset(find_h5_split(tmp_path, "test"), num_points=100)[1][0]) == 100


def test_scanobjectnn_h5_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    write_h5(tmp_path / "training_objectdataset.h5", rng.normal(size=(4, 50, 3)), np.arange(4))
    write_h5(tmp_path / "test_objectdataset.h5", rng.normal(size=(2, 50, 3)), np.array([3, 1]))
    ds = H5PointCloudDataset(find_h5_split(tmp_path, "train"), num_points=50)
    assert ds.class_names == ["0", "1", "2", "3"] and ds.targets == [0, 1, 2, 3]
    assert H5PointCloudDataset(find_h5_split(tmp_path, "test"), num_points=50).targets == [3, 1]


@pytest.mark.parametrize("data,match", [(np.zeros((1, 0, 3)), "empty"),
                                        (np.full((1, 8, 3), np.nan), "NaN")])
def test_bad_h5_clouds(tmp_path: Path, data: np.ndarray, match: str) -> None:
    write_h5(tmp_path / "ply_data_train0.h5", data, np.array([0]))
    with pytest.raises(UserError, match=match):
        H5PointCloudDataset(find_h5_split(tmp_path, "train"))


def test_not_h5(tmp_path: Path) -> None:
    (tmp_path / "ply_data_train0.h5").write_text("not hdf5")
    with pytest.raises(UserError, match="HDF5"):
        H5PointCloudDataset(find_h5_split(tmp_path, "train"))
    with pytest.raises(UserError, match="no HDF5"):
        H5PointCloudDataset([])


CUBE_OFF = """OFF
8 6 0
-1 -1 -1
1 -1 -1
1 1 -1
-1 1 -1
-1 -1 1
1 -1 1
1 1 1
-1 1 1
4 0 1 2 3
4 4 5 6 7
4 0 1 5 4
4 2 3 7 6
4 1 2 6 5
4 0 3 7 4
"""


def test_off_reader_and_surface_sampling(tmp_path: Path) -> None:
    (tmp_path / "cube.off").write_text(CUBE_OFF)
    (tmp_path / "quirk.off").write_text("OFF8 6 0\n" + CUBE_OFF.split("\n", 2)[2])  # ModelNet's header quirk
    for name in ("cube.off", "quirk.off"):
        v, f = read_off(tmp_path / name)
        assert v.shape == (8, 3) and f.shape == (12, 3)  # quads fanned into 2 triangles each
    pts = sample_mesh(v, f, 2000, np.random.default_rng(0))
    assert np.allclose(np.abs(pts).max(axis=1), 1.0)  # every point is on a face of the cube
    # area-weighted: each of the 6 faces gets about 1/6 of the points
    face = np.argmax(np.abs(pts), axis=1) * 2 + (pts[np.arange(2000), np.argmax(np.abs(pts), axis=1)] > 0)
    counts = np.bincount(face, minlength=6)
    assert counts.min() > 2000 / 6 * 0.75


def test_off_tree_dataset(tmp_path: Path) -> None:
    for cls in ("chair", "table"):
        for split in ("train", "test"):
            d = tmp_path / cls / split
            d.mkdir(parents=True)
            (d / f"{cls}_0001.off").write_text(CUBE_OFF)
    (tmp_path / "table" / "train" / "broken.off").write_text("not a mesh\n")
    with pytest.raises(UserError, match="not an OFF file"):
        OffMeshDataset(tmp_path, "train", num_points=64)
    ds = OffMeshDataset(tmp_path, "test", num_points=64)
    assert ds.class_names == ["chair", "table"] and ds.targets == [0, 1]
    pts, _ = ds[1]
    assert pts.shape == (64, 3)
    assert abs(np.linalg.norm(pts.numpy(), axis=1).max() - 1) < 1e-5


def test_procedural_shapes_and_augment() -> None:
    assert len(SHAPES) >= 8
    a = ProceduralShapes("val", num_points=64, per_class=2)
    b = ProceduralShapes("val", num_points=64, per_class=2)
    t = ProceduralShapes("test", num_points=64, per_class=2)
    assert len(a) == 2 * len(SHAPES) and a.targets == sorted(a.targets)
    assert np.array_equal(a[3][0].numpy(), b[3][0].numpy())  # held-out clouds are fixed
    assert not np.array_equal(a[3][0].numpy(), t[3][0].numpy())  # and differ between splits
    assert all(np.isfinite(p).all() and np.linalg.norm(p, axis=1).max() <= 1 + 1e-5 for p in a.points)
    pts = normalize_points(np.random.default_rng(0).normal(size=(200, 3)))
    aug = PointAugment(up_axis=1, scale=(1.0, 1.0), jitter=0.0, max_dropout=0.0)(pts, np.random.default_rng(1))
    assert np.allclose(aug[:, 1], pts[:, 1], atol=1e-6)  # rotation about y keeps the heights
    assert np.allclose(np.linalg.norm(aug[:, [0, 2]], axis=1), np.linalg.norm(pts[:, [0, 2]], axis=1), atol=1e-5)
    drop = PointAugment(rotate=False, scale=(1.0, 1.0), jitter=0.0, max_dropout=0.9)
    out = drop(pts, np.random.default_rng(3))
    assert out.shape == pts.shape and (np.abs(out - pts).sum(1) > 0).any()
