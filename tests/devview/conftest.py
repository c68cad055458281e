"""A device view mounted over each test's private dmemud, always unmounted at teardown."""
import os
import shutil
import signal
import subprocess
import pytest

from tests.devview.viewhelp import wait_for
from tests.helpers import tool

if not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"):
    pytest.skip("FUSE IS NOT AVAILABLE HERE (/dev/fuse or fusermount3 missing): "
                "the device view tests need real mounts", allow_module_level=True)


def _view_pid(root) -> int | None:
    for rec in (root / "devview").glob("*.pid") if (root / "devview").exists() else []:
        try:
            return int(rec.read_text().split("\n")[0])
        except ValueError:
            pass
    return None


@pytest.fixture
def view(dmemu_root):
    """The mountpoint of a running device view ($DMEMU_ROOT/dev)."""
    mp = dmemu_root / "dev"
    r = tool("dmemu-devview")
    assert r.returncode == 0, r.stderr
    assert os.path.ismount(mp)
    pid = _view_pid(dmemu_root)
    yield mp
    r = tool("dmemu-devview", "--stop")
    stopped_before = "no device view is mounted" in r.stderr      # a test stopped it itself
    if os.path.ismount(mp) or (r.returncode != 0 and not stopped_before):
        # Leave nothing behind, then say the stop was broken.
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail(f"dmemu-devview --stop left the view mounted: {r.stderr}")
    if pid:
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="the view process to end")
    log = dmemu_root / "devview.log"
    if log.exists() and "Traceback" in log.read_text():
        pytest.fail("the device view logged a traceback:\n" + log.read_text())
