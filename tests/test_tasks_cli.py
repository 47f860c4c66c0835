"""Tasks end to end: `unireplknet train --task audio|forecast` on tiny budgets writes summary.json with the
required keys and a checkpoint that rebuilds from its meta; the registry; bad inputs -> one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unireplknet.cli.main import main
from unireplknet.errors import UserError
from unireplknet.models.checkpoint import build_model_from_checkpoint
from unireplknet.tasks import available_tasks, get_task

pd = pytest.importorskip("pandas", reason="forecast extra not installed")
sf = pytest.importorskip("soundfile", reason="audio extra not installed")

TINY_ARCH = '{"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "kernel_sizes": 5}'
COMMON = ["--set", f"arch={TINY_ARCH}", "--no-progress", "--set", "threads=1", "--overwrite"]
AUDIO_ARGS = ('task_args={"synth_per_voice": 2, "synth_words": 2, "synth_variants": ["m1", "f2", "m3", "m8"], '
              '"n_mels": 32, "norm_clips": 16}')


def _user_error(capsys: pytest.CaptureFixture, argv: list[str], expect: str) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert expect in err, err


def test_registry() -> None:
    assert {"classification", "audio", "forecast"} <= set(available_tasks())
    assert get_task(None).name == "classification" and get_task("forecast").mode == "min"
    assert get_task("audio").primary_metric == "acc1" and get_task("audio").mode == "max"
    with pytest.raises(UserError, match="unknown task"):
        get_task("smell")


def test_train_audio_tiny_writes_summary_and_rebuildable_checkpoint(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("espeakng_loader", reason="audio extra not installed")
    monkeypatch.setenv("UNIREPLKNET_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "audio"
    assert main(["train", "--task", "audio", "--output", str(out), *COMMON, "--set", AUDIO_ARGS,
                 "--batch-size", "4", "--epochs", "2", "--limit-train-batches", "2", "--mixup", "0.2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "audio" and summary["status"] == "completed" and summary["steps"] == 4
    assert 0.0 <= summary["test_acc1"] <= 100.0 and summary["test_samples"] == 4  # held-out voice m8
    assert summary["deploy_same_labels"] is True
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["meta"]["task"] == "audio" and ckpt["meta"]["embedder"]["name"] == "audio_fbank"
    model, meta = build_model_from_checkpoint(out / "deploy.pt")
    assert meta["deploy"] is True and meta["class_names"] == ["yes", "no"]
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 16000)).shape == (2, 2)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all("val_acc1" in r for r in rows)
    # eval (test split of the same embedded data) and predict (audio files) rebuild the model from its meta
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--data", "spoken_words", "--output",
                 str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["task"] == "audio" and report["test_samples"] == 4
    assert report["test_acc1"] == pytest.approx(summary["test_acc1"])
    clip = tmp_path / "clip.wav"
    sf.write(str(clip), np.zeros(12000, np.float32), 16000)
    assert main(["predict", str(clip), "--checkpoint", str(out / "deploy.pt"), "--topk", "1", "--output",
                 str(out)]) == 0
    pred = json.loads((out / "predictions.json").read_text())
    assert pred[0]["file"] == str(clip) and pred[0]["predictions"][0]["label"] in ("yes", "no")


def _station_csvs(root: Path, n: int = 400) -> None:
    root.mkdir(parents=True, exist_ok=True)
    t = np.arange(n)
    rng = np.random.default_rng(0)
    for k, name in enumerate(("north", "south")):
        df = pd.DataFrame({"timestamp": pd.date_range("2020-01-01", periods=n, freq="h"),
                           "temp": 10 + 5 * np.sin(2 * np.pi * t / 24 + k) + rng.normal(0, 0.3, n),
                           "wind": 3 + np.cos(2 * np.pi * t / 24) + rng.normal(0, 0.3, n)})
        df.to_csv(root / f"{name}.csv", index=False)


def test_train_forecast_tiny_on_csv_stations(tmp_path: Path) -> None:
    data = tmp_path / "stations"
    _station_csvs(data)
    out = tmp_path / "fc"
    assert main(["train", "--task", "forecast", "--data", str(data), "--output", str(out), *COMMON,
                 "--set", 'task_args={"variables": ["temp", "wind"], "seq_len": 32, "pred_len": 8, "d_model": 16}',
                 "--batch-size", "16", "--epochs", "1", "--limit-train-batches", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "forecast" and summary["pred_len"] == 8
    for var in ("temp", "wind"):
        for method in ("ours", "persistence", "seasonal_naive", "linear"):
            m = summary["test"][var][method]
            assert m["mse"] >= 0 and m["mae"] >= 0 and m["mae"] ** 2 <= m["mse"] + 1e-9
        assert isinstance(summary["beats_best_baseline"][var], bool)
    # seasonal naive on a 24-periodic series with little noise beats persistence clearly
    assert summary["test"]["temp"]["seasonal_naive"]["mse"] < summary["test"]["temp"]["persistence"]["mse"]
    assert summary["deploy_max_abs_diff"] < 1e-3
    model, meta = build_model_from_checkpoint(out / "best.pt")
    assert meta["columns"] == ["north/temp", "north/wind", "south/temp", "south/wind"]
    with torch.no_grad():
        assert model.eval()(torch.zeros(3, 32, 4 + 4)).shape == (3, 8, 4)
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--data", str(data), "--output", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["test"]["temp"]["ours"]["mse"] == pytest.approx(summary["test"]["temp"]["ours"]["mse"],
                                                                   rel=1e-5)
    assert main(["predict", str(data), "--checkpoint", str(out / "deploy.pt"), "--output", str(out)]) == 0
    pred = json.loads((out / "predictions.json").read_text())
    assert np.array(pred["forecast"]).shape == (8, 4) and pred["timestamps"][0] == "2020-01-17 16:00:00"


def test_train_forecast_embedded_weather_tiny(tmp_path: Path) -> None:
    pytest.importorskip("pvlib", reason="forecast extra not installed")
    out = tmp_path / "w"
    assert main(["train", "--task", "forecast", "--output", str(out), *COMMON, "--set",
                 'task_args={"d_model": 16}', "--batch-size", "32", "--epochs", "1", "--limit-train-batches", "2",
                 "--limit-val-batches", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seq_len"] == 48 and summary["pred_len"] == 24 and len(summary["stations"]) == 3
    assert set(summary["test"]) == {"temp_air", "wind_speed", "relative_humidity", "temp_dew"}


def test_bad_inputs_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "noaudio"
    for label in ("a", "b"):
        (empty / label).mkdir(parents=True)
        (empty / label / "x.txt").write_text("text")
    _user_error(capsys, ["train", "--task", "audio", "--data", str(empty), "--output", str(tmp_path / "r1")],
                "no audio files")
    rate = tmp_path / "rate"
    for label in ("a", "b"):
        for i in range(12):
            (rate / label).mkdir(parents=True, exist_ok=True)
            sf.write(str(rate / label / f"{label}{i}.wav"), np.zeros(800, np.float32), 8000)
    _user_error(capsys, ["train", "--task", "audio", "--data", str(rate), "--output", str(tmp_path / "r2")],
                "8000 Hz, the task expects 16000 Hz")
    stations = tmp_path / "st"
    _station_csvs(stations, 100)
    _user_error(capsys, ["train", "--task", "forecast", "--data", str(stations), "--output", str(tmp_path / "r3"),
                         "--set", 'task_args={"variables": ["temp", "pressure"]}'], "no column(s) pressure")
    df = pd.read_csv(stations / "north.csv")
    df.loc[5, "wind"] = np.nan
    df.to_csv(stations / "north.csv", index=False)
    _user_error(capsys, ["train", "--task", "forecast", "--data", str(stations), "--output", str(tmp_path / "r4"),
                         "--set", 'task_args={"variables": ["temp", "wind"]}'], "missing or non-numeric")
    _user_error(capsys, ["train", "--task", "smell", "--output", str(tmp_path / "r5")], "unknown task")
    _user_error(capsys, ["train", "--task", "forecast", "--config", "digits", "--output", str(tmp_path / "r6")],
                "is a classification recipe")
    _user_error(capsys, ["train", "--task", "forecast", "--output", str(tmp_path / "r7"), "--set",
                         'task_args={"seq_length": 3}'], "unknown task_args")
