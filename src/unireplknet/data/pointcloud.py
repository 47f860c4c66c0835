"""Point cloud datasets (paper §3.3, Table 10): ModelNet40 (HDF5 and .off meshes), ScanObjectNN (HDF5) and
the built-in procedurally generated shapes, plus normalization, resampling and train-time augmentation.

Every dataset returns ``(points (P, 3) float32, label)``, centred and scaled into the unit sphere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from unireplknet.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["H5PointCloudDataset", "OffMeshDataset", "PointAugment", "ProceduralShapes", "find_h5_split",
           "normalize_points", "read_off", "read_point_file", "resample_points", "sample_mesh"]


# ---------------------------------------------------------------------------------------------- helpers
def normalize_points(points: np.ndarray) -> np.ndarray:
    """Centre on the mean and scale so the farthest point is at distance 1. (N, 3) -> (N, 3)."""
    pts = points - points.mean(axis=0, keepdims=True)
    radius = np.sqrt((pts ** 2).sum(axis=1)).max()
    return pts / radius if radius > 0 else pts


def resample_points(points: np.ndarray, num_points: int, rng: np.random.Generator | None) -> np.ndarray:
    """Exactly ``num_points`` rows: a random subset (or, without ``rng``, the first ones), points repeated
    at random when there are too few."""
    n = len(points)
    if n == num_points:
        return points
    if rng is None:
        idx = np.arange(num_points) % n
    elif n > num_points:
        idx = rng.choice(n, num_points, replace=False)
    else:
        idx = np.concatenate([np.arange(n), rng.integers(0, n, num_points - n)])
    return points[idx]


def check_cloud(points: np.ndarray, where: str) -> None:
    """UserError for an empty or non-finite cloud (bad input files)."""
    if points.ndim != 2 or points.shape[1] < 3:
        raise UserError(f"{where}: a point cloud must be N x 3 (x, y, z), got shape {points.shape}; "
                        "check the file")
    if len(points) == 0:
        raise UserError(f"{where}: the point cloud is empty; remove the sample or fix the file")
    if not np.isfinite(points[:, :3]).all():
        raise UserError(f"{where}: the point cloud has NaN or infinite coordinates; clean the file")


class PointAugment:
    """Train-time augmentation: rotation about the up axis, anisotropic scaling, clipped jitter, point
    dropout (dropped points are replaced by the first point, the usual trick that keeps P fixed)."""

    def __init__(self, up_axis: int = 1, rotate: bool = True, scale: tuple[float, float] = (0.8, 1.25),
                 jitter: float = 0.01, jitter_clip: float = 0.05, max_dropout: float = 0.3) -> None:
        self.up_axis, self.rotate, self.scale = up_axis, rotate, scale
        self.jitter, self.jitter_clip, self.max_dropout = jitter, jitter_clip, max_dropout

    def __call__(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pts = points.copy()
        if self.rotate:
            a = rng.uniform(0, 2 * np.pi)
            c, s = np.cos(a), np.sin(a)
            i, j = [k for k in range(3) if k != self.up_axis]
            pi, pj = pts[:, i].copy(), pts[:, j].copy()
            pts[:, i], pts[:, j] = c * pi - s * pj, s * pi + c * pj
        pts = pts * rng.uniform(*self.scale, size=(1, 3))
        if self.jitter > 0:
            pts = pts + np.clip(self.jitter * rng.standard_normal(pts.shape), -self.jitter_clip, self.jitter_clip)
        if self.max_dropout > 0:
            drop = rng.random(len(pts)) < rng.uniform(0, self.max_dropout)
            if drop.any() and not drop.all():
                pts[drop] = pts[~drop][0]
        return pts.astype(np.float32)


class _CloudDataset(Dataset):
    """Shared ``__getitem__``: resample to ``num_points`` (random when training), augment, to tensor."""

    points: list[np.ndarray] | np.ndarray
    labels: list[int]
    class_names: list[str]

    def __init__(self, num_points: int, train: bool, augment: Callable | None, seed: int) -> None:
        self.num_points, self.train, self.augment, self.seed = num_points, train, augment, seed

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> list[int]:
        return self.labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        # training draws from torch's generator (seeded per rank and loader worker): reproducible runs
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()))) if self.train else None
        pts = resample_points(np.asarray(self.points[index][:, :3], dtype=np.float32), self.num_points, rng)
        if self.train and self.augment is not None:
            pts = self.augment(pts, rng)
        return torch.from_numpy(np.ascontiguousarray(pts, dtype=np.float32)), int(self.labels[index])


# ------------------------------------------------------------------------------------------------- HDF5
def find_h5_split(root: str | os.PathLike, split: str) -> list[Path]:
    """The HDF5 files of ``split`` ('train' / 'test') under ``root``: ModelNet40's ``ply_data_train*.h5``
    or ScanObjectNN's ``training_*.h5`` / ``test_*.h5`` (the first variant found, sorted by name)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"point cloud folder '{root}' does not exist; pass --data DIR or 'shapes'")
    files = sorted(root.glob(f"ply_data_{split}*.h5"))
    if files:
        return files
    prefix = "training" if split == "train" else "test"
    files = sorted(root.glob(f"{prefix}_*.h5"))
    if files:  # ScanObjectNN: one file per variant; take the first (main_split layout)
        return files[:1]
    return []


class H5PointCloudDataset(_CloudDataset):
    """Point clouds in HDF5 files with ``data`` (N, P0, 3+) and ``label`` (N,) or (N, 1) (ModelNet40's
    ``ply_data_*.h5``, ScanObjectNN's ``*_objectdataset*.h5``). ``class_names`` from ``shape_names.txt``
    next to the files when present, else ``0..K-1``."""

    def __init__(self, files: list[Path], num_points: int = 1024, train: bool = False,
                 augment: Callable | None = None, class_names: list[str] | None = None, seed: int = 0) -> None:
        super().__init__(num_points, train, augment, seed)
        import h5py

        if not files:
            raise UserError("no HDF5 point cloud files found; expected ply_data_train*.h5 / ply_data_test*.h5 "
                            "(ModelNet40) or training_*.h5 / test_*.h5 (ScanObjectNN)")
        data, labels = [], []
        for f in files:
            try:
                with h5py.File(f, "r") as h5:
                    if "data" not in h5 or "label" not in h5:
                        raise UserError(f"'{f}' has no 'data'/'label' datasets (found {', '.join(h5)}); "
                                        "use the ModelNet40 / ScanObjectNN HDF5 layout")
                    d = np.asarray(h5["data"][:], dtype=np.float32)
                    lab = np.asarray(h5["label"][:]).reshape(-1).astype(np.int64)
            except OSError as err:
                raise UserError(f"cannot read '{f}' as HDF5 ({err}); check the file") from None
            if d.ndim != 3 or d.shape[-1] < 3 or len(d) != len(lab):
                raise UserError(f"'{f}': 'data' must be (N, P, 3) with one label per cloud, got {d.shape} "
                                f"and {lab.shape}")
            for i in range(len(d)):
                check_cloud(d[i], f"'{f}' sample {i}")
            data.append(d[..., :3])
            labels.append(lab)
        self.points = np.concatenate(data)
        self.points = np.stack([normalize_points(p) for p in self.points]).astype(np.float32)
        self.labels = np.concatenate(labels).tolist()
        names_file = files[0].parent / "shape_names.txt"
        if class_names is None and names_file.is_file():
            class_names = [n.strip() for n in names_file.read_text().splitlines() if n.strip()]
        self.class_names = list(class_names) if class_names else [str(i) for i in range(max(self.labels) + 1)]
        if max(self.labels) >= len(self.class_names) or min(self.labels) < 0:
            raise UserError(f"labels of {files[0]} run from {min(self.labels)} to {max(self.labels)} but there "
                            f"are {len(self.class_names)} class names; check shape_names.txt")


# ------------------------------------------------------------------------------------------------- .off
def read_off(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3) float64, triangles (F, 3) int64) of an OFF mesh; polygons are fanned into triangles.
    Handles the ModelNet quirk of the counts on the header line (``OFF490 518 0``)."""
    text = Path(path).read_text().split("\n")
    lines = [ln.split("#")[0].strip() for ln in text]
    lines = [ln for ln in lines if ln]
    if not lines or not lines[0].startswith("OFF"):
        raise UserError(f"'{path}' is not an OFF file (no 'OFF' header)")
    head = lines[0][3:].strip()
    body = lines[1:]
    if not head:
        head, body = body[0], body[1:]
    try:
        nv, nf = (int(v) for v in head.split()[:2])
        verts = np.array([[float(v) for v in body[i].split()[:3]] for i in range(nv)], dtype=np.float64)
        tris = []
        for ln in body[nv:nv + nf]:
            idx = [int(v) for v in ln.split()]
            poly = idx[1:1 + idx[0]]
            tris += [[poly[0], poly[k], poly[k + 1]] for k in range(1, len(poly) - 1)]
    except (ValueError, IndexError) as err:
        raise UserError(f"'{path}' is not a valid OFF mesh ({err})") from None
    return verts, np.asarray(tris, dtype=np.int64).reshape(-1, 3)


def sample_mesh(verts: np.ndarray, tris: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points uniformly on the mesh surface (triangles chosen by area, uniform barycentric)."""
    if len(tris) == 0:
        return verts[rng.integers(0, len(verts), n)] if len(verts) else verts.reshape(0, 3)
    a, b, c = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    p = area / area.sum() if area.sum() > 0 else None
    k = rng.choice(len(tris), n, p=p)
    r1, r2 = rng.random((n, 1)), rng.random((n, 1))
    s = np.sqrt(r1)
    return (1 - s) * a[k] + s * (1 - r2) * b[k] + s * r2 * c[k]


class OffMeshDataset(_CloudDataset):
    """ModelNet's mesh layout ``root/<class>/<split>/*.off``; each mesh is sampled to ``sample_points``
    points once (seeded by its index, so every run sees the same clouds), then resampled to ``num_points``."""

    def __init__(self, root: str | os.PathLike, split: str, num_points: int = 1024, train: bool = False,
                 augment: Callable | None = None, class_names: list[str] | None = None,
                 sample_points: int | None = None, seed: int = 0) -> None:
        super().__init__(num_points, train, augment, seed)
        root = Path(root)
        found = sorted(d.name for d in root.iterdir() if (d / split).is_dir())
        self.class_names = list(class_names) if class_names else found
        index = {n: i for i, n in enumerate(self.class_names)}
        files = [(f, index[n]) for n in found if n in index for f in sorted((root / n / split).glob("*.off"))]
        if not files:
            raise UserError(f"no .off meshes under '{root}/<class>/{split}/'; use ModelNet's mesh layout")
        n_sample = sample_points or num_points
        self.points, self.labels = [], []
        for i, (f, lab) in enumerate(files):
            verts, tris = read_off(f)
            if len(verts) == 0:
                raise UserError(f"'{f}' has no vertices; remove it or fix the mesh")
            pts = sample_mesh(verts, tris, n_sample, np.random.default_rng(seed + i))
            check_cloud(pts, f"'{f}'")
            self.points.append(normalize_points(pts).astype(np.float32))
            self.labels.append(lab)


POINT_FILE_SUFFIXES = (".off", ".npy", ".xyz", ".txt", ".pts")


def read_point_file(path: Path, num_points: int, seed: int = 0) -> np.ndarray:
    """One cloud from a file -> (num_points, 3) float32, normalized: an OFF mesh (surface-sampled), a ``.npy``
    array (N, >=3) or a text file of x y z rows (``.xyz``/``.txt``/``.pts``; commas or spaces)."""
    rng = np.random.default_rng(seed)
    suffix = path.suffix.lower()
    try:
        if suffix == ".off":
            verts, tris = read_off(path)
            points = sample_mesh(verts, tris, max(num_points, 2048), rng)
        elif suffix == ".npy":
            points = np.load(path, allow_pickle=False)
        else:
            points = np.loadtxt(path, delimiter="," if "," in path.read_text()[:1000] else None, ndmin=2)
    except (ValueError, OSError) as err:
        raise UserError(f"cannot read points from '{path}' ({type(err).__name__}); expected "
                        f"{', '.join(POINT_FILE_SUFFIXES)}") from None
    points = np.asarray(points, dtype=np.float64)
    check_cloud(points, f"'{path}'")
    return resample_points(normalize_points(points[:, :3]), num_points, rng).astype(np.float32)


def looks_like_off_tree(root: Path) -> bool:
    return root.is_dir() and any(root.glob("*/train/*.off"))


# ----------------------------------------------------------------------------------- procedural shapes
SHAPES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid", "octahedron", "helix")


def _unit_vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _shape_surface(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points on the surface of a canonical shape (y is up), roughly within [-1, 1]^3."""
    u = rng.random(n)
    if name == "sphere":
        return _unit_vectors(n, rng)
    if name == "cube":
        p = rng.uniform(-1, 1, (n, 3))
        axis = rng.integers(0, 3, n)
        p[np.arange(n), axis] = rng.choice([-1.0, 1.0], n)
        return p
    if name == "cylinder":  # side and caps in proportion to their areas (r = 0.7, h = 2)
        a = rng.uniform(0, 2 * np.pi, n)
        r = np.where(u < 0.74, 0.7, 0.7 * np.sqrt(rng.random(n)))
        y = np.where(u < 0.74, rng.uniform(-1, 1, n), np.where(u < 0.87, -1.0, 1.0))
        return np.stack([r * np.cos(a), y, r * np.sin(a)], 1)
    if name == "cone":  # apex up, base radius 0.9
        a = rng.uniform(0, 2 * np.pi, n)
        t = np.sqrt(rng.random(n))  # uniform on the lateral surface
        side = u < 0.7
        r = np.where(side, 0.9 * t, 0.9 * np.sqrt(rng.random(n)))
        y = np.where(side, 1 - 2 * t, -1.0)
        return np.stack([r * np.cos(a), y, r * np.sin(a)], 1)
    if name == "torus":
        a, b = rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 2 * np.pi, n)
        R, r = 0.75, 0.25
        return np.stack([(R + r * np.cos(b)) * np.cos(a), r * np.sin(b), (R + r * np.cos(b)) * np.sin(a)], 1)
    if name in ("pyramid", "octahedron"):
        if name == "pyramid":  # square base at y = -1, apex at y = 1
            apex = np.array([0.0, 1.0, 0.0])
            base = np.array([[1, -1, 1], [1, -1, -1], [-1, -1, -1], [-1, -1, 1]], dtype=float)
            tris = [(apex, base[i], base[(i + 1) % 4]) for i in range(4)]
            tris += [(base[0], base[1], base[2]), (base[0], base[2], base[3])]
        else:
            ax = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=float)
            tris = [(ax[i], ax[j], ax[k]) for i in (0, 1) for j in (2, 3) for k in (4, 5)]
        verts = np.array([v for t in tris for v in t])
        faces = np.arange(len(verts)).reshape(-1, 3)
        return sample_mesh(verts, faces, n, rng)
    if name == "helix":  # a tube wound 2.5 turns around the up axis
        t = rng.uniform(0, 1, n)
        a = t * 5 * np.pi
        centre = np.stack([0.7 * np.cos(a), 2 * t - 1, 0.7 * np.sin(a)], 1)
        return centre + 0.12 * _unit_vectors(n, rng)
    raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def _random_rotation(rng: np.random.Generator, max_tilt: float) -> np.ndarray:
    """Any angle about the up (y) axis, then a tilt of up to ``max_tilt`` radians about x and z."""
    return (_rotation(0, rng.uniform(-max_tilt, max_tilt)) @ _rotation(2, rng.uniform(-max_tilt, max_tilt))
            @ _rotation(1, rng.uniform(0, 2 * np.pi)))


def make_shape(label: int, num_points: int, rng: np.random.Generator, max_tilt: float = 0.35) -> np.ndarray:
    """One random instance of shape ``SHAPES[label]``: size (0.7–1.3 per axis), rotation (any angle about
    the up axis, as objects stand in ModelNet, and a tilt up to ``max_tilt`` rad), Gaussian noise
    (σ 0–0.03) and partial occlusion (the points beyond a random plane, 0–25% of them, are removed),
    normalized and resampled to ``num_points``. (num_points, 3) float32."""
    n = int(num_points * 1.4)
    pts = _shape_surface(SHAPES[label], n, rng) * rng.uniform(0.7, 1.3, (1, 3))
    pts = pts @ _random_rotation(rng, max_tilt).T
    pts = pts + rng.uniform(0, 0.03) * rng.standard_normal(pts.shape)
    d = pts @ _unit_vectors(1, rng)[0]
    cut = np.quantile(d, 1 - rng.uniform(0, 0.25))
    pts = pts[d <= cut]
    return resample_points(normalize_points(pts), num_points, rng).astype(np.float32)


class ProceduralShapes(_CloudDataset):
    """The built-in point cloud dataset: ``per_class`` random instances of each of the 8 :data:`SHAPES`
    (see :func:`make_shape`). Splits use disjoint seeds, so the held-out clouds are never seen in training."""

    class_names = list(SHAPES)
    SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}

    def __init__(self, split: str, num_points: int = 1024, per_class: int = 200, train: bool | None = None,
                 augment: Callable | None = None, seed: int = 0) -> None:
        if split not in self.SPLIT_SEEDS:
            raise ValueError(f"split must be one of {tuple(self.SPLIT_SEEDS)}, not {split!r}")
        super().__init__(num_points, split == "train" if train is None else train, augment, seed)
        rng = np.random.default_rng([seed, self.SPLIT_SEEDS[split], 12345])
        self.labels = [k for k in range(len(SHAPES)) for _ in range(per_class)]
        self.points = [make_shape(k, num_points, rng) for k in self.labels]
