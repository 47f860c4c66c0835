"""An exclusive lock on a folder, held while a process works in it (a run folder during training).

The lock is ``fcntl.flock`` on ``<folder>/.lock``: the kernel releases it when the holder exits in any way,
``kill -9`` included, so a lock left behind never blocks a later run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from unireplknet.errors import UserError

LOCK_NAME = ".lock"


class FolderLock:
    """``acquire()`` takes the lock or raises a UserError naming the process that holds it; ``release()``."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None
        self.created = False

    def acquire(self) -> None:
        self.created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"'{self.path.parent}' is in use by a running job ({holder}); wait for it to end or "
                            "choose another output folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._fd = fd

    def release(self, remove: bool = False) -> None:
        """Release the lock; ``remove`` also deletes the lock file when this process created it."""
        if remove and self._fd is not None and self.created:
            self.path.unlink(missing_ok=True)  # (before unlocking: no other process can hold this file's lock)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None
