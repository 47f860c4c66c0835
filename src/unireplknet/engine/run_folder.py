"""The run folder: claimed (locked) for one run at a time, checked before any work, logged into, and left clean
when a run fails before its first checkpoint.

Files (rank 0 writes them)::

    config.json  metrics.jsonl  train.log  last.pt  best.pt  deploy.pt  model.onnx  summary.json
    report/{loss,<metric>,...}.png  report/report.md  [tensorboard/]
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from unireplknet.engine import distributed as D
from unireplknet.errors import UserError
from unireplknet.utils.atomic import write_error
from unireplknet.utils.lock import FolderLock

RUN_FILES = ("config.json", "metrics.jsonl", "train.log", "last.pt", "best.pt", "deploy.pt", "model.onnx",
             "summary.json", "report", "tensorboard", "image_label_backbone.pt")


class RunFolder:
    """``open()`` claims the folder for this run (every rank raises the same UserError when it cannot);
    ``close(failed)`` releases it, removing what a run that failed before its first checkpoint created."""

    def __init__(self, path: str | None, is_main: bool) -> None:
        self.path = Path(path or D.broadcast_object(time.strftime("runs/train-%Y%m%d-%H%M%S")))
        self.is_main = is_main
        self.lock = FolderLock(self.path)
        self.created = self.claimed = False
        self.log_handler: logging.Handler | None = None

    def file(self, name: str) -> Path:
        return self.path / name

    def open(self, resume: bool, overwrite: bool) -> None:
        error = None
        if self.is_main:
            try:
                self._claim(resume, overwrite)
            except UserError as err:
                error = str(err)
        error = D.broadcast_object(error)
        if error is not None:
            raise UserError(error)
        if self.is_main:
            self.log_handler = logging.FileHandler(self.file("train.log"))
            self.log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root = logging.getLogger("unireplknet")
            root.addHandler(self.log_handler)
            if root.getEffectiveLevel() > logging.INFO:
                root.setLevel(logging.INFO)

    def _claim(self, resume: bool, overwrite: bool) -> None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise UserError(f"output '{path}' is a file, not a folder; choose a folder for the run")
        self.created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        except OSError as err:
            raise write_error(path, err) from None
        ours = [name for name in RUN_FILES if (path / name).exists()]
        if not resume and ours:
            if not overwrite:
                self.lock.release(remove=True)
                what = "a run (last.pt)" if "last.pt" in ours else f"files a run would overwrite ({', '.join(ours)})"
                raise UserError(f"'{path}' already holds {what}; resume it (--resume), overwrite it (--overwrite) "
                                "or choose another output folder")
            for name in ours:
                target = path / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        for stale in path.glob(".*.tmp"):  # temp files of writes killed mid-way (this folder is ours now)
            stale.unlink(missing_ok=True)
        self.claimed = True

    def close(self, failed: bool) -> None:
        if self.log_handler is not None:
            logging.getLogger("unireplknet").removeHandler(self.log_handler)
            self.log_handler.close()
            self.log_handler = None
        if self.claimed and failed and not self.file("last.pt").exists():  # nothing resumable: leave no litter
            for name in ("train.log", "config.json", "metrics.jsonl", "image_label_backbone.pt"):
                self.file(name).unlink(missing_ok=True)
            self.lock.release(remove=True)
            if self.created and not any(self.path.iterdir()):
                self.path.rmdir()
        self.lock.release()
