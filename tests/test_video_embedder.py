"""Video embedder (paper eq. 5): exact tiling layout, grid shapes, temporal sampling indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unireplknet.data.video import sample_frame_indices
from unireplknet.modalities.video import FrameTiler, grid_shape, tile_frames, untile_frames


def test_grid_shapes() -> None:
    assert grid_shape(16) == (4, 4)
    assert grid_shape(8) == (2, 4)
    assert grid_shape(6) == (2, 3)
    assert grid_shape(7) == (1, 7)


def test_tiling_layout_exact() -> None:
    B, NF, C, h, w = 2, 6, 3, 4, 5
    frames = torch.randn(B, NF, C, h, w)
    img = tile_frames(frames)
    assert img.shape == (B, C, 2 * h, 3 * w)
    for t in range(NF):
        r, c = divmod(t, 3)
        assert torch.equal(img[:, :, r * h:(r + 1) * h, c * w:(c + 1) * w], frames[:, t])
    assert torch.equal(untile_frames(img, (2, 3)), frames)


def test_paper_size_and_module() -> None:
    tiler = FrameTiler(16)
    assert tiler(torch.zeros(1, 16, 3, 224, 224)).shape == (1, 3, 896, 896)
    x = torch.randn(1, 4, 3, 2, 2, requires_grad=True)
    FrameTiler(4, grid=(1, 4))(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    with pytest.raises(ValueError, match="expected"):
        tiler(torch.zeros(1, 8, 3, 4, 4))


def test_uniform_sampling() -> None:
    assert sample_frame_indices(16, 4).tolist() == [2, 6, 10, 14]
    assert sample_frame_indices(4, 4).tolist() == [0, 1, 2, 3]
    assert sample_frame_indices(10, 3).tolist() == [1, 5, 8]


def test_random_sampling_within_segments() -> None:
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        idx = sample_frame_indices(20, 4, "random", rng)
        assert (np.diff(idx) > 0).all() and idx.min() >= 0 and idx.max() < 20
        assert all(5 * i <= v < 5 * (i + 1) for i, v in enumerate(idx))
        seen.update(idx.tolist())
    assert len(seen) == 20  # every frame can be drawn
    for total in (4, 5, 7, 9):
        idx = sample_frame_indices(total, 4, "random", rng)
        assert len(set(idx.tolist())) == 4 and idx.max() < total


def test_too_few_frames() -> None:
    with pytest.raises(ValueError, match="fewer than"):
        sample_frame_indices(3, 4)
