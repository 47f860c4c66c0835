"""The run report: loss/accuracy curves and a confusion matrix as PNG (matplotlib, Agg), plus report.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (missing file: none)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # blank or torn line
            continue
    return rows


def confusion_matrix(preds: list[int], targets: list[int], num_classes: int) -> np.ndarray:
    """``cm[t, p]`` = number of samples of class t predicted as p."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(targets, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm


def plot_curves(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """``loss.png`` (train and val loss) and ``accuracy.png`` (val top-1, and EMA's) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    paths = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train loss")
    if rows and "val_loss" in rows[0]:
        ax.plot(epochs, [r.get("val_loss") for r in rows], marker="o", label="val loss")
    ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths["loss"] = out_dir / "loss.png"
    fig.savefig(paths["loss"], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["val_acc1"] for r in rows], marker="o", label="val top-1")
    if rows and "val_acc1_ema" in rows[0]:
        ax.plot(epochs, [r.get("val_acc1_ema") for r in rows], marker="o", label="val top-1 (EMA)")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Held-out accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths["accuracy"] = out_dir / "accuracy.png"
    fig.savefig(paths["accuracy"], dpi=100)
    plt.close(fig)
    return paths


def plot_confusion(cm: np.ndarray, class_names: list[str], path: Path) -> Path:
    """Confusion matrix heat map (counts written in the cells when there are at most 20 classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    size = min(12, max(4, 0.5 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(run_dir: Path, rows: list[dict[str, Any]], cm: np.ndarray, class_names: list[str],
                 summary: dict[str, Any]) -> dict[str, Path]:
    """Write ``report/{loss,accuracy,confusion_matrix}.png`` and ``report/report.md``; returns the paths."""
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    paths = plot_curves(rows, out) if rows else {}
    paths["confusion_matrix"] = plot_confusion(cm, class_names, out / "confusion_matrix.png")
    lines = ["# Training report", "", "| metric | value |", "|---|---|"]
    for key in ("model", "val_acc1", "val_acc5", "val_loss", "epochs", "steps", "deploy_same_labels",
                "deploy_max_abs_diff", "onnx_max_abs_diff", "corrupt_images", "wall_time_s"):
        if key in summary:
            value = summary[key]
            lines.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
    lines += [""] + [f"![{name}]({p.name})" for name, p in paths.items()] + [""]
    per_class = cm.diagonal() / np.maximum(cm.sum(1), 1)
    worst = np.argsort(per_class)[:5]
    lines += ["Lowest per-class accuracy: " + ", ".join(f"{class_names[i]} {100 * per_class[i]:.1f}%"
                                                         for i in worst), ""]
    paths["report"] = out / "report.md"
    paths["report"].write_text("\n".join(lines))
    return paths
