"""Atomic file writes: the bytes go to a hidden temp file in the target's folder, which becomes the target by one
rename only when complete, so a crash leaves the previous file (or none), never a torn one. A temp file left by a
process that was killed (``kill -9`` cannot be caught) is removed by the next write to the same target."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from unireplknet.errors import WriteError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_error(path: str | os.PathLike, err: OSError) -> WriteError:
    """A one-line error for an ``OSError`` met while writing ``path`` (full disk, no permission, not a folder)."""
    reason = err.strerror or type(err).__name__
    hint = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some disk space",
            errno.EACCES: "choose a folder you can write to", errno.EROFS: "choose a writable folder",
            errno.ENOTDIR: "a parent of it is a file, not a folder",
            errno.EEXIST: "a parent of it is a file, not a folder"}.get(err.errno, "check the output path")
    return WriteError(f"cannot write '{path}' ({reason}): {hint}; any earlier version of it is kept")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: Path) -> None:
    """Remove temp files of ``path`` left by writers that no longer run (named ``.<name>.<pid>.<random>.tmp``)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces ``path`` when the block ends without an exception.

    Raises :class:`~unireplknet.errors.WriteError` (a one-line user error) when the folder cannot be written.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> the usual permissions
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise write_error(path, err) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    import torch

    with atomic_file(path) as f:
        torch.save(obj, f)
    return Path(path)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically."""
    with atomic_file(path) as f:
        f.write(text.encode())
    return Path(path)
