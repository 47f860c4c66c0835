"""`unireplknet train --task detection` end to end on a tiny COCO folder (written in the real format), then
`eval`, `predict` (COCO results JSON with the annotation file's image ids, drawn PNGs), `reparam`, `bench`, and
one-line errors for an export and for a COCO JSON that names missing images."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from unireplknet.cli.main import main

pytest.importorskip("faster_coco_eval", reason="detection extra not installed")

HEAD = {"fpn_channels": 16, "fc_channels": 32, "num_convs": 1, "mask_channels": 16, "mask_convs": 1,
        "rpn_pre_nms_train": 100, "rpn_post_nms_train": 50, "rpn_pre_nms_test": 50, "rpn_post_nms_test": 20,
        "rpn_samples": 32, "roi_samples": 16, "anchor_scale": 4}
TASK_ARGS = {"min_size": 96, "max_size": 96, "train_scales": [96], "crop": False, "head": HEAD}
TINY = ["--task", "detection", "--set", 'arch={"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "kernel_sizes": 5}',
        "--set", f"task_args={json.dumps(TASK_ARGS)}", "--batch-size", "2", "--no-progress", "--set", "threads=1"]


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    from unireplknet.data.synth_detection import write_synth_coco

    return write_synth_coco(tmp_path_factory.mktemp("coco") / "scenes", size=96, splits={"train": 6, "val": 3})


def _error(capsys, argv: list[str], *needles: str) -> None:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_train_eval_predict_on_a_coco_folder(coco, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(coco), "--output", str(out), "--epochs", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "detection" and summary["test_split"] == "val" and summary["val_samples"] == 3
    for key in ("test_bbox_ap", "test_bbox_ap50", "test_bbox_ap75", "test_segm_ap"):
        assert 0.0 <= summary[key] <= 100.0, key
    assert summary["skipped_degenerate_boxes"] == 0 and summary["deploy_max_abs_diff"] < 1e-3
    assert "model.onnx" not in summary["paths"] and "list of boxes" in summary["onnx_skipped"]
    assert summary["test_bbox_ap"] == summary["val_bbox_ap"]  # no test split in the folder: val is held out
    for name in ("best.pt", "deploy.pt", "report/box_ap.png", "report/mask_ap.png"):
        assert (out / name).is_file(), name
    capsys.readouterr()

    assert main(["eval", "--checkpoint", str(out / "deploy.pt"), "--data", str(coco)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["test_bbox_ap"] == pytest.approx(summary["test_bbox_ap"], abs=1e-6)

    pred_dir = tmp_path / "pred"
    images = sorted((coco / "val").glob("*.png"))
    assert main(["predict", *map(str, images), "--checkpoint", str(out / "best.pt"), "--data", str(coco),
                 "--output", str(pred_dir)]) == 0
    results = json.loads((pred_dir / "results.json").read_text())
    ids = {img["file_name"]: img["id"] for img in json.loads((coco / "annotations" / "instances_val.json")
                                                             .read_text())["images"]}
    assert {r["image_id"] for r in results} <= {ids[p.name] for p in images}
    for r in results:
        assert set(r) >= {"image_id", "category_id", "bbox", "score", "segmentation"} and len(r["bbox"]) == 4
    assert sorted(p.name for p in pred_dir.glob("*.png")) == [p.name for p in images]
    capsys.readouterr()

    code = main(["reparam", "--checkpoint", str(out / "best.pt"), "--output", str(tmp_path / "d.pt")])
    assert code == 0, capsys.readouterr().err
    assert main(["bench", "--checkpoint", str(out / "best.pt"), "--batch-size", "1", "--iters", "1",
                 "--warmup", "0"]) == 0
    capsys.readouterr()
    _error(capsys, ["export", "--checkpoint", str(out / "best.pt")], "cannot be exported to ONNX")
    built = torch.load(out / "deploy.pt", weights_only=True)
    assert built["meta"]["model"] == "cascade_mask_rcnn_unireplknet_a" and built["meta"]["deploy"] is True


def test_a_timm_convnext_backbone_through_train_and_eval(coco, tmp_path, capsys):
    pytest.importorskip("timm")
    out = tmp_path / "run"
    argv = ["train", "--task", "detection", "--data", str(coco), "--output", str(out), "--batch-size", "2",
            "--max-steps", "2", "--no-progress", "--set", "threads=1",
            "--set", f"task_args={json.dumps(dict(TASK_ARGS, backbone='convnext_atto'))}"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "cascade_mask_rcnn on convnext_atto (timm)" and summary["deploy_max_abs_diff"] == 0
    meta = torch.load(out / "deploy.pt", weights_only=True)["meta"]
    assert meta["model"] == "cascade_mask_rcnn_timm" and meta["model_kwargs"]["timm_backbone"] == "convnext_atto"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "deploy.pt"), "--data", str(coco)]) == 0
    assert json.loads(capsys.readouterr().out)["test_bbox_ap"] == pytest.approx(summary["test_bbox_ap"], abs=1e-6)
    _error(capsys, [*argv, "--set", 'arch={"kernel_sizes": 3}', "--overwrite"], "bad detection model settings",
           "timm backbone")


def test_a_json_naming_missing_images_is_one_line(coco, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(coco, broken)
    (broken / "val" / sorted(p.name for p in (broken / "val").iterdir())[0]).unlink()
    _error(capsys, ["train", *TINY, "--data", str(broken), "--output", str(tmp_path / "r"), "--max-steps", "1"],
           "instances_val.json", "missing")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("key,value", [("scene_marker", "glyph"), ("scene_cue", "hue")])
def test_a_bad_scene_setting_is_one_line(tmp_path, capsys, key, value):
    args = json.dumps(TASK_ARGS | {key: value})
    _error(capsys, ["train", *TINY, "--set", f"task_args={args}", "--output", str(tmp_path / "r"), "--max-steps", "1"],
           key)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_detection_default_reaches_box_ap_50_mask_ap_45_within_20_minutes(tmp_path: Path) -> None:
    """The acceptance run: the default recipe on the built-in scenes, 2 threads, held-out test split."""
    out = tmp_path / "run"
    t0 = time.time()
    cmd = [sys.executable, "-m", "unireplknet", "train", "--task", "detection", "--output", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    wall = time.time() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["test_split"] == "test" and s["test_samples"] == 150, s
    assert s["test_bbox_ap"] >= 50.0 and s["test_segm_ap"] >= 45.0, s
    assert wall < 1200, f"took {wall:.0f} s"
