"""The DAVIS measures of the referring task: J (region IoU) and F (boundary F-measure) against brute-force float64
references on random masks, and cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unireplknet.tasks.referring import boundary, boundary_f, region_similarity


def _contour_bruteforce(m: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour inside the image that is outside the mask."""
    H, W = m.shape
    out = np.zeros_like(m)
    for i in range(H):
        for j in range(W):
            if m[i, j]:
                out[i, j] = any(0 <= a < H and 0 <= b < W and not m[a, b]
                                for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)))
    return out


def _f_bruteforce(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """Contour precision / recall by explicit nearest-contour distances (match: distance <= radius)."""
    H, W = gt.shape
    radius = math.ceil(bound_th * math.hypot(H, W))
    bp, bg = np.argwhere(_contour_bruteforce(pred)), np.argwhere(_contour_bruteforce(gt))
    if len(bp) == 0 and len(bg) == 0:
        return 1.0
    if len(bp) == 0 or len(bg) == 0:
        return 0.0
    d = np.sqrt(((bp[:, None, :] - bg[None, :, :]) ** 2).sum(-1).astype(np.float64))
    precision = float((d.min(1) <= radius).mean())
    recall = float((d.min(0) <= radius).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _blobs(rng: np.random.Generator, n: int, H: int, W: int) -> np.ndarray:
    """n random masks: unions of 1-3 random rectangles and discs."""
    y, x = np.mgrid[0:H, 0:W]
    out = np.zeros((n, H, W), bool)
    for k in range(n):
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.uniform(0, H), rng.uniform(0, W), rng.uniform(1, min(H, W) / 3)
            out[k] |= ((y - cy) ** 2 + (x - cx) ** 2 <= r * r) if rng.random() < 0.5 else (
                (np.abs(y - cy) <= r) & (np.abs(x - cx) <= r * rng.uniform(0.3, 1.5)))
    return out


@pytest.mark.parametrize("shape", [(17, 23), (64, 64), (40, 130)])
def test_j_and_f_match_bruteforce_on_random_masks(shape):
    rng = np.random.default_rng(sum(shape))
    pred, gt = _blobs(rng, 6, *shape), _blobs(rng, 6, *shape)
    pred[1] = gt[1]  # identical
    pred[2] = np.roll(gt[2], 1, axis=1)  # a small shift
    j = region_similarity(torch.from_numpy(pred), torch.from_numpy(gt)).numpy()
    f = boundary_f(torch.from_numpy(pred), torch.from_numpy(gt)).numpy()
    for k in range(len(gt)):
        union = (pred[k] | gt[k]).sum()
        assert j[k] == pytest.approx((pred[k] & gt[k]).sum() / union if union else 1.0, abs=1e-12)
        assert f[k] == pytest.approx(_f_bruteforce(pred[k], gt[k]), abs=1e-12)
        assert np.array_equal(boundary(torch.from_numpy(gt[k][None]))[0].numpy(), _contour_bruteforce(gt[k]))


def test_known_answers():
    gt = torch.zeros(1, 64, 64, dtype=torch.bool)
    gt[0, 20:40, 10:30] = True
    same, empty = gt.clone(), torch.zeros_like(gt)
    disjoint = torch.zeros_like(gt)
    disjoint[0, 50:60, 45:60] = True
    shift1 = torch.roll(gt, 1, dims=2)  # within ceil(0.008 · 90.5) = 1 pixel
    shift3 = torch.roll(gt, 3, dims=2)
    assert region_similarity(same, gt).item() == 1.0 and boundary_f(same, gt).item() == 1.0
    assert region_similarity(disjoint, gt).item() == 0.0 and boundary_f(disjoint, gt).item() == 0.0
    assert boundary_f(shift1, gt).item() == 1.0 and region_similarity(shift1, gt).item() == pytest.approx(380 / 420)
    assert boundary_f(shift3, gt).item() < 0.7
    assert region_similarity(empty, empty).item() == 1.0 and boundary_f(empty, empty).item() == 1.0
    assert region_similarity(empty, gt).item() == 0.0 and boundary_f(empty, gt).item() == 0.0
    assert boundary_f(gt, empty).item() == 0.0
    # a larger tolerance (pixels when >= 1) forgives a larger shift
    assert boundary_f(shift3, gt, bound_th=3).item() == 1.0
