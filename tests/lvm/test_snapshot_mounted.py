"""A snapshot of a mounted daxfs holds everything stored before the snapshot was asked for,
including what mmap writers and writeback-cache writers left in the kernel's page cache:
the freeze that lvcreate's suspend causes writes that back first, as freeze_super syncs."""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import TOOLS, ok, tool

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None or os.geteuid() != 0,
    reason="real FUSE mounts need /dev/fuse, fusermount3 and root")

# 16 MiB: enough dirty pages that writes syncfs started but did not wait for are still on
# their way when the freeze closes its gate (with syncfs alone this fails every time)
SIZE = 16 << 20

# Stores through a shared mapping and write(2) calls, then waits with everything still open
# and nothing synced: the data is only in the page cache when the snapshot is taken.
WRITER = r"""
import mmap, os, sys
mnt = sys.argv[1]
fd = os.open(os.path.join(mnt, "mapped"), os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(fd, %(size)d)
m = mmap.mmap(fd, %(size)d, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
for i in range(0, %(size)d, 4096):
    m[i:i + 16] = b"mmap page %%06d" %% (i // 4096)
wfd = os.open(os.path.join(mnt, "written"), os.O_WRONLY | os.O_CREAT, 0o644)
for i in range(0, %(size)d, 4096):
    os.write(wfd, (b"write page %%06d" %% (i // 4096)).ljust(4096, b"."))
print("stored", flush=True)
sys.stdin.read()          # hold the mapping and the file open until told to stop
""" % {"size": SIZE}


def expected(kind: str) -> bytes:
    if kind == "mapped":
        out = bytearray(SIZE)
        for i in range(0, SIZE, 4096):
            out[i:i + 16] = b"mmap page %06d" % (i // 4096)
        return bytes(out)
    return b"".join((b"write page %06d" % (i // 4096)).ljust(4096, b".") for i in range(0, SIZE, 4096))


def mounted(mnt) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(mnt) for line in f)


def mount(source, mnt, opts):
    r = subprocess.run([str(TOOLS / "daxfs"), source, str(mnt), "-o", opts],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert mounted(mnt)


def unmount(mnt):
    if mounted(mnt):
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, timeout=60)


@pytest.mark.parametrize("opts", ["dax=always", "dax=never,writeback"])
def test_snapshot_of_a_mounted_volume_holds_what_mmap_and_writeback_writers_stored(pmem, opts):
    ok("lvm", "vgcreate", "-f", "vg0", "/dev/pmem0")
    ok("lvm", "lvcreate", "-L", "64M", "-n", "lv0", "vg0")
    ok("mkfs.daxfs", "/dev/vg0/lv0")
    mnt = Path(tempfile.mkdtemp(prefix="daxfs-o-", dir="/tmp"))
    snapmnt = Path(tempfile.mkdtemp(prefix="daxfs-s-", dir="/tmp"))
    writer = None
    try:
        mount("/dev/vg0/lv0", mnt, opts)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(mnt)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline() == "stored\n"
        r = tool("lvcreate", "-s", "-L", "8M", "-n", "snap0", "vg0/lv0")
        assert (r.returncode, r.stdout, r.stderr) == (0, '  Logical volume "snap0" created.\n', "")
        mount("/dev/vg0/snap0", snapmnt, "ro")
        for kind in ("mapped", "written"):
            assert (snapmnt / kind).read_bytes() == expected(kind), kind
    finally:
        if writer is not None:
            writer.stdin.close()
            writer.wait(timeout=60)
        unmount(snapmnt)
        unmount(mnt)
        os.rmdir(snapmnt)
        os.rmdir(mnt)
