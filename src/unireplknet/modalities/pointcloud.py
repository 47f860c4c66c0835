"""Point cloud embedder (paper §3.3, eq. 4): P×3 points -> a 3×S×S map for the unchanged backbone.

A differentiable multi-view projection in plain PyTorch (no compiled extensions):

1. every point is encoded by a small MLP of its coordinates (C features);
2. for each view, the points are rotated into the view's frame: (u, v) place them on the image plane,
   the third coordinate is their nearness to the camera (larger = nearer);
3. each point is splatted bilinearly onto the 4 pixels around (u, v) of an S×S grid, weighted by
   ``exp((nearness - nearest nearness at that pixel) / tau)``: a soft z-buffer in which the nearest point of
   a pixel has weight 1 and points behind it fade out (depth-aware; differentiable in the features, the
   plane coordinates and the depth);
4. each view gives C feature channels (weighted mean), a depth channel and an occupancy channel; a few conv
   layers (1×1, a 7×7 depthwise large-kernel conv that fills the gaps between projected points, 1×1) turn
   the V·(C+2) channels into the 3-channel map.
"""

from __future__ import annotations

import torch
from torch import nn

from unireplknet.ops.dwconv import DepthwiseConv2d

__all__ = ["PointCloudProjector", "VIEW_ROTATIONS", "check_points"]

# Rows are the (u, v, nearness) axes of each view in the object frame: front (look along -z), side (-x),
# top (-y), then the three opposite directions.
VIEW_ROTATIONS = torch.tensor([
    [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
    [[0, 0, 1], [0, 1, 0], [1, 0, 0]],
    [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
    [[-1, 0, 0], [0, 1, 0], [0, 0, -1]],
    [[0, 0, -1], [0, 1, 0], [-1, 0, 0]],
    [[1, 0, 0], [0, 0, -1], [0, -1, 0]],
], dtype=torch.float32)


def check_points(points: torch.Tensor) -> None:
    """ValueError unless ``points`` is a non-empty, finite (B, P, 3) tensor."""
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"point cloud must be (B, P, 3), got shape {tuple(points.shape)}")
    if points.shape[1] == 0:
        raise ValueError("point cloud is empty (P = 0); give at least one point per sample")
    if not torch.isfinite(points).all():
        raise ValueError("point cloud has NaN or infinite coordinates; clean the points first")


class PointCloudProjector(nn.Module):
    """(B, P, 3) points (coordinates roughly in [-1, 1]) -> (B, out_chans, img_size, img_size) (eq. 4).

    ``views`` (1–6) projections of ``img_size``² (paper: 3 views, 224²), ``point_dim`` features per point,
    ``hidden`` channels in the conv layers, ``tau`` the softness of the z-buffer (in coordinate units).
    """

    def __init__(self, img_size: int = 224, views: int = 3, point_dim: int = 8, hidden: int = 16,
                 out_chans: int = 3, tau: float = 0.05, kernel_size: int = 7) -> None:
        super().__init__()
        if not 1 <= views <= len(VIEW_ROTATIONS):
            raise ValueError(f"views must be in 1..{len(VIEW_ROTATIONS)}, got {views}")
        if img_size < 2 or tau <= 0:
            raise ValueError(f"img_size must be >= 2 and tau > 0, got {img_size} and {tau}")
        self.img_size, self.views, self.point_dim, self.tau = img_size, views, point_dim, tau
        self.register_buffer("rotations", VIEW_ROTATIONS[:views].clone(), persistent=False)
        self.encoder = nn.Sequential(nn.Linear(3, point_dim), nn.GELU(), nn.Linear(point_dim, point_dim))
        in_ch = views * (point_dim + 2)
        self.convs = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1), nn.BatchNorm2d(hidden), nn.GELU(),
            DepthwiseConv2d(hidden, kernel_size), nn.BatchNorm2d(hidden), nn.GELU(),
            nn.Conv2d(hidden, out_chans, 1),
        )

    def project(self, points: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The raw projections: points (B, P, 3), feats (B, P, C) -> (B, V·(C+2), S, S).

        Per view: C channels of depth-weighted mean features, then depth (weighted mean nearness) and
        occupancy (1 - exp(-total splat weight)).
        """
        check_points(points)
        B, P, _ = points.shape
        C, S, V = feats.shape[-1], self.img_size, self.views
        dtype = feats.dtype
        q = torch.einsum("bpk,vjk->vbpj", points.to(dtype), self.rotations.to(dtype))  # (V, B, P, 3)
        pix = ((q[..., :2].clamp(-1, 1) + 1) * 0.5 * (S - 1))  # (V, B, P, 2): x (u) and y (v) in pixels
        base = pix.detach().floor().clamp(0, S - 2)
        frac = pix - base  # differentiable in the coordinates
        near = q[..., 2]  # (V, B, P)
        corners = []
        for dy in (0, 1):
            for dx in (0, 1):
                wx = frac[..., 0] if dx else 1 - frac[..., 0]
                wy = frac[..., 1] if dy else 1 - frac[..., 1]
                idx = (base[..., 1].long() + dy) * S + (base[..., 0].long() + dx)
                corners.append((idx, wx * wy))
        idx = torch.stack([c[0] for c in corners], -1)  # (V, B, P, 4)
        bil = torch.stack([c[1] for c in corners], -1)
        offset = (torch.arange(V * B, device=points.device) * S * S).view(V, B, 1, 1)
        flat = (idx + offset).reshape(-1)  # one grid of S*S cells per (view, sample)
        near4 = near.unsqueeze(-1).expand_as(bil).reshape(-1)
        nearest = torch.full((V * B * S * S,), float("-inf"), dtype=dtype, device=points.device)
        nearest = nearest.scatter_reduce(0, flat, near4.detach(), reduce="amax", include_self=True)
        w = bil.reshape(-1) * torch.exp((near4 - nearest[flat]) / self.tau)  # nearest point: weight 1
        f4 = feats.unsqueeze(0).unsqueeze(3).expand(V, B, P, 4, C).reshape(-1, C)
        src = torch.cat([f4 * w[:, None], (near4 * w)[:, None], w[:, None]], dim=1)  # (V·B·P·4, C+2)
        acc = torch.zeros(V * B * S * S, C + 2, dtype=dtype, device=points.device)
        # scatter_add, not index_add: the ONNX exporter writes index_add as a scatter without its "add"
        acc = acc.scatter_add(0, flat[:, None].expand_as(src), src)
        den = acc[:, -1:]
        mean = acc[:, :-1] / (den + 1e-6)
        maps = torch.cat([mean, 1 - torch.exp(-den)], dim=1)  # (V·B·S·S, C+2)
        return maps.view(V, B, S, S, C + 2).permute(1, 0, 4, 2, 3).reshape(B, V * (C + 2), S, S)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        check_points(points)
        feats = self.encoder(points)
        return self.convs(self.project(points, feats))

    def extra_repr(self) -> str:
        return f"img_size={self.img_size}, views={self.views}, point_dim={self.point_dim}, tau={self.tau}"
