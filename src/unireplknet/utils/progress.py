"""Progress of long work: a tqdm bar on a terminal; elsewhere (log files, CI) a log line every ~10% of the way
with the rate and the time left, so a log never fills with carriage-return fragments."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("unireplknet.progress")


class Progress:
    """``update(n)`` / ``set_postfix(**values)`` / ``close()`` over ``total`` steps; ``enabled=False``: silent."""

    def __init__(self, total: int, desc: str, enabled: bool = True, unit: str = "step") -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled = enabled and total > 0
        self.done, self.postfix = 0, ""
        self.start = time.perf_counter()
        self._next_log = max(1, total // 10)
        self._bar: Any = None
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False, unit=unit)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and (self.done >= self._next_log or self.done == self.total):
            self._next_log = self.done + max(1, self.total // 10)
            elapsed = time.perf_counter() - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            left = (self.total - self.done) / rate if rate > 0 else float("nan")
            log.info("%s: %d/%d %ss (%.2f/s, %.0f s left)%s", self.desc, self.done, self.total, self.unit, rate,
                     left, f"  {self.postfix}" if self.postfix else "")

    def set_postfix(self, **values: str) -> None:
        self.postfix = "  ".join(f"{k} {v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(values)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
