"""The one place a run's metrics go: ``metrics.jsonl`` (a row per epoch), the log, and optionally TensorBoard
event files (``tensorboard=True``; the ``tensorboard`` extra), the convention users of timm and Lightning expect."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from unireplknet.errors import UserError
from unireplknet.utils.atomic import atomic_write_text, write_error

log = logging.getLogger(__name__)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (missing file: none; a torn last row is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class MetricsRecorder:
    """Rank 0's record of a run: ``record(row)`` appends to metrics.jsonl, logs one line, feeds TensorBoard."""

    def __init__(self, run_dir: Path, epochs: int, primary: str, tensorboard: bool = False) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.epochs, self.primary = epochs, primary
        self.writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("tensorboard=True needs the tensorboard package: pip install "
                                "'unireplknet[tensorboard]'") from None
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def trim(self, epochs_done: int) -> None:
        """Drop rows of epochs a resumed checkpoint does not include (written after it, before a kill)."""
        rows = read_metrics(self.path)
        kept = [r for r in rows if r.get("epoch", 0) <= epochs_done]
        if self.path.is_file() and (len(kept) != len(rows) or not self.path.read_text().endswith("\n")):
            atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), self.path)

    def record(self, row: dict[str, Any]) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as err:
            raise write_error(self.path, err) from None
        metrics = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k.startswith("val_") and isinstance(v, float)
                            and not k.endswith(("_samples", "_corrupt")))
        log.info("epoch %d/%d: train_loss %.4f  %s  lr %.2e  data %.1fs / compute %.1fs (%.0f samples/s)%s",
                 row["epoch"], self.epochs, row["train_loss"], metrics, row["lr"], row["data_time"],
                 row["compute_time"], row["train_images_per_s"],
                 f"  (resumed at step {row['resumed_at_step']})" if "resumed_at_step" in row else "")
        total = row["data_time"] + row["compute_time"]
        if total > 1.0 and row["data_time"] > 0.25 * total:
            log.warning("the data loader took %.0f%% of the epoch: the model is waiting for data; raise --workers "
                        "or make the transforms cheaper", 100 * row["data_time"] / total)
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
