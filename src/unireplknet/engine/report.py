"""The run report: learning curves as PNG (matplotlib, Agg), figures a task adds, and ``report/report.md``
with the summary's numbers. Every file is written atomically."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from unireplknet.utils.atomic import atomic_file, atomic_write_text


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=100)
    return path


def plot_curves(rows: list[dict[str, Any]], out_dir: Path, curves: Mapping[str, str]) -> dict[str, Path]:
    """``loss.png`` (train and val loss per epoch) and one ``<name>.png`` per ``curves`` entry (name -> metric key,
    e.g. ``accuracy -> acc1``), with the EMA model's curve when there is one; a curve with no recorded metric
    is left out."""
    epochs = [r["epoch"] for r in rows]
    series = {"loss": [("train_loss", "train loss"), ("val_loss", "val loss")]}
    series |= {name: [(f"val_{key}", f"val {key}"), (f"val_{key}_ema", f"val {key} (EMA)")]
               for name, key in curves.items()}
    paths = {}
    for name, lines in series.items():
        present = [(key, label) for key, label in lines if rows and key in rows[-1]]
        if not present:  # e.g. a zero-shot curve on data without classes: no empty figure
            continue
        fig = _figure((6, 4))
        ax = fig.add_subplot()
        for key, label in present:
            ax.plot(epochs, [r.get(key) for r in rows], marker="o", label=label)
        ax.set(xlabel="epoch", ylabel=name, title=name.capitalize())
        ax.grid(alpha=0.3)
        ax.legend()
        paths[name] = save_figure(fig, out_dir / f"{name}.png")
    return paths


def plot_confusion(cm: np.ndarray, class_names: list[str], path: Path) -> Path:
    """Confusion matrix heat map ``cm[true, predicted]`` (counts in the cells when there are at most 20 classes)."""
    n = len(class_names)
    size = min(12, max(4, 0.5 * n + 2))
    fig = _figure((size, size))
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if n <= 40:
        ax.set_xticks(range(n), class_names, rotation=90 if n > 10 else 0)
        ax.set_yticks(range(n), class_names)
    if n <= 20:
        hi = cm.max() / 2 if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > hi else "black")
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (held-out)")
    return save_figure(fig, path)


def write_report(out_dir: Path, summary: Mapping[str, Any], figures: Mapping[str, Path],
                 notes: list[str] | None = None) -> Path:
    """``report.md``: the summary's numbers as a table, the figures, and the task's notes."""
    lines = ["# Training report", "", "| metric | value |", "|---|---|"]
    for key, value in summary.items():
        if isinstance(value, (int, float, str)) and key not in ("status", "paths"):
            lines.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
    lines += [""] + [path.read_text() if path.suffix == ".md" else f"![{name}]({path.name})"  # tables inline
                     for name, path in figures.items()] + [""] + (notes or [])
    return atomic_write_text("\n".join(lines) + "\n", out_dir / "report.md")
