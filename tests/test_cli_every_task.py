"""Every task's checkpoint through every command that makes sense for it (reparam, export, bench, erf, eval,
predict); where one does not, one line says so. Crafted checkpoints give one line, not a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_run import run_cli
from unireplknet.cli.main import main

pytest.importorskip("pandas", reason="forecast extra not installed")
sf = pytest.importorskip("soundfile", reason="audio extra not installed")

ARCH = '{"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "kernel_sizes": 5}'
COMMON = ["--set", f"arch={ARCH}", "--no-progress", "--set", "threads=1", "--max-steps", "1", "--no-export",
          "--epochs", "1"]
RUNS = {
    "audio": ["--task", "audio", "--batch-size", "4", "--set", 'task_args={"synth_per_voice": 2, "synth_words": 2, '
              '"synth_variants": ["m1", "f2", "m3", "m8"], "n_mels": 32, "norm_clips": 16}'],
    "forecast": ["--task", "forecast", "--batch-size", "16", "--set", 'task_args={"d_model": 8, "seq_len": 24, '
                 '"pred_len": 6}'],
    "pointcloud": ["--task", "pointcloud", "--img-size", "32", "--batch-size", "8", "--set",
                   'task_args={"num_points": 64, "per_class": 2, "val_per_class": 1}'],
    "video": ["--task", "video", "--batch-size", "8", "--set",
              'task_args={"num_frames": 4, "frame_size": 16, "total_frames": 4, "per_class": 2, "val_per_class": 1}'],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tasks")
    out = {}
    for task, args in RUNS.items():
        if task == "forecast":
            pytest.importorskip("pvlib", reason="forecast extra not installed")
        assert main(["train", "--output", str(root / task), *COMMON, *args]) == 0, task
        out[task] = root / task
    return out




def _one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("task", list(RUNS))
def test_reparam_bench_erf_eval(runs, task, capsys, tmp_path):
    best = runs[task] / "best.pt"
    code, out, err = run_cli(capsys, ["reparam", "--checkpoint", str(best), "--output", str(tmp_path / "d.pt")])
    assert code == 0, err
    report = json.loads(out)
    assert report["max_abs_diff"] < 1e-4 * max(1.0, report["max_abs_output"])
    code, out, err = run_cli(capsys, ["bench", "--checkpoint", str(best), "--batch-size", "2", "--iters", "1",
                                   "--warmup", "0"])
    assert code == 0, err
    bench = json.loads(out)
    assert bench["training"]["images_per_s"] > 0 and bench["deploy"]["images_per_s"] > 0 and bench["img_size"] is None
    code, out, err = run_cli(capsys, ["erf", "--checkpoint", str(best), "--num-images", "1",
                                   "--output", str(tmp_path / "erf")])
    if code == 2:  # a 1-step forecaster's last map is 1x1 right after a LayerNorm: the channel sum has no gradient
        _one_line(code, err, "zero everywhere")
    else:
        assert code == 0, err
        assert (tmp_path / "erf" / "erf.png").is_file() and json.loads(out)["area_ratio"]
    code, out, err = run_cli(capsys, ["eval", "--checkpoint", str(tmp_path / "d.pt")])  # no --data: its own data
    assert code == 0, err
    report = json.loads(out)
    summary = json.loads((runs[task] / "summary.json").read_text())
    key = "test_mse" if task == "forecast" else "test_acc1"
    assert report["task"] == task and report[key] == pytest.approx(summary[key], rel=1e-4, abs=1e-4)
    _one_line(*run_cli(capsys, ["eval", "--checkpoint", str(best), "--img-size", "64"])[::2], "--img-size")


@pytest.mark.parametrize("task", list(RUNS))
def test_export_every_modality(runs, task, capsys, tmp_path):
    """Waveforms (the fbank's DFT as a matrix product), windows, point clouds (the scatter) and clips export."""
    code, out, err = run_cli(capsys, ["export", "--checkpoint", str(runs[task] / "best.pt"),
                                   "--output", str(tmp_path / "m.onnx")])
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] is True and report["max_abs_diff"] < 1e-3 and not report["has_batchnorm"]


def test_predict_each_modality(runs, capsys, tmp_path):
    wav = tmp_path / "clip.wav"
    sf.write(str(wav), np.zeros(8000, np.float32), 16000)
    points = tmp_path / "cloud.npy"
    np.save(points, np.random.default_rng(0).normal(size=(100, 3)))
    frames = tmp_path / "clip_frames"
    frames.mkdir()
    from PIL import Image

    for t in range(5):
        Image.new("RGB", (20, 20), (40 * t, 0, 0)).save(frames / f"{t:03d}.png")
    for task, inputs in (("audio", [wav]), ("pointcloud", [points]), ("video", [frames])):
        code, out, err = run_cli(capsys, ["predict", *map(str, inputs), "--checkpoint", str(runs[task] / "deploy.pt"),
                                       "--topk", "1"])
        assert code == 0, (task, err)
        result = json.loads(out)
        assert len(result) == 1 and len(result[0]["predictions"]) == 1, task
    _one_line(*run_cli(capsys, ["predict", str(points), "--checkpoint", str(runs["pointcloud"] / "best.pt"),
                             "--img-size", "64"])[::2], "--img-size")


def test_crafted_meta_is_one_line(capsys, tmp_path):
    cases = {
        "bad_kwargs": {"model": None, "model_kwargs": {"depths": "x"}, "task": "classification"},
        "bad_embedder": {"model": None, "model_kwargs": {}, "embedder": {"name": "nope"}, "task": "audio"},
        "bad_task": {"model": None, "model_kwargs": {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64],
                                                     "kernel_sizes": 3, "num_classes": 2}, "task": "smell"},
    }
    for name, meta in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save({"model": {}, "meta": meta}, path)
        for argv in (["eval", "--checkpoint", str(path)], ["export", "--checkpoint", str(path)],
                     ["predict", "x.png", "--checkpoint", str(path)]):
            code, _, err = run_cli(capsys, argv)
            _one_line(code, err)
