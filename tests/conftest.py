"""Fixtures shared by every test layer: a private dmemud state directory per test.

Every test gets its own DMEMU_ROOT under /tmp (short, since a unix socket path is limited
to 107 bytes), so daemons never meet and nothing touches the machine's own state directory.
The daemon a test started is stopped at teardown (and killed by its pid if it would not
stop). A traceback in the log of a dmemud or of a daxfs mount the test started is a bug
even when the test itself passed, so it fails the test; a test that provokes one on
purpose says so with ``@pytest.mark.daemon_traceback_expected``.
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


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "daemon_traceback_expected: the test makes a daemon log a traceback on purpose")


def daemon_logs(root: Path) -> list[Path]:
    """The logs a test's daemons write: dmemud's and one per daxfs mount."""
    return [p for p in [root / "dmemud.log", *sorted(root.glob("log/*.log*"))] if p.is_file()]


def tracebacks(root: Path) -> list[str]:
    """Each log that holds a traceback, with its text, for the failure message."""
    found = []
    for log in daemon_logs(root):
        text = log.read_text(errors="replace")
        if "Traceback (most recent call last)" in text:
            found.append(f"--- {log.name} ---\n{text[-6000:]}")
    return found


@pytest.fixture(autouse=True)
def dmemu_root(monkeypatch, request):
    root = Path(tempfile.mkdtemp(prefix="dmemu-", dir="/tmp"))
    monkeypatch.setenv("DMEMU_ROOT", str(root))
    monkeypatch.setenv("DMEMU_REVOKE_TIMEOUT", "5")
    try:
        yield root
    finally:
        try:
            stop_daemon(root)
        finally:
            found = tracebacks(root)
            shutil.rmtree(root, ignore_errors=True)
        if found and request.node.get_closest_marker("daemon_traceback_expected") is None:
            pytest.fail("a daemon logged a traceback during this test:\n" + "\n".join(found),
                        pytrace=False)
