"""log-writes and replay-log: every write recorded in order, replay to any flush, FUA or mark."""
import pytest

from tests.helpers import TOOLS, ok, tool


@pytest.fixture
def logged(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "64M")
    ok("dmemu", "disk", "create", "-s", "16M")
    ok("dmsetup", "create", "data", "--table", "0 8192 linear pmem0 0")
    ok("dmsetup", "create", "replay", "--table", "0 8192 linear pmem0 8192")
    ok("dmsetup", "create", "lw", "--table", "0 8192 log-writes data disk0")
    return dmemu_root


def test_writes_flushes_fua_and_marks_are_logged_in_order(logged):
    ok("xfs_io", "-c", "pwrite -S 0x1 0 4k", "-c", "fsync", "/dev/mapper/lw")
    ok("dmsetup", "message", "lw", "0", "mark", "after-first")
    ok("xfs_io", "-c", "pwrite -S 0x2 0 4k", "/dev/mapper/lw")
    assert ok("dmsetup", "status", "lw") == "0 8192 log-writes 4 21\n"
    assert ok("replay-log", "--log", "/dev/disk0") == (
        "0 WRITE sector 0 nr 8\n1 FLUSH sector 0 nr 0\n2 MARK sector 0 nr 0 after-first\n"
        "3 WRITE sector 0 nr 8\n")
    assert ok("replay-log", "--log", "/dev/disk0", "--num-entries") == "4\n"
    assert not ok("dmsetup", "info", "-c", "--noheadings", "lw").split()[3].startswith("x")
    # The device itself has the newest data; a replay to the mark has the older one.
    assert "02 02" in ok("xfs_io", "-c", "pread -v 0 16", "/dev/mapper/data")
    ok("replay-log", "--log", "/dev/disk0", "--replay", "/dev/mapper/replay", "--end-mark", "after-first")
    assert "01 01" in ok("xfs_io", "-c", "pread -v 0 16", "/dev/mapper/replay")


def test_check_runs_at_every_flush_point_and_stops_at_a_failure(logged):
    for i in range(3):
        ok("xfs_io", "-c", f"pwrite -S {i + 1} {i * 4096} 4k", "-c", "fsync", "/dev/mapper/lw")
    out = ok("replay-log", "--log", "/dev/disk0", "--replay", "/dev/mapper/replay", "--check", "flush",
             "--fsck", "true")
    assert out == "checked 3 flush points\n"
    # Replay starts from the device as it is: put back the initial (zeroed) state first.
    ok("xfs_io", "-c", "pwrite -S 0 0 12k", "/dev/mapper/replay")
    # A checker that fails once the second write is there: the first failing point is named.
    probe = f"{TOOLS}/xfs_io -c 'pread -v 4096 1' /dev/mapper/replay | grep -q '^00001000:  00'"
    r = tool("replay-log", "--log", "/dev/disk0", "--replay", "/dev/mapper/replay", "--check", "flush",
             "--fsck", probe)
    assert r.returncode == 1
    assert r.stderr.startswith("check failed after entry 3 (FLUSH)")


def test_log_writes_is_not_dax_and_bad_input_is_refused(logged):
    assert tool("dmsetup", "create", "lw2", "--table", "0 8192 log-writes data").returncode == 1
    r = tool("dmsetup", "message", "lw", "0", "bogus")
    assert (r.returncode, r.stderr.strip()) == (
        1, "dmsetup: message ioctl on lw (253:2) failed: log-writes: Invalid message: use 'mark NAME'")
    r = tool("replay-log", "--log", "/dev/pmem0")
    assert r.returncode == 1 and "not a log-writes log" in r.stderr
    r = tool("replay-log", "--log", "/dev/disk0", "--find", "--end-mark", "nosuch")
    assert r.returncode == 1 and "mark 'nosuch' not found" in r.stderr
