"""utils.after_import: a callback runs right after a module's first import (or at once), errors are logged; and
`import unireplknet` registers the OpenCLIP towers without importing open_clip itself."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from unireplknet.utils.after_import import after_import


def _write_module(root: Path, name: str) -> None:
    (root / f"{name}.py").write_text("VALUE = 41\n")


def test_callback_runs_after_the_first_import_and_at_once_when_already_imported(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _write_module(tmp_path, "fresh_mod_for_hook")
    seen: list[int] = []
    after_import("fresh_mod_for_hook", lambda: seen.append(sys.modules["fresh_mod_for_hook"].VALUE + 1))
    assert seen == [] and "fresh_mod_for_hook" not in sys.modules
    module = importlib.import_module("fresh_mod_for_hook")
    assert seen == [42] and module.VALUE == 41
    importlib.reload(module)
    assert seen == [42]  # once only
    after_import("fresh_mod_for_hook", lambda: seen.append(0))  # already imported: at once
    assert seen == [42, 0]
    monkeypatch.delitem(sys.modules, "fresh_mod_for_hook")


def test_a_failing_callback_is_logged_and_the_import_still_works(tmp_path, monkeypatch, caplog):
    monkeypatch.syspath_prepend(str(tmp_path))
    _write_module(tmp_path, "other_mod_for_hook")

    def broken() -> None:
        raise RuntimeError("config dir missing")

    after_import("other_mod_for_hook", broken)
    with caplog.at_level(logging.WARNING):
        assert importlib.import_module("other_mod_for_hook").VALUE == 41
    assert "could not hook into other_mod_for_hook" in caplog.text and "config dir missing" in caplog.text
    monkeypatch.delitem(sys.modules, "other_mod_for_hook")


def test_import_unireplknet_leaves_open_clip_unimported_until_the_user_imports_it():
    pytest.importorskip("open_clip")
    code = ("import sys, unireplknet; assert 'open_clip' not in sys.modules; import open_clip; "
            "names = open_clip.list_models(); print(all(f'UniRepLKNet-{s}' in names for s in 'AFPNTSBL'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"
