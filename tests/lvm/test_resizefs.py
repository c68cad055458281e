"""lvextend/lvresize/lvreduce -r (--resizefs, --fs resize): the filesystem is resized with
the LV through daxfs-resize, as lvm2's fsadm step resizes ext4, mounted or not."""
import os
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from tests.helpers import ok, tool, unmount
from tests.lvm.util import state

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0,
    reason="real FUSE mounts need /dev/fuse and root")

MiB = 1 << 20
LV = "/dev/vg0/lv0"


@pytest.fixture
def mnt(pmem):
    d = Path(tempfile.mkdtemp(prefix="lvmnt-", dir="/tmp"))
    yield d
    if os.path.ismount(d):
        unmount(d, lazy=True)
    os.rmdir(d)


@pytest.fixture
def lv0(pmem):
    ok("vgcreate", "vg0", "/dev/pmem0")
    ok("lvcreate", "-L", "64M", "-n", "lv0", "vg0")
    ok("mkfs.daxfs", LV)


def mount(mnt):
    r = tool("daxfs", LV, mnt)
    assert r.returncode == 0, r.stderr


def fsck_clean():
    r = tool("fsck.daxfs", "-n", LV)
    assert r.returncode == 0, r.stdout + r.stderr


def content(i: int) -> bytes:
    return (f"file {i} ".encode() * 4000)[:30000]


def test_lvextend_r_grows_a_mounted_busy_daxfs(lv0, mnt):
    mount(mnt)
    stop, n, errors = threading.Event(), [0], []

    def writer():
        try:
            while not stop.is_set():
                (mnt / f"w{n[0]}").write_bytes(content(n[0]))
                n[0] += 1
        except OSError as e:
            errors.append(e)
    t = threading.Thread(target=writer)
    t.start()
    try:
        r = tool("lvextend", "-r", "-L", "+64M", "vg0/lv0")
    finally:
        stop.set()
        t.join(60)
    assert not errors
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "  Size of logical volume vg0/lv0 changed from 64.00 MiB (16 extents) to 128.00 MiB (32 extents).\n"
        f"  File system daxfs found on vg0/lv0 mounted at {mnt}.\n"
        "  Extending file system daxfs to 128.00 MiB (134217728 bytes) on vg0/lv0...\n"
        f"Filesystem at {LV} is mounted on {mnt}; on-line resizing required\n"
        f"The filesystem on {LV} is now 32768 (4k) blocks long.\n"
        "  Extended file system daxfs on vg0/lv0.\n"
        "  Logical volume vg0/lv0 successfully resized.\n")
    df = subprocess.run(["df", "-B1M", "--output=size", str(mnt)], capture_output=True,
                        text=True, check=True).stdout.split()
    assert df[-1] == "128"
    for i in range(n[0]):
        assert (mnt / f"w{i}").read_bytes() == content(i), i
    # the new space holds data: more than the old filesystem could (the writer's files go
    # first: on a slow machine it wrote more of them while lvextend ran)
    for i in range(n[0]):
        (mnt / f"w{i}").unlink()
    big = os.urandom(90 * MiB)
    (mnt / "big").write_bytes(big)
    assert (mnt / "big").read_bytes() == big
    unmount(mnt)
    fsck_clean()


def test_lvresize_r_grows_an_unmounted_daxfs_and_lvreduce_r_shrinks_it(lv0, mnt):
    mount(mnt)
    (mnt / "keep").write_bytes(content(7))
    unmount(mnt)
    r = tool("lvresize", "--resizefs", "-L", "96M", "vg0/lv0")
    assert r.returncode == 0, r.stderr
    assert "  Extended file system daxfs on vg0/lv0.\n" in r.stdout
    fsck_clean()
    r = tool("lvreduce", "-r", "-L", "32M", "vg0/lv0", input="y\n")
    assert r.returncode == 0, r.stderr
    assert r.stderr == "Continue with daxfs file system reduce steps: fsck, daxfs-resize? [y/n]:"
    assert r.stdout == (
        "  File system daxfs found on vg0/lv0.\n"
        "  File system size (96.00 MiB) is larger than the requested size (32.00 MiB).\n"
        "  File system reduce is required using daxfs-resize.\n"
        "  File system fsck will be run before reduce.\n"
        "  Reducing file system daxfs to 32.00 MiB (33554432 bytes) on vg0/lv0...\n"
        f"fsck.daxfs {LV}\n"
        f"{LV}: clean\n"
        "fsck.daxfs done\n"
        f"daxfs-resize {LV} 32768k\n"
        f"Resizing the filesystem on {LV} to 8192 (4k) blocks.\n"
        f"The filesystem on {LV} is now 8192 (4k) blocks long.\n"
        "daxfs-resize done\n"
        "  Reduced file system daxfs on vg0/lv0.\n"
        "  Size of logical volume vg0/lv0 changed from 96.00 MiB (24 extents) to 32.00 MiB (8 extents).\n"
        "  Logical volume vg0/lv0 successfully resized.\n")
    assert ok("lvs", "--noheadings", "--nosuffix", "--units", "m", "-o", "lv_size",
              "vg0/lv0").strip() == "32.00"
    fsck_clean()
    mount(mnt)
    assert (mnt / "keep").read_bytes() == content(7)
    unmount(mnt)


def test_lvreduce_r_refuses_when_the_filesystem_cannot_shrink(lv0, mnt):
    mount(mnt)
    (mnt / "big").write_bytes(os.urandom(40 * MiB))
    unmount(mnt)
    before = state()
    r = tool("lvreduce", "-y", "-r", "-L", "16M", "vg0/lv0")
    assert r.returncode == 5
    assert r.stderr.startswith(f"daxfs-resize: {LV}: cannot shrink to 4096 blocks: ")
    assert r.stderr.endswith("\n  File system reduce error: vg0/lv0 was not reduced.\n")
    assert "daxfs-resize failed\n" in r.stdout
    assert state() == before
    fsck_clean()


def test_lvreduce_r_unmounts_checks_shrinks_and_mounts_again(lv0, mnt):
    """As lvm2 2.03 does for a mounted ext4: unmount, fsck, shrink, mount again where it
    was with the options it had (here its DAX mode), then shrink the LV."""
    r = tool("daxfs", LV, mnt, "-o", "dax=always")
    assert r.returncode == 0, r.stderr
    (mnt / "keep").write_bytes(content(3))
    r = tool("lvreduce", "-y", "-r", "-L", "32M", "vg0/lv0")
    assert r.returncode == 0, r.stderr
    out = r.stdout.replace(str(mnt), "MNT")
    assert out.startswith(
        "  File system daxfs found on vg0/lv0 mounted at MNT.\n"
        "  File system size (64.00 MiB) is larger than the requested size (32.00 MiB).\n"
        "  File system reduce is required using daxfs-resize.\n"
        "  File system unmount is needed for reduce.\n"
        "  File system fsck will be run before reduce.\n"
        "  Reducing file system daxfs to 32.00 MiB (33554432 bytes) on vg0/lv0...\n"
        "unmount MNT\nunmount done\n"
        f"fsck.daxfs {LV}\n{LV}: clean\nfsck.daxfs done\n"
        f"daxfs-resize {LV} 32768k\n")
    assert out.endswith(
        "daxfs-resize done\n"
        f"remount {LV} MNT\nremount done\n"
        "  Reduced file system daxfs on vg0/lv0.\n"
        "  Size of logical volume vg0/lv0 changed from 64.00 MiB (16 extents) to 32.00 MiB (8 extents).\n"
        "  Logical volume vg0/lv0 successfully resized.\n")
    assert os.path.ismount(mnt)
    assert (mnt / "keep").read_bytes() == content(3)
    assert os.getxattr(mnt / "keep", "user.daxfs.dax_effective") == b"1"
    assert os.statvfs(mnt).f_blocks * os.statvfs(mnt).f_frsize == 32 * MiB
    unmount(mnt)
    fsck_clean()


def test_lvreduce_r_of_a_busy_or_unconfirmed_mount_changes_nothing(lv0, mnt):
    mount(mnt)
    before = state()
    r = tool("lvreduce", "-r", "-L", "32M", "vg0/lv0")       # no -y, no answer
    assert r.returncode == 5
    assert r.stderr.endswith("unmount, fsck, daxfs-resize? [y/n]:[n]\n"
                             "  File system not reduced.\n")
    with open(mnt / "held", "w"):                            # a file open: umount is refused
        r = tool("lvreduce", "-y", "-r", "-L", "32M", "vg0/lv0")
    assert r.returncode == 5
    assert "unmount failed\n" in r.stdout
    assert r.stderr.endswith(f"  Failed to unmount {mnt}.\n"
                             "  File system reduce error: vg0/lv0 was not reduced.\n")
    assert state() == before and os.path.ismount(mnt)
    unmount(mnt)
    fsck_clean()


def test_lvextend_r_needs_an_active_lv(lv0):
    ok("lvchange", "-an", "vg0/lv0")
    before = state()
    r = tool("lvextend", "-r", "-L", "+8M", "vg0/lv0")
    assert (r.returncode, r.stderr) == (5, "  File system resize requires active LV vg0/lv0.\n")
    assert state() == before
