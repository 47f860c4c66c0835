"""The detection diagnostics of benchmarks/: the mode probe's logistic regression and the study's marker read."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # detection_study imports its sibling study_runs
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("seed", [0, 1])
def test_mode_probe_separates_a_linear_signal_and_stays_at_chance_without_one(seed):
    probe = _load("detection_mode_probe").probe
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(600, 16, generator=g, dtype=torch.float64)
    y = (x[:, 3] - 0.5 * x[:, 7] > 0).long()
    fit, held_out = probe(x[:400], y[:400], x[400:], y[400:])
    assert fit > 0.97 and held_out > 0.95
    noise = torch.randint(0, 2, (600,), generator=g)
    _, held_out = probe(x[:400], noise[:400], x[400:], noise[400:])
    assert abs(held_out - 0.5) < 0.12


def test_marker_read_is_the_score_share_on_each_images_true_mode():
    marker_read = _load("detection_study").marker_read
    # categories 1-3 are mode a, 4-6 mode b, 7-8 the markers (never counted); labels map 1:1 to category ids
    test = SimpleNamespace(image_ids=[1, 2, 3], label_to_cat_id={i: i for i in range(1, 9)},
                           coco={"annotations": [dict(image_id=1, category_id=2), dict(image_id=2, category_id=5),
                                                 dict(image_id=3, category_id=7)]})
    detections = [dict(labels=torch.tensor([1, 4, 8]), scores=torch.tensor([0.6, 0.2, 0.9])),  # 0.6 / 0.8
                  dict(labels=torch.tensor([2, 6]), scores=torch.tensor([0.5, 0.5])),  # 0.5 / 1.0
                  dict(labels=torch.tensor([1]), scores=torch.tensor([0.9]))]  # no object ground truth: skipped
    assert marker_read(test, detections) == pytest.approx(100 * (0.75 + 0.5) / 2)
