"""Fixtures shared by every test layer: a private dmemud state directory per test.

Each test gets its own DMEMU_ROOT under /tmp (short, since a unix socket path is limited
to 107 bytes), so daemons never meet; the daemon a test started is stopped at teardown,
and killed by its pid if it would not stop.
"""
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# The packages under test are this checkout's. The shared venv holds an editable install of
# one checkout, and tests/daxfs would otherwise stand in for the package of the same name,
# so daxfs.* would come from whichever checkout the venv was installed from: import the
# real ones from here first.
_TOP = str(Path(__file__).resolve().parents[1])
if sys.path[0] != _TOP:
    sys.path.insert(0, _TOP)
import daxfs  # noqa: E402,F401
import dmemu  # noqa: E402,F401

from tests.helpers import stop_daemon

@pytest.fixture
def dmemu_root(monkeypatch):
    root = Path(tempfile.mkdtemp(prefix="dmemu-", dir="/tmp"))
    monkeypatch.setenv("DMEMU_ROOT", str(root))
    monkeypatch.setenv("DMEMU_REVOKE_TIMEOUT", "5")
    yield root
    stop_daemon(root)
    log = root / "dmemud.log"
    if log.exists() and "Traceback" in log.read_text():
        # A traceback in the daemon is a bug even if the test passed: show it.
        print(log.read_text())
    shutil.rmtree(root, ignore_errors=True)
