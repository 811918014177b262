"""Progress reporting: a tqdm bar on a terminal, a plain line every ``interval`` seconds otherwise (logs)."""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["progress"]


class _Lines:
    """The tqdm subset the stages use (update, set_postfix, close), printing periodic lines to a log."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int, interval: float):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.interval, self.t0, self.last, self.postfix = interval, time.perf_counter(), time.perf_counter(), ""

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self._print(now)

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def _print(self, now: float) -> None:
        rate = self.n / max(now - self.t0, 1e-9)
        of = f"/{self.total}" if self.total else ""
        extra = f" [{self.postfix}]" if self.postfix else ""
        print(f"{self.desc}: {self.n}{of} {self.unit} ({rate:.1f} {self.unit}/s){extra}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._print(time.perf_counter())

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(
    total: int | None, desc: str, unit: str = "it", initial: int = 0, enabled: bool = True, interval: float = 30.0
):
    """A progress reporter: tqdm when stderr is a terminal, periodic log lines when not, nothing if disabled."""
    from tqdm import tqdm

    if not enabled:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, smoothing=0.1)
    return _Lines(total, desc, unit, initial, interval)
