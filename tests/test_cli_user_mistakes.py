"""What a careless user hits: each gives one line naming the problem, exit 2, no traceback, and nothing already
written is lost (run-folder lock, unwritable output and a full disk, settings out of range, crafted inputs)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unireplknet.cli.main import _one_line, main

ARCH = '{"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "kernel_sizes": [[3], [7], [7], [3]]}'
TINY = ["--set", f"arch={ARCH}", "--img-size", "16", "--batch-size", "16", "--no-progress", "--set", "threads=1",
        "--limit-val-batches", "1", "--no-export"]


def _error(capsys: pytest.CaptureFixture, argv: list[str], *needles: str) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _train_process(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "unireplknet", "train", "--output", str(out), *TINY, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def test_a_running_run_holds_its_folder_and_a_killed_one_does_not(tmp_path, capsys):
    out = tmp_path / "run"
    first = _train_process(out, "--epochs", "3", "--limit-train-batches", "40", "--save-interval-steps", "2")
    deadline = time.time() + 120
    while not (out / "last.pt").exists():
        assert first.poll() is None, first.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    for extra in (["--overwrite"], ["--resume"], []):
        _error(capsys, ["train", "--output", str(out), *TINY, "--max-steps", "1", *extra], "in use by a running job")
    assert first.poll() is None, "the first run must still be running (or the checks above proved nothing)"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    killed_at = torch.load(out / "last.pt", weights_only=True)["step"]  # how far it got depends on the machine
    target = killed_at + 4
    done = subprocess.run([sys.executable, "-m", "unireplknet", "train", "--output", str(out), "--resume",
                           "--max-steps", str(target), "--no-progress"], capture_output=True, text=True, env=_env(),
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]  # the killed run's lock blocks nothing
    assert torch.load(out / "last.pt", weights_only=True)["step"] == target


def test_two_runs_started_together_one_is_refused(tmp_path):
    out = tmp_path / "run"
    procs = [_train_process(out, "--max-steps", "8") for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2).strip().splitlines()
    assert len(refused) == 1 and ("in use by a running job" in refused[0] or "already holds a run" in refused[0])
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["step"] == 8  # one run's record, not two interleaved


def test_full_disk_keeps_the_last_good_checkpoint_and_no_temp_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) > 3:  # config.json, best.pt and last.pt of epoch 1 fit; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    _error(capsys, ["train", "--output", str(out), *TINY, "--epochs", "2", "--limit-train-batches", "2"],
           "No space left on device", "free some disk space")
    monkeypatch.setattr(os, "fsync", real_fsync)
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and last["step"] == 2
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_outputs_are_named(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _error(capsys, ["train", "--output", str(blocker), *TINY, "--max-steps", "1"], "is a file, not a folder")
    _error(capsys, ["train", "--output", str(blocker / "run"), *TINY, "--max-steps", "1"], "a parent of it is a file")
    assert blocker.read_text() == "x"


def test_a_failed_run_leaves_nothing_and_touches_no_unrelated_file(tmp_path, capsys):
    out = tmp_path / "new"
    _error(capsys, ["train", "--output", str(out), *TINY, "--data", str(tmp_path / "nope")], "does not exist")
    assert not out.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": true}')
    _error(capsys, ["train", "--output", str(mine), *TINY, "--max-steps", "1"], "config.json", "--overwrite")
    assert (mine / "config.json").read_text() == '{"mine": true}' and sorted(os.listdir(mine)) == ["config.json"]
    data_file = tmp_path / "data.txt"
    data_file.write_text("x")
    _error(capsys, ["train", "--output", str(out), *TINY, "--data", str(data_file)], "is a file, not a folder")


@pytest.mark.parametrize("argv,needle", [
    (["--set", "weight_decay=x"], "weight_decay must be a number"),
    (["--smoothing", "2"], "smoothing must be in [0, 1)"),
    (["--mixup", "-0.5"], "mixup and cutmix must be 0"),
    (["--weight-decay", "-1"], "weight_decay must be 0 or more"),
    (["--warmup-epochs", "-1"], "warmup_epochs must be 0 or more"),
    (["--clip-grad", "-1"], "clip_grad must be positive"),
    (["--layer-decay", "-0.1"], "layer_decay must be in (0, 1]"),
    (["--model-ema-decay", "5"], "model_ema_decay must be in [0, 1)"),
    (["--img-size", "100000"], "--img-size"),
    (["--pretrained"], "pretrained weights exist for the registered variants only"),
    (["--resume", "--overwrite"], "choose one"),
    (["--set", "task_args.nope=1"], "unknown task_args key(s) nope"),
])
def test_settings_are_checked_before_any_work(tmp_path, capsys, argv, needle):
    out = tmp_path / "run"
    _error(capsys, ["train", "--output", str(out), *TINY, *argv], needle)
    assert not out.exists()


def test_other_commands_refuse_impossible_requests(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "--output", str(run), *TINY, "--max-steps", "1"]) == 0
    best = str(run / "best.pt")
    _error(capsys, ["bench", "--checkpoint", best, "--batch-size", "100000000"], "lower --batch-size")
    _error(capsys, ["export", "--checkpoint", best, "--opset", "5"], "opset 5 is not supported")
    _error(capsys, ["reparam", "--checkpoint", best, "--output", best], "would destroy")
    assert torch.load(best, weights_only=True)["optimizer"]  # the training checkpoint is intact
    _error(capsys, ["erf", "--model", "unireplknet_a", "--kernel-size", "19"], "19 is not supported", "3, 5, 7")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", best]) == 0  # no --data: the run's built-in digits
    assert json.loads(capsys.readouterr().out)["num_images"] == 360
    bomb = tmp_path / "bomb.png"
    Image.new("RGB", (64, 64)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: a "decompression bomb" for this test
    _error(capsys, ["predict", str(bomb), "--checkpoint", best], "too large to decode safely")
    _error(capsys, ["erf", "--checkpoint", best, "--data", str(tmp_path), "--num-images", "1"],
           "too large to decode safely")
    assert not (tmp_path / "erf").exists() or not list((tmp_path / "erf").glob(".*.tmp"))


def test_a_bad_timestamp_is_one_plain_line(tmp_path, capsys):
    pd = pytest.importorskip("pandas", reason="forecast extra not installed")
    data = tmp_path / "st"
    data.mkdir()
    times = [str(t) for t in pd.date_range("2020-01-01", periods=100, freq="h")]
    times[40] = "yesterday-ish"
    pd.DataFrame({"timestamp": times, "temp": np.arange(100.0)}).to_csv(data / "a.csv", index=False)
    err = _error(capsys, ["train", "--task", "forecast", "--data", str(data), "--output", str(tmp_path / "r"),
                          "--set", 'task_args={"variables": ["temp"]}'], "is not a timestamp", "one format")
    assert "You might want" not in err


def test_one_line_removes_colour_codes_and_joins_lines():
    assert _one_line(ValueError("\x1b[31mbad\x1b[0m thing\n   more\n")) == "bad thing more"


def test_progress_is_log_lines_when_not_a_terminal_and_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard extra not installed")
    out = tmp_path / "run"
    argv = ["--set", f"arch={ARCH}", "--img-size", "16", "--batch-size", "16", "--set", "threads=1", "--no-export",
            "--epochs", "1", "--limit-train-batches", "20", "--limit-val-batches", "1", "--tensorboard"]
    proc = subprocess.run([sys.executable, "-m", "unireplknet", "train", "--output", str(out), *argv],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (out / "train.log").read_text()
    for text in (proc.stderr, log):
        assert "\r" not in text
    assert "epoch 1/1: 20/20 steps" in proc.stderr and "s left" in proc.stderr
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
