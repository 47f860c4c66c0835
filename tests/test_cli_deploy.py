"""`unireplknet reparam / export / eval / predict` on tiny models and a tiny image folder, plus the
one-line exit-code-2 errors for user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unireplknet.cli.main import main
from unireplknet.models.checkpoint import load_checkpoint, read_checkpoint
from unireplknet.models.unireplknet import UniRepLKNet

TINY = dict(depths=[1, 1, 1, 1], dims=[8, 16, 32, 64], kernel_sizes=[[3], [7], [7], [7]],
            layer_scale_init_value=1.0)
CLASSES = ["fox", "cat", "dog", "emu", "bee", "ant"]  # checkpoint order, deliberately not sorted
IMAGES_PER_CLASS = {"fox": 3, "cat": 2, "dog": 2, "emu": 2, "bee": 2, "ant": 2}


def _meta(kwargs: dict, deploy: bool = False) -> dict:
    return {"model": None, "model_kwargs": kwargs, "deploy": deploy, "task": "classification",
            "class_names": list(CLASSES), "input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3}


def _tiny_model(seed: int = 0) -> UniRepLKNet:
    """A tiny training-form model with non-trivial BatchNorm statistics (so re-parameterization matters)."""
    torch.manual_seed(seed)
    model = UniRepLKNet(num_classes=len(CLASSES), **TINY)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    for name, n in IMAGES_PER_CLASS.items():
        for split in ("train", "val"):
            d = root / "data" / split / name
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(d / f"{i}.png")
    (root / "data" / "val" / "cat" / "broken.jpg").write_bytes(b"this is not a jpeg")

    model = _tiny_model()
    run_ck = root / "run.pt"
    torch.save({"model": model.state_dict(), "meta": _meta(dict(num_classes=len(CLASSES), **TINY)),
                "optimizer": {}, "epoch": 1}, run_ck)
    # a model whose answer is known: zero head weights, biases ranking the classes fox > cat > ... > ant
    biased = _tiny_model()
    with torch.no_grad():
        biased.head.weight.zero_()
        biased.head.bias.copy_(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, -20.0]))
    biased_ck = root / "biased.pt"
    torch.save({"model": biased.state_dict(), "meta": _meta(dict(num_classes=len(CLASSES), **TINY))},
               biased_ck)
    official = root / "official.pth"  # no meta, like the released checkpoints
    torch.save({"model": model.state_dict()}, official)
    official_biased = root / "official_biased.pth"
    torch.save(biased.state_dict(), official_biased)  # raw state dict, as some releases are
    garbage = root / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 definitely not a checkpoint")
    return {"root": root, "data": root / "data", "run": run_ck, "biased": biased_ck, "official": official,
            "official_biased": official_biased, "garbage": garbage}


def test_reparam_writes_exact_deploy_checkpoint(files, capsys, tmp_path):
    out = tmp_path / "deploy.pt"
    code, stdout, _ = _run(["reparam", "--checkpoint", str(files["run"]), "--output", str(out)], capsys)
    assert code == 0
    report = json.loads(stdout)
    assert report["max_abs_diff"] < 1e-5 * max(1.0, report["max_abs_output"])
    assert report["params_deploy"] < report["params_training"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy.pt"]  # atomic: no temp file left
    ck = read_checkpoint(out)
    assert ck["meta"]["deploy"] is True and ck["meta"]["class_names"] == CLASSES
    # the deploy state dict loads strictly into a deploy=True model and computes what the training form does
    deploy_model = UniRepLKNet(num_classes=len(CLASSES), deploy=True, **TINY).eval()
    load_checkpoint(deploy_model, ck, strict=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deploy_model.modules())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(deploy_model(x), _tiny_model()(x), atol=1e-5, rtol=1e-4)
    # a deploy checkpoint cannot be re-parameterized again: a clear user error
    code, _, err = _run(["reparam", "--checkpoint", str(out)], capsys)
    assert code == 2 and "already in deploy form" in err


def test_reparam_official_checkpoint_needs_model(files, capsys, tmp_path):
    code, _, err = _run(["reparam", "--checkpoint", str(files["official"])], capsys)
    assert code == 2 and "--model" in err and len(err.strip().splitlines()) == 1
    # the official layout loads with --model and the matching architecture
    out = tmp_path / "official_deploy.pt"
    code, stdout, _ = _run(["reparam", "--checkpoint", str(files["official"]), "--model", "unireplknet_a",
                            "--model-kwargs", json.dumps(TINY), "--img-size", "32", "--output", str(out)],
                           capsys)
    assert code == 0 and json.loads(stdout)["max_abs_diff"] < 1e-4
    assert read_checkpoint(out)["meta"]["model"] == "unireplknet_a"


def test_export_onnx_matches_pytorch_any_batch(files, capsys, tmp_path):
    import onnx
    import onnxruntime as ort

    code, stdout, _ = _run(["export", "--checkpoint", str(files["run"]), "--output", str(tmp_path)], capsys)
    assert code == 0
    report = json.loads(stdout)
    onnx_path = tmp_path / "run.onnx"
    assert report["output"] == str(onnx_path) and report["reparameterized"] is True
    assert report["max_abs_diff"] < 1e-4 and report["ok"] is True
    ops = {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    assert "BatchNormalization" not in ops
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model = _tiny_model()
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("reparam", [False, True])
def test_eval_known_accuracy(files, capsys, tmp_path, reparam):
    argv = ["eval", "--checkpoint", str(files["biased"]), "--data", str(files["data"]), "--batch-size", "4",
            "--output", str(tmp_path)] + (["--reparam"] if reparam else [])
    code, stdout, _ = _run(argv, capsys)
    assert code == 0
    report = json.loads(stdout)
    total = sum(IMAGES_PER_CLASS.values())
    # always predicts 'fox' (checkpoint index 0, not the first folder in sorted order): top-1 = fox's share;
    # top-5 misses only 'ant' (lowest bias)
    assert report["num_images"] == total and report["skipped_unreadable"] == 1
    assert report["top1"] == pytest.approx(100 * IMAGES_PER_CLASS["fox"] / total)
    assert report["top5"] == pytest.approx(100 * (total - IMAGES_PER_CLASS["ant"]) / total)
    assert report["form"] == ("deploy" if reparam else "training")
    assert json.loads((tmp_path / "eval.json").read_text()) == report


def test_eval_official_checkpoint_uses_sorted_folder_order(files, capsys):
    # no class names in an official checkpoint: folders are class indices in sorted order (ImageNet's rule),
    # so the always-index-0 model predicts 'ant', the first folder
    code, stdout, _ = _run(["eval", "--checkpoint", str(files["official_biased"]), "--model", "unireplknet_a",
                            "--model-kwargs", json.dumps(TINY), "--data", str(files["data"]),
                            "--img-size", "32"], capsys)
    assert code == 0
    report = json.loads(stdout)
    total = sum(IMAGES_PER_CLASS.values())
    assert report["model"] == "unireplknet_a" and report["num_images"] == total
    assert report["top1"] == pytest.approx(100 * IMAGES_PER_CLASS["ant"] / total)


def test_predict_topk_labels(files, capsys, tmp_path):
    images = [str(files["data"] / "val" / "dog" / "0.png"), str(files["data"] / "val" / "emu")]
    code, stdout, _ = _run(["predict", *images, "--checkpoint", str(files["biased"]), "--topk", "3",
                            "--output", str(tmp_path)], capsys)
    assert code == 0
    results = json.loads(stdout)
    assert [Path(r["image"]).name for r in results] == ["0.png", "0.png", "1.png"]
    expected = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, -20.0]).softmax(0)
    for r in results:
        assert [p["label"] for p in r["predictions"]] == ["fox", "cat", "dog"]
        probs = [p["probability"] for p in r["predictions"]]
        assert probs == pytest.approx(expected[:3].tolist(), abs=1e-5)
    assert json.loads((tmp_path / "predictions.json").read_text()) == results


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_user_mistakes_give_one_line_and_exit_2(files, capsys):
    data, run_ck = str(files["data"]), str(files["run"])
    cases = [
        (["eval", "--checkpoint", "missing.pt", "--data", data], ("does not exist",)),
        (["eval", "--checkpoint", str(files["garbage"]), "--data", data], ("cannot read",)),
        (["eval", "--checkpoint", run_ck, "--data", str(files["root"] / "nope")],
         ("does not exist", "--data")),
        (["eval", "--checkpoint", str(files["official"]), "--data", data], ("no metadata", "--model")),
        (["eval", "--checkpoint", str(files["official"]), "--data", data, "--model", "unireplknet_a"],
         ("does not fit unireplknet_a", "--model")),
        (["eval", "--checkpoint", str(files["official"]), "--data", data, "--model", "unireplknet_a",
          "--model-kwargs", json.dumps(TINY), "--num-classes", "10"],
         ("head has 6 classes", "--num-classes 6")),
        (["eval", "--checkpoint", run_ck, "--data", data, "--num-classes", "10"], ("6 classes",)),
        (["reparam", "--checkpoint", run_ck, "--model", "unireplknet_zz"], ("unknown model",)),
        (["predict", str(files["data"] / "val" / "cat" / "broken.jpg"), "--checkpoint", run_ck],
         ("cannot read image", "broken.jpg")),
        (["predict", "no_such.png", "--checkpoint", run_ck], ("does not exist",)),
        (["bench", "--model", "unireplknet_zz"], ("unknown model",)),
        (["export", "--checkpoint", run_ck, "--output", str(files["garbage"]) + "/sub/m.onnx"],
         ("cannot write",)),
        (["erf", "--model", "unireplknet_a", "--kernel-size", "4"], ("--kernel-size 4",)),
    ]
    for argv, needles in cases:
        code, _, err = _run(argv, capsys)
        _one_line_error(code, err, *needles)


def test_bad_arguments_exit_2(capsys):
    for argv in (["eval", "--checkpoint", "x.pt", "--data", "d", "--batch-size", "0"],
                 ["predict", "a.png"],  # --checkpoint is required
                 ["bench", "--model", "unireplknet_a", "--dtype", "float8"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_real_process_prints_one_line_without_traceback(files):
    proc = subprocess.run([sys.executable, "-m", "unireplknet", "predict", str(files["garbage"]),
                           "--checkpoint", str(files["run"])], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"unireplknet predict: error: cannot read image '{files['garbage']}' (UnidentifiedImageError); "
        "is it a valid image file?"]
