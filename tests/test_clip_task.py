"""`unireplknet train --task clip` end to end on tiny settings (in-process CLI): the built-in generated captions
(summary keys, deploy form, ONNX of the image tower, eval / predict / reparam / export on the checkpoints), an
OpenCLIP CSV and a caption folder written by the test, a timm ConvNeXt tower, bad input as one line (exit 2);
the 20-minute acceptance run is `slow`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.cli_run import run_cli
from unireplknet.cli.main import main

pytest.importorskip("open_clip", reason="open_clip_torch is in the 'clip' extra")

TEXT = {"embed_dim": 16, "text_width": 16, "text_heads": 2, "text_layers": 1, "context_length": 24}
TASK = ["--task", "clip", "--img-size", "32", "--epochs", "1", "--no-progress", "--set", "threads=1", "--set",
        'arch={"depths":[1,1,1,1],"dims":[8,16,24,32],"kernel_sizes":[[3],[7],[5],[3]],"layer_scale_init_value":1.0}']
TINY = [*TASK, "--batch-size", "8"]




@pytest.fixture(scope="module")
def builtin_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clip") / "run"
    args = {**TEXT, "train_samples": 32, "val_samples": 16, "test_samples": 24, "shape_twins": True}
    assert main(["train", "--output", str(out), "--max-steps", "3", *TINY, "--set",
                 f"task_args={json.dumps(args)}"]) == 0
    return out


def test_builtin_summary_deploy_and_onnx(builtin_run: Path) -> None:
    s = json.loads((builtin_run / "summary.json").read_text())
    assert s["task"] == "clip" and s["test_split"] == "test" and s["test_samples"] == 24
    for key in ("test_zeroshot_acc1", "test_i2t_r1", "test_i2t_r5", "test_t2i_r1", "test_t2i_r5", "val_zeroshot_acc1"):
        assert 0 <= s[key] <= 100, key
    assert s["test_i2t_r1"] <= s["test_i2t_r5"] and s["test_loss"] > 0
    assert len(s["zeroshot_classes"]) == 8 and s["image_tower_params"] < s["params"]
    assert s["deploy_max_abs_diff"] < 1e-4 and s["onnx_max_abs_diff"] < 1e-4  # the image tower exports


def test_checkpoint_commands(builtin_run: Path, capsys, tmp_path: Path) -> None:
    code, out, err = run_cli(capsys, ["eval", "--checkpoint", str(builtin_run / "deploy.pt")])
    assert code == 0, err
    report, summary = json.loads(out), json.loads((builtin_run / "summary.json").read_text())
    for key in ("test_zeroshot_acc1", "test_i2t_r1", "test_t2i_r1", "test_loss"):
        assert report[key] == pytest.approx(summary[key], abs=1e-3), key
    code, out, err = run_cli(capsys, ["reparam", "--checkpoint", str(builtin_run / "best.pt"),
                                   "--output", str(tmp_path / "d.pt")])
    assert code == 0, err
    assert json.loads(out)["max_abs_diff"] < 1e-5
    code, out, err = run_cli(capsys, ["export", "--checkpoint", str(builtin_run / "best.pt"),
                                   "--output", str(tmp_path / "m.onnx")])
    assert code == 0 and json.loads(out)["ok"] is True, err
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (220, 40, 40)).save(image)
    code, out, err = run_cli(capsys, ["predict", str(image), "--checkpoint", str(builtin_run / "deploy.pt"),
                                   "--text", "a red circle, a blue ring ,a green cross", "--topk", "5"])
    assert code == 0, err
    ranked = json.loads(out)[0]["predictions"]
    assert sorted(p["label"] for p in ranked) == ["a blue ring", "a green cross", "a red circle"]
    assert sum(p["probability"] for p in ranked) == pytest.approx(1.0, abs=1e-5)
    code, out, err = run_cli(capsys, ["predict", str(image), "--checkpoint", str(builtin_run / "deploy.pt"),
                                   "--topk", "2"])
    assert code == 0 and len(json.loads(out)[0]["predictions"]) == 2, err  # the built-in classes


def _captioned(root: Path, n: int) -> list[tuple[str, str]]:
    rows = []
    for i in range(n):
        colour = ["red", "green", "blue"][i % 3]
        path = root / "images" / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (36, 30), {"red": (200, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 200)}[colour]
                  ).save(path)
        rows.append((f"images/{i:02d}.png", f"a {colour} picture number {i}"))
    return rows


def test_openclip_csv_and_folder_and_bad_input(tmp_path: Path, capsys) -> None:
    rows = _captioned(tmp_path, 12)
    (tmp_path / "train.csv").write_text("filepath\ttitle\n" + "".join(f"{p}\t{c}\n" for p, c in rows))
    args = json.dumps({**TEXT, "val_fraction": 0.25})
    code, _, err = run_cli(capsys, ["train", "--data", str(tmp_path / "train.csv"), "--output", str(tmp_path / "r1"),
                                 "--no-export", "--batch-size", "4", *TASK, "--set", f"task_args={args}"])
    assert code == 0, err
    s = json.loads((tmp_path / "r1" / "summary.json").read_text())
    assert s["test_split"] == "val" and s["val_samples"] == 3 and "val_zeroshot_acc1" not in s
    assert 0 <= s["val_i2t_r1"] <= 100 and s["steps"] == 2
    for p, c in rows:
        (tmp_path / p).with_suffix(".txt").write_text(c)
    code, _, err = run_cli(capsys, ["train", "--data", str(tmp_path / "images"), "--output", str(tmp_path / "r2"),
                                 "--no-export", "--max-steps", "1", "--batch-size", "4", *TASK, "--set",
                                 f"task_args={args}"])
    assert code == 0, err
    (tmp_path / "images" / "05.txt").write_text("  ")
    code, _, err = run_cli(capsys, ["train", "--data", str(tmp_path / "images"), "--output", str(tmp_path / "r3"),
                                 *TINY])
    assert code == 2 and len(err.splitlines()) == 1 and "05.txt' is empty" in err, err
    (tmp_path / "bad.csv").write_text("filepath\ttitle\nimages/00.png\tok\nimages/missing.png\tok\n")
    code, _, err = run_cli(capsys, ["train", "--data", str(tmp_path / "bad.csv"), "--output", str(tmp_path / "r4"),
                                 *TINY])
    assert code == 2 and len(err.splitlines()) == 1 and "bad.csv:3" in err and "missing.png" in err, err


def test_convnext_tower_and_bad_settings(tmp_path: Path, capsys) -> None:
    args = json.dumps({**TEXT, "train_samples": 16, "val_samples": 8, "test_samples": 8})
    code, _, err = run_cli(capsys, ["train", "--task", "clip", "--model", "convnext_atto", "--output",
                                 str(tmp_path / "c"), "--img-size", "32", "--batch-size", "8", "--max-steps", "1",
                                 "--no-export", "--no-progress", "--set", "threads=1", "--set",
                                 'arch={"dims":[8,16,24,32],"depths":[1,1,1,1]}', "--set", f"task_args={args}"])
    assert code == 0, err
    s = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert "convnext_atto" in s["model"] and s["image_tower_params"] < 30_000
    code, _, err = run_cli(capsys, ["train", "--output", str(tmp_path / "x"), *TINY, "--set",
                                 'task_args={"held_out": ["pink circle"]}'])
    assert code == 2 and len(err.splitlines()) == 1 and "pink circle" in err, err


@pytest.mark.slow
def test_clip_default_reaches_80_percent_zero_shot_within_20_minutes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    t0 = time.time()
    cmd = [sys.executable, "-m", "unireplknet", "train", "--task", "clip", "--output", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    wall = time.time() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["test_zeroshot_acc1"] >= 80.0, s
    assert wall <= 20 * 60, f"{wall:.0f} s"
    assert s["test_i2t_r1"] > 0 and s["test_t2i_r1"] > 0 and s["deploy_max_abs_diff"] < 1e-3
