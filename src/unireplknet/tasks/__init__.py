"""Tasks: one file each, implementing the engine's :class:`~unireplknet.engine.task.Task` protocol.

A module ``unireplknet/tasks/<name>.py`` whose task class is decorated with :func:`register_task` is found by
name, imported only when used (so each task's dependencies load with it). Tasks defined elsewhere register the
same way before they are used.
"""

from __future__ import annotations

import importlib
import pkgutil

from unireplknet.engine.task import Task
from unireplknet.errors import UserError

_REGISTERED: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make ``cls`` available as ``get_task(cls.name)``."""
    _REGISTERED[cls.name] = cls
    return cls


def available_tasks() -> list[str]:
    """Names of the tasks in this package and of those registered from elsewhere."""
    here = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted(set(here) | set(_REGISTERED))


def get_task(name: str | None) -> Task:
    """A new instance of the task called ``name`` (None: classification); an unknown name is a UserError."""
    name = name or "classification"
    if name not in _REGISTERED and name in available_tasks():
        importlib.import_module(f"{__name__}.{name}")
    if name not in _REGISTERED:
        raise UserError(f"unknown task '{name}'; choose one of: {', '.join(available_tasks())}")
    return _REGISTERED[name]()


__all__ = ["Task", "available_tasks", "get_task", "register_task"]
