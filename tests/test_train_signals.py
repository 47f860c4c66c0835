"""Reliability: a run killed with SIGKILL mid-training resumes from its last checkpoint and finishes;
SIGINT (Ctrl-C) saves a resumable checkpoint and exits with 130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

# the default digits model (about 50 ms a step here): long enough to be caught mid-run
ARGS = ["--no-progress", "--no-export", "--epochs", "3", "--limit-train-batches", "10",
        "--limit-val-batches", "1", "--set", "threads=1"]
STEPS = 3 * 10


def _start(out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "unireplknet", "train", "--output", str(out), *ARGS, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training ended before {path.name}: {proc.communicate()[1][-2000:]}"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def _resume(out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "unireplknet", "train", "--output", str(out), "--resume",
                           *ARGS[:2]], capture_output=True, text=True, env=env, timeout=300)


def test_sigkill_mid_training_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start(out, "--save-interval-steps", "3")
    _wait_for(out / "last.pt", proc)
    time.sleep(0.1)  # land somewhere in the middle of later steps/checkpoint writes
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed = torch.load(out / "last.pt", weights_only=True)  # atomic writes: never a torn file
    assert 0 < killed["step"] < STEPS
    assert not (out / "summary.json").exists()

    done = _resume(out)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 3 and summary["steps"] == STEPS
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert not list(out.glob(".*.tmp")), "temp files of a killed write are cleaned up on resume"


def test_sigint_saves_a_resumable_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start(out, "--save-interval-steps", "4")
    _wait_for(out / "last.pt", proc)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert "resumable checkpoint saved" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "--resume" in summary["resume"]
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == summary["step"] >= 4  # saved at the step where it stopped
    assert ckpt["step"] == 10 * ckpt["epoch"] + ckpt["epoch_samples"] // 64

    done = _resume(out)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == STEPS
