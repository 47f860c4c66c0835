"""Effective receptive field (ERF) as in the paper's Fig. 2 (protocol of Ding et al., RepLKNet, CVPR 2022).

For each input image x (1, C, H, W) the model's last-stage feature map F = forward_features(x) (1, D, h, w) is
taken *before* pooling; the scalar s = sum_d F[0, d, h // 2, w // 2] (the central pixel) is back-propagated
to the input, and the contribution map is |ds/dx| summed over the input channels (H, W). The maps are
averaged over images and log-scaled, E = log10(contribution + 1). A large-kernel model spreads E over a
wider area. The *area ratio* for a threshold t is the area of the smallest centered square whose sum of E
covers at least t of the total, divided by H * W (small ratio = concentrated ERF).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

THRESHOLDS: tuple[float, ...] = (0.2, 0.3, 0.5, 0.99)


def _default_features(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if hasattr(model, "forward_features"):
        return model.forward_features
    raise TypeError(f"{type(model).__name__} has no forward_features(); pass feature_fn")


def random_images(num: int, size: int | tuple[int, int], in_chans: int = 3, seed: int = 0
                  ) -> Iterable[torch.Tensor]:
    """``num`` standard-normal images (1, in_chans, H, W), i.e. white noise in normalized-input space."""
    h, w = (size, size) if isinstance(size, int) else size
    gen = torch.Generator().manual_seed(seed)
    for _ in range(num):
        yield torch.randn(1, in_chans, h, w, generator=gen)


def compute_erf(model: nn.Module, images: Iterable[torch.Tensor], device: str | torch.device = "cpu",
                feature_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Mean over ``images`` of |d(central pixel of the last stage's map) / d input|, summed over channels.

    ``images``: tensors (1, C, H, W) or (C, H, W), already normalized, all of one size. ``feature_fn``
    maps a batch to the final feature map (N, D, h, w); default ``model.forward_features``. The model must
    already be on ``device``; it is used in eval mode (BatchNorm statistics frozen) and its parameters get
    no gradient. Returns the *raw* contribution map (H, W) as float64; apply :func:`log_scale` before
    plotting or measuring.
    """
    fn = feature_fn or _default_features(model)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    total: torch.Tensor | None = None
    count = 0
    try:
        for img in images:
            x = img if img.dim() == 4 else img.unsqueeze(0)
            if total is not None and x.shape[-2:] != total.shape:
                raise ValueError(f"images differ in size: {tuple(x.shape[-2:])} vs {tuple(total.shape)}")
            x = x.to(device=device, dtype=torch.float32).detach().requires_grad_(True)
            feats = fn(x)
            if feats.dim() != 4:
                raise ValueError(f"feature map must be (N, D, h, w), got shape {tuple(feats.shape)}")
            h, w = feats.shape[-2:]
            central = feats[:, :, h // 2, w // 2].sum()
            (grad,) = torch.autograd.grad(central, x)
            contrib = grad.abs().sum(dim=1).sum(dim=0).double().cpu()  # (H, W)
            total = contrib if total is None else total + contrib
            count += x.shape[0]
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        model.train(was_training)
    if total is None:
        raise ValueError("no images given for the ERF")
    log.info("ERF aggregated over %d image(s) of size %s", count, tuple(total.shape))
    return (total / count).numpy()


def log_scale(contribution: np.ndarray) -> np.ndarray:
    """The paper's scaling: log10(contribution + 1) (H, W)."""
    return np.log10(np.asarray(contribution, dtype=np.float64) + 1.0)


def area_ratios(erf: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> dict[float, float]:
    """For each t: area of the smallest centered square covering >= t of ``erf``'s sum, over H * W.

    ``erf`` (H, W) is non-negative (normally the log-scaled map). Squares grow by one pixel on each side
    from the center pixel (H // 2, W // 2) and are clipped at the border.
    """
    erf = np.asarray(erf, dtype=np.float64)
    if erf.ndim != 2:
        raise ValueError(f"ERF must be a 2-D map, got shape {erf.shape}")
    if np.any(erf < 0):
        raise ValueError("ERF map must be non-negative")
    total = erf.sum()
    if not total > 0:
        raise ValueError("the ERF is zero everywhere (no gradient reaches the input)")
    H, W = erf.shape
    cy, cx = H // 2, W // 2
    # fraction covered by the square of half-width r, for r = 0 .. max needed to cover the whole map
    r_max = max(cy, H - 1 - cy, cx, W - 1 - cx)
    integral = np.pad(erf.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    fractions, areas = [], []
    for r in range(r_max + 1):
        y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, H), max(cx - r, 0), min(cx + r + 1, W)
        s = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        fractions.append(s / total)
        areas.append((y1 - y0) * (x1 - x0) / (H * W))
    fractions_arr = np.asarray(fractions)
    out: dict[float, float] = {}
    for t in thresholds:
        if not 0 < t <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {t}")
        idx = int(np.searchsorted(fractions_arr, t - 1e-12, side="left"))
        out[float(t)] = float(areas[min(idx, len(areas) - 1)])
    return out


def plot_erfs(erfs: Mapping[str, np.ndarray], path: str | os.PathLike,
              ratios: Mapping[str, Mapping[float, float]] | None = None, dpi: int = 120) -> Path:
    """Save the log-scaled ERF maps side by side as a PNG (atomic write).

    ``erfs``: title -> log-scaled map (H, W). Each panel is scaled to its 99.5th percentile (display only:
    a few outlier pixels would otherwise wash out the map). Dark = large contribution, so a wider dark
    area is a larger ERF (as in Fig. 2).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from unireplknet.utils.atomic import atomic_file

    n = len(erfs)
    if n == 0:
        raise ValueError("nothing to plot")
    fig = Figure(figsize=(4.2 * n, 4.6))
    FigureCanvasAgg(fig)
    for i, (title, erf) in enumerate(erfs.items()):
        ax = fig.add_subplot(1, n, i + 1)
        top = float(np.percentile(erf, 99.5)) or float(erf.max()) or 1.0
        im = ax.imshow(np.clip(erf / top, 0.0, 1.0), cmap="magma_r", vmin=0.0, vmax=1.0,
                       interpolation="nearest")
        label = title
        if ratios and title in ratios:
            label += "\n" + ", ".join(f"{int(round(t * 100))}%: {r:.3f}" for t, r in ratios[title].items())
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle("Effective receptive field: log10(|grad| + 1), normalized (dark = large); area ratios",
                 fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=dpi)
    log.info("saved ERF plot to %s", path)
    return path
