"""DDP on CPU: `torchrun --nproc_per_node 2 -m unireplknet train` (gloo) on the embedded digits, then a
resume of that run with a different world size (1 process) from the exact sample where it stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

TINY_ARCH = '{"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "kernel_sizes": [[3], [7], [7], [3]]}'
TINY = ["--set", f"arch={TINY_ARCH}", "--img-size", "16", "--batch-size", "16", "--no-progress",
        "--limit-val-batches", "2", "--limit-train-batches", "8", "--epochs", "2"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("WORLD_SIZE", None)
    return env


def test_torchrun_two_cpu_processes_then_resume_with_one(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "unireplknet", "train", "--output", str(out), *TINY, "--max-steps", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DDP: rank 0 of 2 (gloo, cpu)" in proc.stderr
    assert proc.stderr.count("Training finished") + proc.stdout.count("Training finished") == 1, "rank 0 only"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["world_size"] == 2
    assert summary["val_samples"] == 32  # final evaluation on rank 0 alone: 2 batches x 16
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["val_samples"] == 64  # 2 ranks x 2 batches x 16 (distributed eval)
    assert rows[0]["train_samples"] == 48  # rank 0's share: 3 steps x 16
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["epoch_samples"] == 3 * 16 * 2
    assert len(ckpt["rng"]) == 2  # one RNG state per rank
    for name in ("best.pt", "deploy.pt", "model.onnx", "report/confusion_matrix.png"):
        assert (out / name).is_file(), name

    # resume the 2-process run in 1 process: it continues 96 samples into epoch 1
    proc = subprocess.run([sys.executable, "-m", "unireplknet", "train", "--output", str(out), "--resume",
                           "--max-steps", "4", "--no-export", "--no-progress"],
                          capture_output=True, text=True, env=_env(), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "96 samples into the epoch" in proc.stderr
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["epoch_samples"] == 96 + 16
    assert ckpt["config"]["lr"] == json.loads((out / "config.json").read_text())["lr"]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 1
