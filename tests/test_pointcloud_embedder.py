"""Point cloud projection embedder (paper eq. 4): shapes, depth-awareness, differentiability, bad input."""

from __future__ import annotations

import pytest
import torch

from unireplknet.modalities.pointcloud import PointCloudProjector


def test_shape_and_backprop() -> None:
    torch.manual_seed(0)
    emb = PointCloudProjector(img_size=32, views=3, point_dim=4, hidden=8)
    pts = torch.rand(2, 50, 3) * 2 - 1
    pts.requires_grad_(True)
    out = emb(pts)
    assert out.shape == (2, 3, 32, 32)
    out.square().sum().backward()
    assert pts.grad is not None and torch.isfinite(pts.grad).all() and pts.grad.abs().sum() > 0
    assert all(p.grad is not None for p in emb.parameters())


def test_projection_places_points_and_nearer_points_win() -> None:
    emb = PointCloudProjector(img_size=5, views=1, point_dim=1, tau=0.05).double()
    # two points on the same pixel (u = v = 0 -> centre pixel 2,2), nearness +0.5 and -0.5
    pts = torch.tensor([[[0.0, 0.0, 0.5], [0.0, 0.0, -0.5]]], dtype=torch.float64)
    feats = torch.tensor([[[1.0], [-1.0]]], dtype=torch.float64)
    maps = emb.project(pts, feats)  # (1, C+2 = 3, 5, 5)
    assert maps.shape == (1, 3, 5, 5)
    w_far = torch.exp(torch.tensor(-1.0 / 0.05, dtype=torch.float64))
    den = 1.0 + w_far + 1e-6  # the projector's mean adds 1e-6 to the weight sum
    expect_feat = (1.0 - w_far) / den
    torch.testing.assert_close(maps[0, 0, 2, 2], expect_feat, rtol=1e-9, atol=1e-9)  # the nearer one wins
    assert maps[0, 0, 2, 2] > 0.999
    torch.testing.assert_close(maps[0, 1, 2, 2], (0.5 - 0.5 * w_far) / den, rtol=1e-9, atol=1e-9)
    occupied = maps[0, 2] > 0
    assert occupied.sum() == 1 and occupied[2, 2]
    # swap the depths: the other point's feature wins now
    maps2 = emb.project(pts * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64), feats)
    assert maps2[0, 0, 2, 2] < -0.999


def test_bilinear_splat_weights() -> None:
    emb = PointCloudProjector(img_size=3, views=1, point_dim=1).double()
    # u = -0.5 -> x = 0.5 px, v = 1 -> y = 2 px: splits evenly between (2, 0) and (2, 1)
    pts = torch.tensor([[[-0.5, 1.0, 0.0]]], dtype=torch.float64)
    occ = emb.project(pts, torch.ones(1, 1, 1, dtype=torch.float64))[0, 2]
    half = 1 - torch.exp(torch.tensor(-0.5, dtype=torch.float64))
    torch.testing.assert_close(occ[2, 0], half)
    torch.testing.assert_close(occ[2, 1], half)
    assert occ.sum() - 2 * half < 1e-12


def test_views_see_other_axes() -> None:
    emb = PointCloudProjector(img_size=3, views=3, point_dim=1).double()
    pts = torch.tensor([[[1.0, -1.0, 0.0]]], dtype=torch.float64)
    occ = emb.project(pts, torch.ones(1, 1, 1, dtype=torch.float64))[0, 2::3]  # occupancy of each view
    assert occ[0, 0, 2] > 0  # front: u = x = 1 (col 2), v = y = -1 (row 0)
    assert occ[1, 0, 1] > 0  # side: u = z = 0 (col 1), v = y = -1 (row 0)
    assert occ[2, 1, 2] > 0  # top: u = x = 1 (col 2), v = z = 0 (row 1)


@pytest.mark.parametrize("bad,match", [(torch.zeros(1, 0, 3), "empty"),
                                       (torch.full((1, 4, 3), float("nan")), "NaN"),
                                       (torch.zeros(1, 4, 2), r"\(B, P, 3\)")])
def test_bad_points(bad: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PointCloudProjector(img_size=8)(bad)
