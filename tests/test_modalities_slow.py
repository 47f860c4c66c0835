"""Issue 5's acceptance runs (slow: `make test-slow`): `unireplknet train --task audio` with no dataset
reaches >= 90% test top-1 on held-out voices within 15 minutes on the 2-core CPU, and
`unireplknet train --task forecast` beats the best baseline's test MSE on temperature and wind speed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.slow
def test_audio_default_reaches_90_percent_on_held_out_voices_within_15_minutes(tmp_path: Path) -> None:
    pytest.importorskip("espeakng_loader", reason="audio extra not installed")
    out = tmp_path / "audio"
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "unireplknet", "train", "--task", "audio", "--output", str(out),
                           "--no-progress"], capture_output=True, text=True, timeout=1800)
    wall = time.time() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_acc1"] >= 90.0, summary
    assert wall < 900, f"took {wall:.0f} s"
    assert summary["deploy_same_labels"] is True


@pytest.mark.slow
def test_forecast_default_beats_the_baselines_on_temperature_and_wind(tmp_path: Path) -> None:
    pytest.importorskip("pvlib", reason="forecast extra not installed")
    out = tmp_path / "forecast"
    proc = subprocess.run([sys.executable, "-m", "unireplknet", "train", "--task", "forecast", "--output",
                           str(out), "--no-progress"], capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for var in ("temp_air", "wind_speed"):
        row = summary["test"][var]
        best = min(row[m]["mse"] for m in ("persistence", "seasonal_naive", "linear"))
        assert row["ours"]["mse"] < best, (var, row)
    assert "| temp_air |" in proc.stdout  # the printed table
