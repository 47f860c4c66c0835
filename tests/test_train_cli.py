"""`unireplknet train` end to end on the embedded digits with a tiny model: run folder, checkpoints in the
shared layout, resume (bit-exact), fine-tuning, corrupt images and one-line user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from unireplknet.cli.main import main
from unireplknet.models.checkpoint import build_model_from_checkpoint

TINY_ARCH = '{"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "kernel_sizes": [[3], [7], [7], [3]]}'
TINY = ["--set", f"arch={TINY_ARCH}", "--img-size", "16", "--batch-size", "16", "--no-progress",
        "--set", "threads=1"]


def train(out: Path, *extra: str) -> int:
    return main(["train", "--output", str(out), *TINY, *extra])


def test_default_run_writes_the_whole_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train(out, "--epochs", "2", "--limit-train-batches", "4", "--limit-val-batches", "3") == 0
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt", "deploy.pt", "model.onnx", "train.log",
                 "report/loss.png", "report/accuracy.png", "report/confusion_matrix.png", "report/report.md",
                 "summary.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.tmp")), "temp files left behind"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert {"epoch", "train_loss", "val_acc1", "lr", "data_time", "compute_time"} <= set(r)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 8 and summary["epochs"] == 2
    assert 0.0 <= summary["val_acc1"] <= 100.0
    assert summary["deploy_same_labels"] is True and summary["onnx_max_abs_diff"] < 1e-3
    for path in summary["paths"].values():
        assert Path(path).exists(), path
    config = json.loads((out / "config.json").read_text())
    assert config["img_size"] == 16 and config["lr"] == pytest.approx(0.002)

    # checkpoints follow the shared contract: {'model': official state dict, 'meta': ...}
    last = torch.load(out / "last.pt", weights_only=True)
    for key in ("model", "meta", "optimizer", "scheduler", "epoch", "step", "rng", "config"):
        assert key in last
    assert last["meta"]["class_names"] == [str(i) for i in range(10)]
    assert last["meta"]["input_size"] == [3, 16, 16] and last["meta"]["deploy"] is False
    assert not any(k.startswith("module.") for k in last["model"])
    model, meta = build_model_from_checkpoint(out / "best.pt")
    deploy, dmeta = build_model_from_checkpoint(out / "deploy.pt")
    assert dmeta["deploy"] is True and meta["deploy"] is False
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), deploy.eval()(x), atol=1e-4, rtol=1e-4)


def test_resume_continues_bit_exactly(tmp_path: Path) -> None:
    """3 steps + resume to 6 steps ends with the same weights as 6 steps in one go (mid-epoch resume)."""
    common = ["--epochs", "2", "--limit-train-batches", "4", "--limit-val-batches", "1", "--no-export"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train(straight, *common, "--max-steps", "6") == 0
    assert train(split, *common, "--max-steps", "3") == 0
    first = torch.load(split / "last.pt", weights_only=True)
    assert first["step"] == 3 and first["epoch"] == 0 and first["epoch_samples"] == 48
    assert train(split, *common, "--max-steps", "6", "--resume") == 0
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(split / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6 and a["epoch"] == b["epoch"] == 1
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    rows = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2], "the partial epoch's row is replaced on resume"
    straight_rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    # the resumed epoch's train_loss covers the whole epoch (the part before the resume was checkpointed)
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in straight_rows]
    assert rows[0]["resumed_at_step"] == 3 and "resumed_at_step" not in rows[1]


def test_finetune_with_a_new_head(tmp_path: Path) -> None:
    src = tmp_path / "src"
    assert train(src, "--max-steps", "1", "--limit-val-batches", "1", "--no-export") == 0
    # a 10-class checkpoint whose head is then given 3 classes by a 3-class folder dataset
    data = tmp_path / "data"
    for split in ("train", "val"):
        for c in range(3):
            (data / split / f"c{c}").mkdir(parents=True)
            for i in range(6 if split == "train" else 2):
                Image.new("RGB", (16, 16), (80 * c, 10 * i, 0)).save(data / split / f"c{c}" / f"{i}.png")
    out = tmp_path / "ft"
    assert train(out, "--data", str(data), "--finetune", str(src / "best.pt"), "--epochs", "1",
                 "--batch-size", "4", "--no-export") == 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["model"]["head.weight"].shape == (3, 64)
    source = torch.load(src / "best.pt", weights_only=True)["model"]
    assert not torch.equal(state["model"]["head.weight"][:3], source["head.weight"][:3])
    assert json.loads((out / "summary.json").read_text())["val_samples"] == 6

    # an official-style checkpoint: a raw training-form state dict, no meta
    raw = tmp_path / "official.pth"
    torch.save(source, raw)
    out2 = tmp_path / "ft2"
    assert train(out2, "--data", str(data), "--finetune", str(raw), "--max-steps", "1", "--batch-size", "4",
                 "--lr", "1e-12", "--warmup-epochs", "0", "--no-export") == 0
    tuned = torch.load(out2 / "last.pt", weights_only=True)["model"]
    stem = "downsample_layers.0.0.weight"
    torch.testing.assert_close(tuned[stem], source[stem], atol=1e-6, rtol=0)  # the weights were loaded
    assert tuned["head.weight"].shape == (3, 64)


def test_corrupt_images_are_counted_and_skipped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for split in ("train", "val"):
        for c in range(2):
            (data / split / f"class{c}").mkdir(parents=True)
            for i in range(8 if split == "train" else 3):
                Image.new("RGB", (20, 20), (200 * c, 5 * i, 9)).save(data / split / f"class{c}" / f"{i}.png")
    for i in range(3):
        (data / "train" / "class0" / f"broken{i}.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "run"
    assert train(out, "--data", str(data), "--epochs", "2", "--batch-size", "4", "--no-export") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["corrupt_samples"] >= 3  # each broken file is met every epoch
    assert "skipping unreadable image" in (out / "train.log").read_text()


def _user_error(capsys: pytest.CaptureFixture, argv: list[str], expect: str) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert expect in err, err


def test_user_mistakes_get_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = ["--output", str(tmp_path / "o")]
    _user_error(capsys, ["train", *out, "--data", str(tmp_path / "nope")], "does not exist")
    (tmp_path / "empty").mkdir()
    _user_error(capsys, ["train", *out, "--data", str(tmp_path / "empty")], "has no 'train/' folder")
    (tmp_path / "noimg" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "noimg" / "val" / "cat").mkdir(parents=True)
    (tmp_path / "noimg" / "train" / "cat" / "notes.txt").write_text("hi")
    _user_error(capsys, ["train", *out, "--data", str(tmp_path / "noimg")], "no images found")
    bad = tmp_path / "bad"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (bad / split / c).mkdir(parents=True)
            (bad / split / c / "x.png").write_bytes(b"garbage")
    _user_error(capsys, ["train", *out, "--data", str(bad)], "cannot read any")
    _user_error(capsys, ["train", *out, "--model", "unireplknet_zz"], "unireplknet_zz")
    _user_error(capsys, ["train", *out, "--config", "no_such_recipe"], "unknown config")
    _user_error(capsys, ["train", *out, "--epochs", "0"], "--epochs")
    _user_error(capsys, ["train", *out, "--set", "nonsense=1"], "unknown config key")
    _user_error(capsys, ["train", *out, "--resume"], "nothing to resume")
    _user_error(capsys, ["train", *out, "--config", "unireplknet_t_in1k"], "--data")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01 not a checkpoint")
    _user_error(capsys, ["train", *out, "--finetune", str(junk)], "junk.pt")
    junk.write_text("junk\n")  # torch.load raises KeyError on this one
    _user_error(capsys, ["train", *out, "--finetune", str(junk)], "junk.pt")


def test_checkpoint_of_another_model_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    assert train(src, "--max-steps", "1", "--limit-val-batches", "1", "--no-export") == 0
    capsys.readouterr()
    other = '{"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 48], "kernel_sizes": [[3], [7], [7], [3]]}'
    _user_error(capsys, ["train", "--output", str(tmp_path / "x"), *TINY, "--set", f"arch={other}",
                         "--finetune", str(src / "last.pt")], "does not fit")
    _user_error(capsys, ["train", "--output", str(src), "--resume", *TINY, "--set", f"arch={other}"],
                "does not fit")
    _user_error(capsys, ["train", "--output", str(src), *TINY], "--resume")
    assert train(src, "--overwrite", "--max-steps", "2", "--limit-val-batches", "1", "--no-export") == 0
    assert torch.load(src / "last.pt", weights_only=True)["step"] == 2
    assert len((src / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_recipe_features_together(tmp_path: Path, amp: str) -> None:
    """AMP, EMA, gradient accumulation, mixup/cutmix, layer-wise lr decay, channels-last, checkpointing."""
    out = tmp_path / "run"
    # 32 px, not 16: PyTorch's CPU bf16 conv weight-gradient gives NaN for a stride-2 conv on a 1x1 input
    assert train(out, "--img-size", "32", "--amp", amp, "--model-ema", "--model-ema-decay", "0.5",
                 "--accum-steps", "2",
                 "--mixup", "0.8", "--cutmix", "1.0", "--layer-decay", "0.8", "--channels-last",
                 "--grad-checkpointing", "--clip-grad", "1.0", "--epochs", "1", "--limit-train-batches", "4",
                 "--limit-val-batches", "2", "--no-export") == 0
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 2  # 4 batches / 2 accumulation steps
    assert ckpt["ema"] is not None and set(ckpt["ema"]) == set(ckpt["model"])
    assert any(not torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in ckpt["model"])
    assert (ckpt["scaler"] is not None) == (amp == "fp16")
    lrs = {g["lr"] for g in ckpt["optimizer"]["param_groups"]}
    assert len(lrs) > 3  # layer-wise lr decay: one lr per depth group
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert "val_acc1_ema" in row and row["train_loss"] > 0
    assert json.loads((out / "summary.json").read_text())["deploy_same_labels"] in (True, False)


def test_registered_variant_and_resume_on_other_classes(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "a"
    assert main(["train", "--output", str(out), "--model", "unireplknet_a", "--img-size", "32",
                 "--batch-size", "8", "--max-steps", "1", "--limit-val-batches", "1", "--no-export",
                 "--no-progress"]) == 0
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["meta"]["model"] == "unireplknet_a" and ckpt["config"]["arch"] is None
    model, meta = build_model_from_checkpoint(out / "best.pt")
    assert meta["model_kwargs"]["num_classes"] == 10 and model.dims == (40, 80, 160, 320)
    data = tmp_path / "data"
    for split in ("train", "val"):
        for c in range(3):
            (data / split / f"c{c}").mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (c * 90, i, 0)).save(data / split / f"c{c}" / f"{i}.png")
    capsys.readouterr()
    _user_error(capsys, ["train", "--output", str(out), "--resume", "--data", str(data)], "classes")
