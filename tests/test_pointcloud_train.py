"""`unireplknet train --task pointcloud` end to end on tiny settings (in-process CLI), real-format HDF5 data,
bad inputs (exit code 2, one line), checkpoint rebuild; the 15-minute acceptance run is `slow`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from unireplknet.cli.main import main

TINY = ["--set", 'arch={"depths":[1,1,1,1],"dims":[8,16,32,64],"kernel_sizes":[[3],[5],[5],[3]]}',
        "--img-size", "32", "--batch-size", "8", "--epochs", "1", "--no-progress"]


def test_train_shapes_tiny(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--task", "pointcloud", "--output", str(out),
               "--set", 'task_args={"num_points":64,"per_class":3,"val_per_class":2}', *TINY])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["task"] == "pointcloud" and s["test_samples"] == 16 and s["test_split"] == "test"
    assert 0 <= s["test_acc1"] <= 100 and 0 <= s["test_macc"] <= 100
    assert s["deploy_same_labels"] is True
    from unireplknet.models.checkpoint import build_model_from_checkpoint
    from unireplknet.models.multimodal import EmbedderModel

    model, meta = build_model_from_checkpoint(torch.load(out / "deploy.pt", weights_only=True))
    assert isinstance(model, EmbedderModel) and meta["embedder"]["name"] == "pointcloud_projector"
    assert model.eval()(torch.rand(2, 64, 3) * 2 - 1).shape == (2, 8)


def _h5(path: Path, data: np.ndarray, label: np.ndarray) -> None:
    h5py = pytest.importorskip("h5py", reason="h5py is in the 'pointcloud' extra")
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data.astype(np.float32))
        f.create_dataset("label", data=label.reshape(-1, 1).astype(np.uint8))


def test_train_modelnet_h5_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "modelnet"
    data.mkdir()
    _h5(data / "ply_data_train0.h5", rng.normal(size=(16, 40, 3)), np.arange(16) % 2)
    _h5(data / "ply_data_test0.h5", rng.normal(size=(6, 40, 3)), np.arange(6) % 2)
    (data / "shape_names.txt").write_text("chair\ntable\n")
    rc = main(["train", "--task", "pointcloud", "--data", str(data), "--output", str(tmp_path / "run"),
               "--set", 'task_args={"num_points":32}', *TINY])
    assert rc == 0
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["test_samples"] == 6 and s["test_split"] == "test"
    bad = tmp_path / "bad"
    bad.mkdir()
    pts = rng.normal(size=(4, 40, 3))
    pts[2, 5] = np.nan
    _h5(bad / "ply_data_train0.h5", pts, np.zeros(4))
    capsys.readouterr()
    rc = main(["train", "--task", "pointcloud", "--data", str(bad), "--output", str(tmp_path / "r2"), *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "NaN" in err[0] and "sample 2" in err[0]
    rc = main(["train", "--task", "pointcloud", "--data", str(tmp_path / "nowhere"), "--output",
               str(tmp_path / "r3"), *TINY])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_pointcloud_default_reaches_90_percent_within_15_minutes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    t0 = time.time()
    cmd = [sys.executable, "-m", "unireplknet", "train", "--task", "pointcloud", "--output", str(out),
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    wall = time.time() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["test_acc1"] >= 90.0, s
    assert wall < 900, f"took {wall:.0f} s"
