"""Tasks: what each modality supplies to the one training engine (see :mod:`unireplknet.tasks.base`).

``get_task(name)`` returns a task instance; ``TASKS`` maps names to ``"module:Class"`` so that a task's
dependencies are imported only when it is used. Other modalities register here.
"""

from __future__ import annotations

import importlib

from unireplknet.errors import UserError
from unireplknet.tasks.base import Task, TaskData

TASKS: dict[str, str] = {
    "classification": "unireplknet.tasks.classification:ClassificationTask",
    "audio": "unireplknet.tasks.audio:AudioTask",
    "forecast": "unireplknet.tasks.forecast:ForecastTask",
    "pointcloud": "unireplknet.tasks.pointcloud:PointCloudTask",
    "video": "unireplknet.tasks.video:VideoTask",
}


def available_tasks() -> list[str]:
    return list(TASKS)


def get_task(name: str | None) -> Task:
    """The task called ``name`` (``None``: classification); an unknown name is a ``UserError``."""
    name = name or "classification"
    if name not in TASKS:
        raise UserError(f"unknown task '{name}'; choose one of: {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["TASKS", "Task", "TaskData", "available_tasks", "get_task"]
