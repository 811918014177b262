"""Atomic artifact writes: write to a temporary name in the same folder, fsync, then rename.

A killed process leaves either the old file or the new one, never a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from esvit.errors import WriteError

__all__ = ["WriteError", "atomic_path", "atomic_write_bytes", "atomic_write_json", "atomic_write_text"]


_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _no_room(folder: Path, tmp: Path, exc: BaseException) -> str | None:
    """Why a write in ``folder`` failed for lack of room, or None: the error's own errno (disk full, quota,
    file too large); for torch.save's errors, which carry none, the file-size limit (``ulimit -f``) reached,
    (almost) no free space, or a probe write that fails with one of those errnos (a quota)."""
    import resource
    import shutil

    code = getattr(exc, "errno", None)
    if code is not None:
        return (
            f"{os.strerror(code).lower()} ({shutil.disk_usage(folder).free / 1e6:.1f} MB free there)"
            if code in _NO_ROOM
            else None
        )
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and tmp.exists() and tmp.stat().st_size >= limit - 65536:
        return f"the file-size limit of this process is reached ({limit:,} bytes, `ulimit -f`)"
    free = shutil.disk_usage(folder).free
    if free < 64 << 20:
        return f"the disk is full ({free / 1e6:.1f} MB free on the file system of {folder})"
    probe = folder / f".probe{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * (1 << 20))
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        return f"{os.strerror(err.errno).lower()} on the file system of {folder}" if err.errno in _NO_ROOM else None
    finally:
        probe.unlink(missing_ok=True)
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error remove it (so the
    file already at ``path``, if any, is untouched). A write that fails for lack of room raises
    :class:`WriteError` saying so (torch.save reports a full disk as "unexpected pos" or a failed write)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        why = _no_room(path.parent, tmp, exc)
        if why is None:
            raise
        raise WriteError(
            f"cannot write {path}: {why}. Nothing else was touched; make room (or point the output elsewhere) and rerun"
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
