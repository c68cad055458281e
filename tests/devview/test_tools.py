"""Real block devices and the command itself: losetup + mkfs.ext4 + mount, start and stop."""
import os
import shutil
import subprocess
import tempfile

import pytest

from tests.devview.viewhelp import device_bytes, wait_for
from tests.helpers import TOOLS, ok, tool

MiB = 1 << 20


def _loop_reason() -> str | None:
    if os.geteuid() != 0:
        return "NOT ROOT: losetup and mount need root"
    if not os.path.exists("/dev/loop-control"):
        return "NO LOOP DEVICES HERE (/dev/loop-control is absent)"
    for tool_name in ("losetup", "mkfs.ext4", "mount", "umount"):
        if not shutil.which(tool_name):
            return f"{tool_name.upper()} IS NOT INSTALLED"
    r = subprocess.run(["losetup", "-f"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"NO FREE LOOP DEVICE: {r.stderr.strip()}"
    return None


def test_losetup_gives_a_real_block_device_for_mkfs_and_mount(view):
    reason = _loop_reason()
    if reason:
        pytest.skip(reason)
    ok("ndctl", "create-namespace", "-s", "32M")
    ok("dmsetup", "create", "lin", "--table", f"0 {24 * 2048} linear pmem0 2048")
    loop = mnt = None
    try:
        r = subprocess.run(["losetup", "-f", "--show", str(view / "mapper/lin")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        loop = r.stdout.strip()
        assert subprocess.run(["blockdev", "--getsize64", loop], capture_output=True,
                              text=True).stdout == f"{24 * MiB}\n"
        # nodiscard: the view has no fallocate, so discards through the loop device would fail.
        r = subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", loop], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        mnt = tempfile.mkdtemp(prefix="dv-mnt-")
        r = subprocess.run(["mount", loop, mnt], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        with open(os.path.join(mnt, "hello"), "wb") as f:
            f.write(b"through ext4, loop, FUSE, dmemud and dm-linear\n" * 1000)
            f.flush()
            os.fsync(f.fileno())
        assert subprocess.run(["umount", mnt], capture_output=True).returncode == 0
        r = subprocess.run(["mount", "-o", "ro", loop, mnt], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        with open(os.path.join(mnt, "hello"), "rb") as f:
            assert f.read() == b"through ext4, loop, FUSE, dmemud and dm-linear\n" * 1000
        assert subprocess.run(["umount", mnt], capture_output=True).returncode == 0
        r = subprocess.run(["fsck.ext4", "-n", "-f", loop], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        if mnt:
            subprocess.run(["umount", mnt], capture_output=True)
            os.rmdir(mnt)
        if loop:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
    # The ext4 superblock magic (0xEF53 at byte 1080) landed on pmem0, 1 MiB in.
    assert device_bytes("pmem0", MiB + 1024, 512)[56:58] == b"\x53\xef"


def test_second_start_and_bad_stop_are_one_line_errors(view):
    r = tool("dmemu-devview")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("dmemu-devview: ") and "already mounted there" in r.stderr
    r = tool("dmemu-devview", "--stop", "--mountpoint", str(view.parent / "elsewhere"))
    assert (r.returncode, r.stderr) == (1, f"dmemu-devview: no device view is mounted at {view.parent / 'elsewhere'}\n")
    r = tool("dmemu-devview", "--bogus")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--help" in r.stderr


def test_stop_refuses_while_files_are_open_and_another_mountpoint_works(view, tmp_path):
    ok("ndctl", "create-namespace", "-s", "4M")
    fd = os.open(view / "pmem0", os.O_RDONLY)
    try:
        r = tool("dmemu-devview", "--stop")
        assert r.returncode == 1 and "is busy" in r.stderr and r.stderr.count("\n") == 1
        assert os.pread(fd, 4, 0) == bytes(4)          # still served
    finally:
        os.close(fd)
    other = tmp_path / "devs"
    assert tool("dmemu-devview", "-m", str(other)).returncode == 0
    try:
        assert os.listdir(other) == os.listdir(view)
    finally:
        r = tool("dmemu-devview", "--stop", "-m", str(other))
        assert r.returncode == 0, r.stderr
    assert not os.path.ismount(other)


def test_foreground_view_serves_until_stopped(dmemu_root, tmp_path):
    ok("ndctl", "create-namespace", "-s", "4M")
    mp = tmp_path / "fg"
    proc = subprocess.Popen([str(TOOLS / "dmemu-devview"), "-f", "-m", str(mp)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: os.path.ismount(mp) or proc.poll() is not None, what="the mount")
        assert proc.poll() is None, proc.stderr.read()
        assert sorted(os.listdir(mp)) == ["mapper", "pmem0"]
        r = tool("dmemu-devview", "--stop", "-m", str(mp))
        assert r.returncode == 0, r.stderr
        assert proc.wait(timeout=30) == 0
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
    assert not os.path.ismount(mp)


def test_the_view_unmounts_itself_when_dmemud_stops(view):
    ok("ndctl", "create-namespace", "-s", "4M")
    assert os.path.exists(view / "pmem0")
    ok("dmemud", "stop")
    wait_for(lambda: not os.path.ismount(view), what="the view to unmount itself")
    r = tool("dmemu-devview", "--stop")
    assert (r.returncode, r.stderr) == (1, f"dmemu-devview: no device view is mounted at {view}\n")


def test_dmemud_starts_the_view_when_asked_and_it_ends_with_dmemud(dmemu_root, monkeypatch):
    monkeypatch.setenv("DMEMU_DEVVIEW", "1")
    mp = dmemu_root / "dev"
    try:
        ok("ndctl", "create-namespace", "-s", "4M")          # starts dmemud, which starts the view
        assert os.path.ismount(mp) and sorted(os.listdir(mp)) == ["mapper", "pmem0"]
        ok("dmemud", "stop")
        wait_for(lambda: not os.path.ismount(mp), what="the view to end with dmemud")
    finally:
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)


def test_a_mount_point_under_a_missing_directory_is_refused_and_nothing_is_made(tmp_path):
    where = tmp_path / "missing" / "dev"
    r = tool("dmemu-devview", "-m", str(where))
    assert (r.returncode, r.stderr) == (1, f"dmemu-devview: {where}: its parent directory does "
                                           "not exist; create it first or name another mount point\n")
    assert not (tmp_path / "missing").exists()
