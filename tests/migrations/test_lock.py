"""The state folder's lock: exclusive while held, visible to a read-only probe, released on exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from csr_vdb.errors import MigrationError
from csr_vdb.migrations.lock import LOCK_FILE, is_locked, plan_lock


def test_lock_is_exclusive_and_released(tmp_path):
    assert not is_locked(tmp_path) and not (tmp_path / LOCK_FILE).exists()
    with plan_lock(tmp_path):
        assert is_locked(tmp_path)
        with pytest.raises(MigrationError, match="another process is running this migration"):
            with plan_lock(tmp_path):
                pass
    assert not is_locked(tmp_path)
    with plan_lock(tmp_path):  # taken again after the release
        pass


def test_lock_held_by_another_process(tmp_path):
    code = (
        "import sys, time; from pathlib import Path; from csr_vdb.migrations.lock import plan_lock\n"
        "with plan_lock(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.readline()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert is_locked(tmp_path)
        with pytest.raises(MigrationError):
            with plan_lock(tmp_path):
                pass
    finally:
        proc.communicate("\n", timeout=30)
    assert proc.returncode == 0 and not is_locked(tmp_path)
