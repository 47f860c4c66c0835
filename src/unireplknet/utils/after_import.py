"""Run a function right after a module is first imported (at once if it already is), so that an optional
integration (e.g. registering model configs with open_clip) costs nothing until the user imports that module."""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)


class _AfterImport(importlib.abc.MetaPathFinder):
    """A meta-path finder that wraps one module's loader so ``callback`` runs after the module has executed."""

    def __init__(self, name: str, callback: Callable[[], Any]) -> None:
        self.name, self.callback = name, callback

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once only; the real finders locate the module
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_call(module: ModuleType) -> None:
            exec_module(module)
            _call(self.callback, fullname)

        spec.loader.exec_module = exec_then_call  # type: ignore[method-assign]
        return spec


def _call(callback: Callable[[], Any], name: str) -> None:
    try:
        callback()
    except Exception as err:  # an optional integration must never break the user's import
        log.warning("could not hook into %s (%s: %s)", name, type(err).__name__, err)


def after_import(name: str, callback: Callable[[], Any]) -> None:
    """Call ``callback()`` once ``name`` (a top-level module) is imported: now if it is already in
    ``sys.modules``, else right after its first import. Errors in the callback are logged, not raised."""
    if name in sys.modules:
        _call(callback, name)
    else:
        sys.meta_path.insert(0, _AfterImport(name, callback))
