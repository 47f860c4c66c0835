"""Shared fixtures: the official reference data in ../shared/reference (read-only)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REFERENCE_DIR = Path(os.environ.get("UNIREPLKNET_REFERENCE_DIR",
                                    Path(__file__).resolve().parents[2] / "shared" / "reference"))


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"reference data missing: {path} (set UNIREPLKNET_REFERENCE_DIR)")
    return path


@pytest.fixture(scope="session")
def golden() -> dict:
    """The official implementation's UniRepLKNet-A weights, input and logits."""
    return torch.load(_require(REFERENCE_DIR / "golden_unireplknet_a.pt"), weights_only=True)


@pytest.fixture(scope="session")
def official_shapes() -> dict:
    """Key -> shape tables of every official variant, training and deploy form, with parameter counts."""
    return json.loads(_require(REFERENCE_DIR / "official_state_dict_shapes.json").read_text())


@pytest.fixture(scope="session")
def official_settings() -> dict:
    return json.loads(_require(REFERENCE_DIR / "official_settings.json").read_text())


def dwconv_reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Depthwise 'same' convolution in float64 through F.conv2d: the reference for the fast op."""
    return torch.nn.functional.conv2d(x.double(), w.double(), None if b is None else b.double(),
                                      padding=w.shape[-1] // 2, groups=w.shape[0])


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖."""
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm())


# `make test` (and so CI) installs every extra: there, a test skipped for a missing extra is a failure,
# not a silent skip. Only tests that need hardware this machine lacks (CUDA) may skip.
REQUIRE_EXTRAS = os.environ.get("UNIREPLKNET_REQUIRE_EXTRAS") == "1"


def _fail_missing_extra(report) -> None:
    if REQUIRE_EXTRAS and report.skipped and "extra" in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"skipped for a missing extra while UNIREPLKNET_REQUIRE_EXTRAS=1: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_missing_extra(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_missing_extra(outcome.get_result())
