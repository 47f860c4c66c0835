"""`unireplknet train --task referring` end to end, tiny: the built-in moving shapes with both fusions, the
Ref-YouTube-VOS layout on a fixture, a Hugging Face text encoder from a local tiny config; summary keys, eval of
the deploy checkpoint, predict (one mask PNG per frame), the other commands, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli_run import run_cli
from tests.test_referring_data import write_refer_vos
from unireplknet.cli.main import main

TINY = ["--set", 'arch={"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32], "kernel_sizes": 5}', "--no-progress",
        "--set", "threads=1", "--max-steps", "2", "--epochs", "1", "--batch-size", "4"]
SHAPES = ['task_args={"train_clips": 8, "val_clips": 4, "test_clips": 6, "frame_size": 32, "dim": 16, '
          '"num_frames": 3, "text_depth": 1}']




def _one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def _frames(folder: Path, n: int = 5, size: tuple[int, int] = (36, 28)) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    for t in range(n):
        rgb = np.zeros((size[1], size[0], 3), np.uint8) + 40
        rgb[5:12, 2 + 3 * t: 10 + 3 * t] = (220, 40, 40)
        Image.fromarray(rgb).save(folder / f"{t:05d}.jpg")
    return folder


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("referring") / "run"
    assert main(["train", "--task", "referring", "--output", str(out), *TINY, "--set", *SHAPES]) == 0
    return out


def test_summary_eval_and_predict(shapes_run, capsys, tmp_path):
    summary = json.loads((shapes_run / "summary.json").read_text())
    assert summary["task"] == "referring" and summary["test_split"] == "test"
    for key in ("test_j", "test_f", "test_jf", "val_jf"):
        assert 0.0 <= summary[key] <= 100.0
    assert summary["test_jf"] == pytest.approx((summary["test_j"] + summary["test_f"]) / 2)
    assert summary["test_expressions"] == 6 and summary["test_frames"] == 18
    assert summary["deploy_max_abs_diff"] < 1e-3 and "two inputs" in summary["onnx_skipped"]
    rows = (shapes_run / "report" / "per_expression.csv").read_text().splitlines()
    assert rows[0] == "expression,j,f" and len(rows) == 7
    code, out, err = run_cli(capsys, ["eval", "--checkpoint", str(shapes_run / "deploy.pt")])
    assert code == 0, err
    assert json.loads(out)["test_jf"] == pytest.approx(summary["test_jf"], abs=1e-4)
    frames = _frames(tmp_path / "clip")
    code, out, err = run_cli(capsys, ["predict", str(frames), "--checkpoint", str(shapes_run / "deploy.pt"),
                                   "--text", "the small red square moving right", "--output", str(tmp_path / "p"),
                                   "--batch-size", "2"])
    assert code == 0, err
    from PIL import Image

    masks = sorted((tmp_path / "p" / "clip").glob("*.png"))
    assert [m.stem for m in masks] == [f"{t:05d}" for t in range(5)]
    for m in masks:
        with Image.open(m) as im:
            assert im.size == (36, 28) and set(np.unique(np.asarray(im)).tolist()) <= {0, 255}
    assert (tmp_path / "p" / "clip_strip.png").is_file() and len(json.loads(out)["videos"][0]["mask_area"]) == 5
    _one_line(*run_cli(capsys, ["predict", str(frames), "--checkpoint", str(shapes_run / "best.pt"),
                             "--output", str(tmp_path / "q")])[::2], "--text")
    _one_line(*run_cli(capsys, ["predict", str(frames), "--checkpoint", str(shapes_run / "best.pt"), "--text", " ",
                             "--output", str(tmp_path / "q")])[::2], "--text")


def test_predict_in_chunks_equals_one_pass(shapes_run, tmp_path):
    """Frames are processed batch_size at a time with their neighbours: the same masks as one pass."""
    import torch

    from unireplknet.engine.task import Request
    from unireplknet.models import build_model_from_checkpoint
    from unireplknet.tasks import get_task

    model, meta = build_model_from_checkpoint(shapes_run / "best.pt")
    frames, tokens = torch.randn(7, 3, 32, 32), torch.zeros(1, 16, dtype=torch.long)
    task = get_task("referring")
    one = task._video_logits(model.eval(), frames, tokens, 1, Request(batch_size=7, device=torch.device("cpu")))
    chunks = task._video_logits(model, frames, tokens, 1, Request(batch_size=2, device=torch.device("cpu")))
    assert torch.allclose(one, chunks, atol=1e-5)


def test_other_commands(shapes_run, capsys, tmp_path):
    best = shapes_run / "best.pt"
    code, out, err = run_cli(capsys, ["reparam", "--checkpoint", str(best), "--output", str(tmp_path / "d.pt")])
    assert code == 0, err
    assert json.loads(out)["max_abs_diff"] < 1e-4 * max(1.0, json.loads(out)["max_abs_output"])
    code, out, err = run_cli(capsys, ["bench", "--checkpoint", str(best), "--batch-size", "1", "--iters", "1",
                                   "--warmup", "0"])
    assert code == 0 and json.loads(out)["deploy"]["images_per_s"] > 0, err
    code, out, err = run_cli(capsys, ["erf", "--checkpoint", str(best), "--num-images", "1",
                                   "--output", str(tmp_path / "erf")])
    assert code == 0, err
    _one_line(*run_cli(capsys, ["export", "--checkpoint", str(best), "--output", str(tmp_path / "m.onnx")])[::2],
              "two inputs")


def test_cross_attention_and_first_frame(tmp_path):
    out = tmp_path / "xattn"
    assert main(["train", "--task", "referring", "--output", str(out), *TINY, "--set", *SHAPES,
                 "--set", "task_args.fusion=cross_attention", "--set", "task_args.expression_type=first_frame"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "cross_attention" in summary["model"] and 0 <= summary["test_jf"] <= 100


def test_refer_vos_layout_and_its_mistakes(tmp_path, capsys):
    root = write_refer_vos(tmp_path / "ref", splits=("train", "valid"))
    out = tmp_path / "run"
    assert main(["train", "--task", "referring", "--data", str(root), "--output", str(out), *TINY,
                 "--set", 'task_args={"frame_size": 32, "dim": 16, "num_frames": 2, "text_depth": 1}']) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_split"] == "val" and summary["val_expressions"] == 4 and summary["val_frames"] == 20
    meta_file = root / "meta_expressions" / "train" / "meta_expressions.json"
    meta = json.loads(meta_file.read_text())
    meta["videos"]["train_video0"]["expressions"]["0"]["exp"] = ""
    meta_file.write_text(json.dumps(meta))
    _one_line(*run_cli(capsys, ["train", "--task", "referring", "--data", str(root), "--output", str(tmp_path / "x"),
                             *TINY])[::2], str(meta_file), "empty sentence")


def test_hugging_face_text_encoder_by_name(tmp_path, monkeypatch, capsys):
    """--text-encoder (= task_args.text_encoder) names any Hugging Face model (here a tiny random BERT in a local
    folder); on a task without a text encoder the flag is a one-line error."""
    pytest.importorskip("transformers")
    from tests.test_referring_model import write_tiny_bert

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bert = write_tiny_bert(tmp_path / "tiny-bert")
    out = tmp_path / "run"
    assert main(["train", "--task", "referring", "--output", str(out), *TINY, "--set", *SHAPES,
                 "--text-encoder", str(bert), "--set", "task_args.max_len=12"]) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    code, report, err = run_cli(capsys, ["eval", "--checkpoint", str(out / "deploy.pt")])
    assert code == 0, err
    assert json.loads(report)["test_jf"] == pytest.approx(summary["test_jf"], abs=1e-4)
    _one_line(*run_cli(capsys, ["train", "--task", "referring", "--output", str(tmp_path / "y"), *TINY, "--set",
                                *SHAPES, "--set", f"task_args.text_encoder={tmp_path / 'nope'}"])[::2], "nope")
    _one_line(*run_cli(capsys, ["train", "--task", "forecast", "--output", str(tmp_path / "z"),
                                "--text-encoder", str(bert)])[::2], "text_encoder")


def test_crafted_builder_meta_is_one_line(capsys, tmp_path):
    import torch

    for name, meta in {"unknown": {"builder": "nope", "task": "referring"},
                       "broken": {"builder": "referring", "referring": {"dim": "x"}, "task": "referring"}}.items():
        path = tmp_path / f"{name}.pt"
        torch.save({"model": {}, "meta": meta}, path)
        _one_line(*run_cli(capsys, ["eval", "--checkpoint", str(path)])[::2], "checkpoint meta")
