"""A mount whose dmemud is killed goes on once dmemud is back, on the same device."""
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.daxfs.test_dax import fresh, mnts, mount, umount  # noqa: F401 (mnts: a fixture)
from scripts.fuzzing.common import alive
from tests.helpers import ok, tool


def _kill_daemon(root: Path) -> None:
    pid = int((root / "dmemud.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    for _ in range(500):
        if not alive(pid):      # gone, or a zombie its parent has not reaped yet
            return
        time.sleep(0.01)
    raise AssertionError("dmemud did not die")


def test_a_mount_survives_a_dmemud_restart(mnts, dmemu_root):
    mnt = mount(fresh(), mnts())
    Path(mnt, "a").write_text("before\n")
    subprocess.run(["sync", "-f", f"{mnt}/a"], check=True)
    _kill_daemon(dmemu_root)
    # The next I/O that needs the device brings dmemud back and reattaches.
    Path(mnt, "b").write_text("after\n")
    subprocess.run(["sync", "-f", f"{mnt}/b"], check=True)
    assert Path(mnt, "a").read_text() == "before\n"
    umount(mnt)
    # The daemon lets the device go once it has committed and exited.
    for _ in range(600):
        if tool("fsck.daxfs", "-n", "/dev/pmem0").returncode == 0:
            break
        time.sleep(0.1)
    assert tool("fsck.daxfs", "-n", "/dev/pmem0").returncode == 0
    mnt2 = mount("/dev/pmem0", mnts())
    assert Path(mnt2, "b").read_text() == "after\n" and Path(mnt2, "a").read_text() == "before\n"
    umount(mnt2)
