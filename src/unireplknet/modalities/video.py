"""Video embedder (paper §3.3, eq. 5): NF frames laid out as one image, and temporal sampling.

(B, NF, 3, h, w) -> (B, 3, R·h, G·w) with R·G = NF, frames in row-major order (frame t at grid row t // G,
column t % G). NF = 16 frames of 224² give 896² (R = G = 4), as in the paper.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["FrameTiler", "grid_shape", "tile_frames", "untile_frames"]


def grid_shape(num_frames: int) -> tuple[int, int]:
    """(rows, cols) of the most nearly square grid with rows·cols = num_frames (rows <= cols)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    rows = max(r for r in range(1, math.isqrt(num_frames) + 1) if num_frames % r == 0)
    return rows, num_frames // rows


def tile_frames(frames: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """(B, NF, C, h, w) -> (B, C, rows·h, cols·w); ``grid`` defaults to :func:`grid_shape` (NF)."""
    if frames.dim() != 5:
        raise ValueError(f"video must be (B, NF, C, h, w), got shape {tuple(frames.shape)}")
    B, NF, C, h, w = frames.shape
    rows, cols = grid or grid_shape(NF)
    if rows * cols != NF:
        raise ValueError(f"grid {rows}x{cols} does not hold {NF} frames; use rows·cols = NF")
    return frames.reshape(B, rows, cols, C, h, w).permute(0, 3, 1, 4, 2, 5).reshape(B, C, rows * h, cols * w)


def untile_frames(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`tile_frames`: (B, C, rows·h, cols·w) -> (B, rows·cols, C, h, w)."""
    B, C, H, W = image.shape
    rows, cols = grid
    if H % rows or W % cols:
        raise ValueError(f"a {H}x{W} image does not split into a {rows}x{cols} grid")
    h, w = H // rows, W // cols
    return image.reshape(B, C, rows, h, cols, w).permute(0, 2, 4, 1, 3, 5).reshape(B, rows * cols, C, h, w)


class FrameTiler(nn.Module):
    """Eq. 5 as a module: (B, NF, C, h, w) -> (B, C, rows·h, cols·w). No parameters."""

    def __init__(self, num_frames: int = 16, grid: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.grid = tuple(grid) if grid is not None else grid_shape(num_frames)
        if self.grid[0] * self.grid[1] != num_frames:
            raise ValueError(f"grid {self.grid} does not hold {num_frames} frames")

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 5 or frames.shape[1] != self.num_frames:
            raise ValueError(f"FrameTiler: expected (B, {self.num_frames}, C, h, w), got {tuple(frames.shape)}")
        return tile_frames(frames, self.grid)

    def extra_repr(self) -> str:
        return f"num_frames={self.num_frames}, grid={self.grid}"
