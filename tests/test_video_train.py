"""`unireplknet train --task video` end to end on tiny settings (in-process CLI), a PyAV-written video
folder, bad inputs (exit code 2, one line); the 15-minute acceptance run is `slow`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from unireplknet.cli.main import main

TINY = ["--set", 'arch={"depths":[1,1,1,1],"dims":[8,16,32,64],"kernel_sizes":[[3],[5],[5],[3]]}',
        "--batch-size", "8", "--epochs", "1", "--no-progress"]


def test_train_moving_digits_tiny(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--task", "video", "--output", str(out), "--set",
               'task_args={"num_frames":4,"frame_size":16,"total_frames":4,"per_class":3,"val_per_class":2}',
               *TINY])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["task"] == "video" and s["test_samples"] == 16 and 0 <= s["test_acc1"] <= 100
    assert s["deploy_same_labels"] is True


def test_train_video_folder_and_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    av = pytest.importorskip("av", reason="PyAV is in the 'video' extra")

    def write(path: Path, n: int) -> None:
        with av.open(str(path), "w") as out:
            st = out.add_stream("mpeg4", rate=8)
            st.width = st.height = 16
            st.pix_fmt = "yuv420p"
            for t in range(n):
                fr = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 20 * t, np.uint8), format="rgb24")
                for p in st.encode(fr):
                    out.mux(p)
            for p in st.encode():
                out.mux(p)

    root = tmp_path / "vids"
    for split, n in (("train", 4), ("val", 1)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                write(root / split / cls / f"{i}.mp4", 6)
    args = ["--set", 'task_args={"num_frames":4,"frame_size":8}', *TINY]
    assert main(["train", "--task", "video", "--data", str(root), "--output", str(tmp_path / "r1"), *args]) == 0
    assert json.loads((tmp_path / "r1" / "summary.json").read_text())["val_samples"] == 2
    capsys.readouterr()
    # fewer frames than NF
    rc = main(["train", "--task", "video", "--data", str(root), "--output", str(tmp_path / "r2"), "--set",
               'task_args={"num_frames":8,"frame_size":8}', *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "fewer than the 8" in err[0]
    # a file that does not decode
    (root / "train" / "a" / "0.mp4").write_bytes(b"garbage")
    rc = main(["train", "--task", "video", "--data", str(root), "--output", str(tmp_path / "r3"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot decode video" in err[0]


@pytest.mark.slow
def test_video_default_reaches_90_percent_within_15_minutes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    t0 = time.time()
    cmd = [sys.executable, "-m", "unireplknet", "train", "--task", "video", "--output", str(out),
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    wall = time.time() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["test_acc1"] >= 90.0, s
    assert wall < 900, f"took {wall:.0f} s"
