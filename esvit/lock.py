"""One process at a time in a run folder, a shard folder or a feature cache.

Two ``esvit pretrain --out R`` at once both used to finish with an interleaved log and a mixed record of
which config ran. :class:`RunLock` holds an exclusive POSIX lock (``fcntl.lockf``; kept by NFS lock daemons
too) on ``<folder>/.lock`` for the work's lifetime; the holder writes who it is (pid, host, Slurm job), so the
second process stops with one line naming it. The kernel drops the lock when the holder dies, however it
dies: nothing is left to clean up.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from esvit.errors import LockError

__all__ = ["LockError", "RunLock", "move_aside"]

log = logging.getLogger("esvit")


class RunLock:
    """``with RunLock(folder, "run folder"):`` — exclusive use of ``folder`` (created if missing); with
    ``folder=False`` of a single file (a feature cache), locked through ``<file>.lock`` beside it."""

    def __init__(self, target: str | os.PathLike, what: str, folder: bool = True):
        target = Path(target)
        self.path = target / ".lock" if folder else target.with_name(target.name + ".lock")
        self.target, self.what, self._fd = target, what, None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 4096).decode(errors="replace")
            if exc.errno not in (errno.EAGAIN, errno.EACCES):  # no locking on this file system (ENOLCK, ENOSYS)
                log.warning("cannot lock %s (%s): going on without the one-process check", self.path, exc.strerror)
                self._fd = fd
                return self
            if _same_slurm_job(holder):  # our own job, requeued after its node died: an NFS lock may outlive it
                log.warning("%s is locked by an earlier attempt of this Slurm job; taking it over", self.path)
                self._fd = fd
                return self
            os.close(fd)
            raise LockError(
                f"{self.what} {str(self.target)!r} is in use by {_describe(holder)}; wait for it to finish or "
                "stop it (a crashed holder releases the lock by itself)"
            ) from None
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the file stays (removing it would race a new holder)
            self._fd = None


def _same_slurm_job(holder: str) -> bool:
    job = os.environ.get("SLURM_JOB_ID")
    try:
        return bool(job) and json.loads(holder).get("slurm_job") == job
    except ValueError:
        return False


def _describe(holder: str) -> str:
    try:
        h = json.loads(holder)
    except ValueError:
        return "another process"
    job = f", Slurm job {h['slurm_job']}" if h.get("slurm_job") else ""
    return f"pid {h.get('pid')} on {h.get('host')}{job} (since {h.get('since')})"


def move_aside(folder: str | Path, what: str = "run folder") -> Path | None:
    """Rename ``folder`` to ``<name>.old-<date-time>`` beside it, refused (:class:`LockError`) while a process
    holds it; returns the new name, or None when there is no folder."""
    folder = Path(folder)
    if not folder.exists():
        return None
    with RunLock(folder, what):  # nobody is working in it
        pass
    old = folder.with_name(f"{folder.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    folder.rename(old)
    return old
