"""Folder locks between processes, and moving a run folder aside only when nobody works in it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from esvit.errors import LockError
from esvit.lock import move_aside
from tests.conftest import env_with_python

HOLD = """
import sys, time
from esvit.lock import RunLock
with RunLock(sys.argv[1], "run folder"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_move_aside_refuses_a_held_folder_then_renames_it_beside_itself(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pth").write_bytes(b"weights")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=env_with_python()
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockError, match="run folder"):
            move_aside(run)
        assert (run / "checkpoint.pth").is_file()  # untouched
    finally:
        holder.kill()
        holder.wait()
    old = move_aside(run)
    assert old is not None and old.parent == tmp_path and old.name.startswith("run.old-")
    assert (old / "checkpoint.pth").read_bytes() == b"weights" and not run.exists()
    assert move_aside(tmp_path / "never") is None
