"""Fixtures shared by every test layer: a private dmemud state directory per test.

Each test gets its own DMEMU_ROOT under /tmp (short, since a unix socket path is limited
to 107 bytes), so daemons never meet; the daemon a test started is stopped at teardown,
and killed by its pid if it would not stop.
"""
import shutil
import tempfile
from pathlib import Path

import pytest

# The code under test, imported before pytest's importlib mode registers the test packages
# tests/daxfs and tests/dmemu under the same names: otherwise ``daxfs.x`` resolves through
# the editable install, i.e. the checkout that ran ``pip install -e``, not this one.
import daxfs  # noqa: F401
import dmemu  # noqa: F401
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
