"""timm's own model tests (tests/test_models.py of the installed timm's release) pass on our variants.

The file is not in this repository: it comes from the timm sdist on PyPI, fetched with pip the first time and
cached beside the interpreter (``$UNIREPLKNET_TEST_CACHE``, default ``<venv>/.cache/unireplknet-tests``).
It runs unmodified apart from one edit, our module name added to its FEAT_INTER_FILTERS (the models it runs
its forward_intermediates / pruning tests on); our variants are selected with ``-k`` and registered before
collection with ``-p unireplknet``. Pretrained tests load from a stand-in hub cache (tests/fake_hub.py) with
HF_HUB_OFFLINE=1: no network. UniRepLKNet-A runs in the default suite; F … B behind ``slow``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import unireplknet
from tests.fake_hub import constant_release, release
from unireplknet.models.pretrained import CHECKPOINT_FILES

timm = pytest.importorskip("timm", reason="timm extra")

CACHE = Path(os.environ.get("UNIREPLKNET_TEST_CACHE", Path(sys.prefix) / ".cache" / "unireplknet-tests"))
FEAT_INTER_END = "'visformer', 'xception', 'xception_aligned',\n]"
# The tests of timm's file that take our variants: per variant (with their batch size) and per released tag.
PER_MODEL = ["test_model_forward", "test_model_forward_torchscript", "test_model_forward_features",
             "test_model_forward_intermediates_features", "test_model_forward_intermediates",
             "test_model_forward_fx", "test_model_forward_fx_torchscript"]
PER_MODEL_BATCH2 = ["test_model_backward", "test_model_backward_fx"]
PER_TAG = ["test_model_default_cfgs", "test_model_load_pretrained", "test_model_features_pretrained"]


def _pip_env() -> dict[str, str]:
    """pip as users run it, the machine's local-wheel configuration set aside (as the Makefile does)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL")}
    return env | {"PIP_CONFIG_FILE": os.devnull}


def timm_test_models() -> Path:
    """timm's tests/test_models.py for the installed timm version, from its sdist (downloaded once)."""
    target = CACHE / f"timm-{timm.__version__}" / "test_models.py"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
               f"timm=={timm.__version__}", "-d", tmp]
        done = subprocess.run(cmd, env=_pip_env(), capture_output=True, text=True, timeout=600)
        sdists = list(Path(tmp).glob("timm-*.tar.gz"))
        if done.returncode != 0 or not sdists:
            message = (f"cannot get timm {timm.__version__}'s sdist from PyPI (needed once, then cached in {CACHE}):"
                       f" {done.stderr.strip().splitlines()[-1:] or done.returncode}")
            if os.environ.get("UNIREPLKNET_REQUIRE_EXTRAS") == "1":
                pytest.fail(message)
            pytest.skip(message)
        with tarfile.open(sdists[0]) as sdist:
            member = sdist.extractfile(f"timm-{timm.__version__}/tests/test_models.py")
            assert member is not None, "timm's sdist has no tests/test_models.py"
            partial = Path(tmp) / "test_models.py"
            partial.write_bytes(member.read())
        partial.replace(target)  # atomic: a concurrent run sees the whole file or none
    return target


def _prepare(tmp_path: Path) -> Path:
    """timm's file in ``tmp_path`` with 'unireplknet' added to FEAT_INTER_FILTERS (the one edit)."""
    text = timm_test_models().read_text()
    assert text.count(FEAT_INTER_END) == 1, "timm's FEAT_INTER_FILTERS changed: update FEAT_INTER_END"
    path = tmp_path / "test_models.py"
    path.write_text(text.replace(FEAT_INTER_END, FEAT_INTER_END[:-1] + "    'unireplknet',\n]"))
    return path


def run_timm_model_tests(tmp_path: Path, names: list[str]) -> dict[str, str]:
    """Run timm's model tests on ``names`` in a fresh interpreter; returns test id -> outcome."""
    test_file = _prepare(tmp_path)
    hub = tmp_path / "hub"
    for name in names:
        for tag in CHECKPOINT_FILES.get(name, {}):
            release(hub, name, tag, constant_release(name, tag))
    src = str(Path(unireplknet.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub), "HF_HOME": str(tmp_path / "hf_home"),
                        "PYTHONPATH": path}
    report = tmp_path / "report.xml"
    cmd = [sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "unireplknet", "-p", "no:cacheprovider",
           "-p", "no:xdist", "-W", "ignore::pytest.PytestUnknownMarkWarning", "--rootdir", str(tmp_path),
           "-c", os.devnull, "-k", " or ".join(names), f"--junitxml={report}"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3000)
    assert report.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        failed = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name")] = failed[0] if failed else "passed"
    not_passed = {k: v for k, v in outcomes.items() if v != "passed"}
    assert not not_passed, f"{not_passed}\n{done.stdout[-6000:]}"
    return outcomes


def _expected(names: list[str]) -> set[str]:
    ids = set()
    for name in names:
        ids |= {f"{test}[1-{name}]" for test in PER_MODEL} | {f"{test}[2-{name}]" for test in PER_MODEL_BATCH2}
        ids |= {f"{test}[1-{name}.{tag}]" for test in PER_TAG for tag in CHECKPOINT_FILES[name]}
        ids.add(f"test_prune_intermediate_layers_contract[{name}]")
    return ids


def test_timm_model_tests_pass_for_unireplknet_a(tmp_path):
    names = ["unireplknet_a"]
    assert set(run_timm_model_tests(tmp_path, names)) == _expected(names)  # all 13 ran, and passed


@pytest.mark.slow
def test_timm_model_tests_pass_for_f_to_b(tmp_path):
    names = ["unireplknet_f", "unireplknet_p", "unireplknet_n", "unireplknet_t", "unireplknet_s", "unireplknet_b"]
    assert set(run_timm_model_tests(tmp_path, names)) == _expected(names)
