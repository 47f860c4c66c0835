"""Engine pieces: config layering, atomic checkpoints, RNG state, metrics, report, evaluation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from unireplknet.engine.checkpoint import get_rng_state, set_rng_state
from unireplknet.engine.config import available_configs, load_config, make_config
from unireplknet.engine.metrics import MetricsRecorder, read_metrics
from unireplknet.engine.report import plot_confusion, plot_curves, write_report
from unireplknet.engine.task import EvalContext
from unireplknet.errors import UserError
from unireplknet.tasks import get_task
from unireplknet.tasks.classification import topk_correct
from unireplknet.utils.atomic import atomic_save


def test_config_layers_defaults_recipe_and_flags(tmp_path: Path) -> None:
    cfg = load_config()
    assert cfg.data == "digits" and cfg.model is None and cfg.arch["dims"] == [16, 32, 64, 128]
    cfg = load_config("digits", {"epochs": 3, "lr": None})
    assert cfg.epochs == 3 and cfg.lr == pytest.approx(0.002)  # None overrides are ignored
    s = load_config("unireplknet_s_in1k", {"data": "/x"})  # Table 16, UniRepLKNet-S
    assert (s.mixup, s.cutmix, s.drop_path, s.reprob, s.smoothing) == (0.8, 1.0, 0.4, 0.25, 0.1)
    assert (s.lr_base, s.lr_base_size, s.weight_decay, s.warmup_epochs, s.epochs) == (
        4e-3, 4096, 0.05, 5, 300)
    ft = load_config("unireplknet_l_in22k_ft384", {"data": "/x"})  # Table 17, UniRepLKNet-L IN-1K ft
    assert (ft.img_size, ft.lr_base, ft.lr_base_size, ft.weight_decay, ft.smoothing) == (
        384, 5e-5, 512, 1e-8, 0.3)
    assert ft.layer_decay is not None and ft.mixup == 0.0 and ft.epochs == 20
    assert {"digits", "unireplknet_a_in1k", "unireplknet_xl_in22k", "unireplknet_b_in22k_ft384"} <= set(
        available_configs())
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"epochs": 7, "batch_size": 8}))
    assert load_config(str(path)).epochs == 7
    with pytest.raises(UserError, match="unknown config key"):
        make_config({"epoch": 1})
    with pytest.raises(UserError, match="amp"):
        make_config({}, {"amp": "fp8"})
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_config(str(path))


def test_atomic_save_never_leaves_a_torn_file(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    atomic_save({"model": {"w": torch.ones(3)}, "step": 1}, target)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"model": {"w": torch.zeros(3)}, "bad": Boom()}, target)
    state = torch.load(target, weights_only=True)
    assert state["step"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    atomic_save({"rng": get_rng_state()}, tmp_path / "r.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_topk_and_evaluate() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    assert topk_correct(logits, torch.tensor([1, 1, 0]), ks=(1, 2)) == [1, 2]
    model = nn.Linear(4, 3)
    x = torch.randn(10, 4)
    y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 3
    loader = [(x[:6], y[:6]), (x[6:], torch.cat([y[6:9], torch.tensor([-1])]))]  # one unreadable sample
    out = get_task("classification").evaluate(model, loader, EvalContext(torch.device("cpu"), detailed=True))
    assert out["samples"] == 9 and out["corrupt"] == 1
    assert out["acc1"] == pytest.approx(100 * 8 / 9)
    cm = out["confusion_matrix"]
    assert cm.sum() == 9 and cm.trace() == 8 and cm[y[0].item(), (y[0].item() - 1) % 3] == 1
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(torch.cat([x[:9]])), torch.cat([y[:9]]))
    assert out["loss"] == pytest.approx(float(loss), rel=1e-5)


def test_curves_confusion_and_report(tmp_path: Path) -> None:
    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_acc1": 50.0 + e, "lr": 1e-3}
            for e in (1, 2, 3)]
    figures = plot_curves(rows, tmp_path, {"accuracy": "acc1", "zeroshot": "zeroshot_acc1"})
    assert "zeroshot" not in figures and not (tmp_path / "zeroshot.png").exists()  # nothing recorded: no figure
    figures["confusion_matrix"] = plot_confusion(np.array([[1, 0, 0], [0, 1, 0], [0, 1, 1]]), ["a", "b", "c"],
                                                 tmp_path / "cm.png")
    report = write_report(tmp_path, {"val_acc1": 66.7, "model": "m", "paths": {}}, figures)
    for path in figures.values():
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(figures) == {"loss", "accuracy", "confusion_matrix"}
    text = report.read_text()
    assert "66.7" in text and "![accuracy](accuracy.png)" in text and "paths" not in text


def test_resume_trims_metric_rows_after_the_checkpoint_and_torn_rows(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "train_loss": 1}\n{"epoch": 2, "train_loss": 0.5}\n{"epoch": 3, "tra')
    assert [r["epoch"] for r in read_metrics(path)] == [1, 2]
    MetricsRecorder(tmp_path, epochs=3, primary="acc1").trim(1)
    assert [r["epoch"] for r in read_metrics(path)] == [1]
    assert path.read_text().endswith("\n")


@pytest.mark.parametrize("sched,expected", [
    ("cosine", {0.5: 0.5, 1.0: 1.0, 5.5: 0.5, 10.0: 0.0}),  # cosine over the 9 epochs after warm-up: mid at 5.5
    ("poly", {0.5: 0.5, 1.0: 0.9, 5.0: 0.5, 9.0: 0.1}),  # (1 - t / 10) ** 1 after the warm-up
    ("step", {0.5: 0.5, 5.99: 1.0, 6.0: 0.1, 8.0: 0.01}),  # x0.1 at epochs 6 and 8 exactly
])
def test_lr_schedules_in_fractional_epochs(sched: str, expected: dict[float, float]) -> None:
    from unireplknet.engine.run import _optimizer_and_schedule

    cfg = make_config({"epochs": 10, "lr": 1.0, "warmup_epochs": 1, "warmup_lr": 0.0, "min_lr": 0.0, "sched": sched,
                       "decay_epochs": [6, 8], "weight_decay": 0.0})
    optimizer, scheduler = _optimizer_and_schedule(nn.Linear(2, 2), cfg)
    for t, lr in expected.items():
        scheduler.step(t)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, abs=1e-6), (sched, t)
    with pytest.raises(UserError, match="decay_epochs"):
        make_config({"sched": "step"})


class _Fixed(nn.Module):
    def __init__(self, scores: torch.Tensor) -> None:
        super().__init__()
        self.scores = scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores


def test_deploy_check_tells_near_tie_flips_from_real_ones() -> None:
    from unireplknet.engine.finalize import DeployCheck

    scores = torch.randn(2, 5, 6, 6, dtype=torch.float64) * 3
    top2 = scores.topk(2, dim=1).indices
    swapped_tie = scores.clone()  # pixel (0, 0, 0): its two best classes pushed within 1e-6 of each other
    a, b = top2[0, 0, 0, 0], top2[0, 1, 0, 0]
    swapped_tie[0, b, 0, 0] = swapped_tie[0, a, 0, 0] - 1e-6
    tied = swapped_tie.clone()
    tied[0, b, 0, 0] += 2e-6  # the deploy form's rounding makes the runner-up win
    check = DeployCheck(_Fixed(swapped_tie), _Fixed(tied), labels=True)
    check(torch.zeros(1))
    summary = check.summary()
    assert summary["deploy_same_labels"] is True and summary["deploy_tied_label_flips"] == 1
    assert summary["deploy_label_agreement"] == pytest.approx(1 - 1 / 72)

    real = scores.clone()
    real[1, top2[1, 1, 2, 3], 2, 3] += 100.0  # a clear flip: the runner-up gains 100 logits
    check = DeployCheck(_Fixed(scores), _Fixed(real), labels=True)
    check(torch.zeros(1))
    summary = check.summary()
    assert summary["deploy_same_labels"] is False and summary["deploy_tied_label_flips"] == 0
    assert summary["deploy_max_abs_diff"] == pytest.approx(100.0)


def test_output_difference_pairs_detections_by_label_and_box_not_rank() -> None:
    from unireplknet.engine.finalize import output_difference

    gen = torch.Generator().manual_seed(3)
    k = 6
    boxes = torch.rand(k, 2, generator=gen, dtype=torch.float64) * 100
    sizes = 5 + torch.rand(k, 2, generator=gen, dtype=torch.float64) * 20
    det = {"boxes": torch.cat([boxes, boxes + sizes], dim=1),
           "labels": torch.tensor([1, 4, 2, 1, 3, 4]),
           "scores": torch.tensor([0.9, 0.8, 0.8, 0.5, 0.3, 0.1], dtype=torch.float64),
           "masks": torch.rand(k, 1, 8, 8, generator=gen, dtype=torch.float64)}
    noisy = {key: v + 1e-5 if v.is_floating_point() else v.clone() for key, v in det.items()}
    swap = torch.tensor([0, 2, 1, 3, 4, 5])  # ranks 2 and 3 tie at 0.8 and come out swapped
    swapped = {key: v[swap] for key, v in noisy.items()}
    assert output_difference([det], [swapped]) < 1e-4  # the 1e-5 noise, seen through float32
    # a real difference is still one: a label changed, a box moved, a detection missing
    relabelled = dict(swapped, labels=swapped["labels"].clone())
    relabelled["labels"][0] = 2
    assert output_difference([det], [relabelled]) >= 1.0
    moved = dict(swapped, boxes=swapped["boxes"].clone())
    moved["boxes"][4] += 3.0
    assert output_difference([det], [moved]) == pytest.approx(3.0, abs=1e-4)
    fewer = {key: v[:5] for key, v in det.items()}
    assert output_difference([det], [fewer]) == float("inf")
    # thresholded (boolean) masks: a pixel flipping at the threshold is counted, not a difference of 1.0
    from unireplknet.engine.finalize import DeployCheck, mask_disagreement

    binary = dict(det, masks=det["masks"] > 0.5)
    flipped = dict(swapped, masks=swapped["masks"] > 0.5)
    flipped["masks"][1, 0, 3, 4] = ~flipped["masks"][1, 0, 3, 4]
    assert output_difference([binary], [flipped]) < 1e-4
    assert mask_disagreement([binary], [flipped]) == (1, k * 64)
    check = DeployCheck(_Fixed([binary]), _Fixed([flipped]), labels=False)
    check(torch.zeros(1))
    assert check.summary()["deploy_mask_pixel_agreement"] == pytest.approx(1 - 1 / (k * 64))
    # plain tensors keep the positional comparison
    assert output_difference([torch.ones(3)], [torch.zeros(3)]) == 1.0
