"""DAX semantics on real mounts over dmemud: mount options, the per-inode flag and its
inheritance, the open-file rule, readback, the synchronous mode, durability through
direct_access in adr mode, snapshots of a mounted DAX volume, removal and media errors."""
import contextlib
import errno
import json
import mmap
import os
import subprocess
import tempfile
import threading

import pytest
import trio

from tests.helpers import ok, tool, unmount

EFF = "user.daxfs.dax_effective"
FLAG = "user.daxfs.dax"


@pytest.fixture
def mnts(dmemu_root):
    made = []

    def new():
        d = tempfile.mkdtemp(prefix="daxmnt-", dir="/tmp")
        made.append(d)
        return d
    yield new
    for d in made:
        if os.path.ismount(d):
            unmount(d, lazy=True)
        os.rmdir(d)


def mount(dev, mnt, opts=""):
    args = [dev, mnt] + (["-o", opts] if opts else [])
    r = tool("daxfs", *args)
    assert r.returncode == 0, r.stderr
    return mnt


def umount(mnt):
    unmount(mnt)


def eff(path) -> str:
    return os.getxattr(path, EFF).decode()


def fresh(*ndctl_args, size="64M"):
    ok("ndctl", "create-namespace", "-s", size, *ndctl_args)
    ok("mkfs.daxfs", "-f", "/dev/pmem0")
    return "/dev/pmem0"


def test_mount_options_decide_effective_dax(mnts):
    dev = fresh()
    for opts, want_file, want_flagged in (("", "0", "1"), ("dax=inode", "0", "1"),
                                          ("dax", "1", "1"), ("dax=always", "1", "1"),
                                          ("dax=never", "0", "0")):
        m = mount(dev, mnts(), opts)
        with open(f"{m}/plain", "w") as f:
            f.write("x")
        with open(f"{m}/flagged", "w") as f:
            f.write("x")
        os.setxattr(f"{m}/flagged", FLAG, b"1")
        assert (eff(f"{m}/plain"), eff(f"{m}/flagged")) == (want_file, want_flagged), opts
        assert os.getxattr(m, "user.daxfs.mount_dax").decode() == (opts.partition("=")[2] or
                                                                   ("always" if opts == "dax" else "inode"))
        assert eff(m) == "0"                        # only regular files are ever DAX
        statx = ok("xfs_io", "-c", "statx -r", f"{m}/plain")
        assert f"stat.attributes = 0x{0x200000 if want_file == '1' else 0:x}\n" in statx
        os.unlink(f"{m}/plain")
        os.unlink(f"{m}/flagged")
        umount(m)


def test_dax_always_on_a_non_dax_device_fails_the_mount(mnts):
    ok("dmemu", "disk", "create", "-s", "32M")
    ok("mkfs.daxfs", "/dev/disk0")
    m = mnts()
    r = tool("daxfs", "/dev/disk0", m, "-o", "dax=always")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("daxfs: /dev/disk0: DAX unsupported by block device: dax=always "
                               "needs a DAX-capable device")
    assert not os.path.ismount(m)
    mount("/dev/disk0", m, "dax=inode")           # the flag is still kept there
    open(f"{m}/f", "w").close()
    os.setxattr(f"{m}/f", FLAG, b"1")
    assert (os.getxattr(f"{m}/f", FLAG), eff(f"{m}/f")) == (b"1", "0")


def test_flag_is_inherited_at_creation_only(mnts):
    m = mount(fresh(), mnts())
    os.makedirs(f"{m}/a/b/c")
    ok("xfs_io", "-c", "chattr +x", f"{m}/a")
    os.makedirs(f"{m}/a/b/c/d")
    os.makedirs(f"{m}/a/e")
    open(f"{m}/a/file", "w").close()
    have = {p: ok("xfs_io", "-c", "lsattr -v", f"{m}/{p}").startswith("[dax]")
            for p in ("a", "a/b", "a/b/c", "a/b/c/d", "a/e", "a/file")}
    assert have == {"a": True, "a/b": False, "a/b/c": False, "a/b/c/d": False, "a/e": True,
                    "a/file": True}
    assert eff(f"{m}/a/file") == "1"
    umount(m)
    m = mount("/dev/pmem0", mnts())                 # persistent across mounts
    assert os.getxattr(f"{m}/a/e", FLAG) == b"1"
    assert FLAG not in os.listxattr(f"{m}/a/e")     # served, never listed


def test_flag_change_waits_for_the_last_close(mnts):
    m = mount(fresh(), mnts())
    path = f"{m}/f"
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    assert eff(path) == "0"
    os.setxattr(path, FLAG, b"1")
    assert eff(path) == "0"                         # open: keeps its mode
    os.write(fd, b"still buffered I/O")
    os.close(fd)
    assert eff(path) == "1"                         # last close: the flag takes effect
    fd = os.open(path, os.O_RDWR)
    os.setxattr(path, FLAG, b"0")
    assert eff(path) == "1"
    os.close(fd)
    assert eff(path) == "0"


def test_synchronous_mode_needs_a_dax_file(mnts):
    m = mount(fresh(), mnts())
    open(f"{m}/plain", "w").close()
    with pytest.raises(OSError) as e:
        os.setxattr(f"{m}/plain", "user.daxfs.sync", b"1")
    assert e.value.errno == errno.EOPNOTSUPP
    r = tool("xfs_io", "-c", "syncmode on", f"{m}/plain")
    assert r.returncode == 1 and "Operation not supported" in r.stderr
    open(f"{m}/dax", "w").close()
    os.setxattr(f"{m}/dax", FLAG, b"1")
    os.setxattr(f"{m}/dax", "user.daxfs.sync", b"1")
    assert os.getxattr(f"{m}/dax", "user.daxfs.sync") == b"1"


def _reads(m) -> int:
    stats = json.loads(os.getxattr(m, "trusted.daxfs.stats"))
    return stats["requests"].get("read", 0)


def test_a_dax_file_has_no_page_cache_and_still_maps(mnts):
    """As on Linux, a DAX file read through a read-only open goes to the pmem every time,
    never to a cache in front of it, while a shared mapping still works and stays
    coherent with read(2) and write(2)."""
    dev = fresh()
    m = mount(dev, mnts(), "dax=inode")
    if "direct_io_allow_mmap" not in json.loads(os.getxattr(m, "trusted.daxfs.stats"))["fuse_caps"]:
        pytest.skip("the kernel does not offer FUSE_DIRECT_IO_ALLOW_MMAP (Linux 6.6)")
    os.mkdir(f"{m}/d")
    os.setxattr(f"{m}/d", FLAG, b"1")
    for name in ("d/dax", "cached"):
        with open(f"{m}/{name}", "wb") as f:
            f.write(b"x" * 8192)
    read_twice = {}
    for name in ("d/dax", "cached"):
        with open(f"{m}/{name}", "rb") as f:
            before = _reads(m)
            for _ in range(2):
                assert os.pread(f.fileno(), 4096, 0) == b"x" * 4096
            read_twice[name] = _reads(m) - before
    assert read_twice == {"d/dax": 2, "cached": 1}
    fd = os.open(f"{m}/d/dax", os.O_RDWR)
    try:
        mm = mmap.mmap(fd, 8192, mmap.MAP_SHARED)
        mm[0:5] = b"store"
        assert os.pread(fd, 5, 0) == b"store"        # a read sees the mapped store
        os.pwrite(fd, b"write", 4096)
        assert mm[4096:4101] == b"write"             # the mapping sees the write
        mm.close()
    finally:
        os.close(fd)
    umount(m)


def test_stores_and_writes_to_the_same_pages_lose_nothing(mnts):
    """One thread stores through a shared mapping of a DAX file while another pwrites into
    the same pages (fstests' generic/346, holetest -w): both markers are in every page. A
    direct write next to a mapping lost the pwrite when the page came back from before it."""
    dev = fresh(size="256M")
    m = mount(dev, mnts(), "dax=always")
    path = f"{m}/holes"
    pages = 1024
    with open(path, "wb") as f:
        f.truncate(pages * 4096)
    fd_map = os.open(path, os.O_RDWR)
    fd_write = os.open(path, os.O_RDWR)
    try:
        mm = mmap.mmap(fd_map, pages * 4096, mmap.MAP_SHARED)

        writing = threading.Event()
        writing.set()

        def store():
            # pass after pass while the writer goes on, so stores meet its pages in flight
            while True:
                last = not writing.is_set()
                for i in range(pages):
                    mm[i * 4096 + 0x100:i * 4096 + 0x108] = b"S" * 8
                if last:
                    return

        def write():
            for i in range(pages):
                os.pwrite(fd_write, b"W" * 8, i * 4096 + 0x400)
            writing.clear()
        threads = [threading.Thread(target=store), threading.Thread(target=write)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        mm.flush()
        mm.close()
        data = os.pread(fd_write, pages * 4096, 0)
    finally:
        os.close(fd_map)
        os.close(fd_write)
    lost = [i for i in range(pages) if data[i * 4096 + 0x100:i * 4096 + 0x108] != b"S" * 8
            or data[i * 4096 + 0x400:i * 4096 + 0x408] != b"W" * 8]
    assert not lost, f"{len(lost)} pages lost a marker, the first {lost[:5]}"
    umount(m)


def _kill_mount_and_power_fail(m):
    """Cut the power under a live mount: the daemon loses its device, then it goes."""
    r = tool("ndctl", "power-fail", "pmem0")
    assert r.returncode == 0, r.stderr
    subprocess.run(["fusermount3", "-u", "-z", m], capture_output=True)


def test_mmap_msync_survives_power_failure_in_adr(mnts):
    dev = fresh("--persistence", "adr")
    m = mount(dev, mnts(), "dax=always,commit=3600")    # no periodic commit to help
    with open(f"{m}/mapped", "wb") as f:
        f.truncate(8192)
        os.fsync(f.fileno())
    fd = os.open(f"{m}/mapped", os.O_RDWR)
    mm = mmap.mmap(fd, 8192, mmap.MAP_SHARED)
    mm[0:11] = b"msync'd 1st"
    mm.flush()                                       # msync(MS_SYNC)
    mm[4096:4101] = b"later"                         # never synced: may be lost
    os.write(os.open(f"{m}/unsynced", os.O_CREAT | os.O_WRONLY), b"x" * 5000)
    _kill_mount_and_power_fail(m)
    mm.close()
    os.close(fd)
    assert tool("fsck.daxfs", "-n", dev).returncode == 0
    m = mount(dev, mnts())
    with open(f"{m}/mapped", "rb") as f:
        assert f.read(11) == b"msync'd 1st"
    # The write without fsync extended a file whose size was never committed: gone.
    assert not os.path.exists(f"{m}/unsynced") or os.path.getsize(f"{m}/unsynced") == 0


def test_write_without_fsync_can_be_lost_in_adr(mnts):
    dev = fresh("--persistence", "adr")
    m = mount(dev, mnts(), "dax=always,commit=3600")    # no periodic commit to help
    with open(f"{m}/kept", "wb") as f:
        f.write(b"k" * 10000)
        os.fsync(f.fileno())
    with open(f"{m}/kept", "ab") as f:
        f.write(b"grown" * 1000)                     # data stored, new size not committed
    _kill_mount_and_power_fail(m)
    m = mount(dev, mnts())
    assert os.path.getsize(f"{m}/kept") == 10000


@pytest.mark.parametrize("opts", ["commit=3600", "writeback,commit=3600"])
def test_a_dax_overwrite_is_durable_when_write_returns(mnts, opts):
    """Overwriting a DAX file's blocks needs no metadata: the data is in the persistence
    domain when write(2) returns, with no fsync, also on a mount whose other files' writes
    the kernel caches (-o writeback: the DAX file bypasses that cache)."""
    dev = fresh("--persistence", "adr")
    m = mount(dev, mnts(), opts)
    os.mkdir(f"{m}/d")
    os.setxattr(f"{m}/d", FLAG, b"1")
    with open(f"{m}/d/dax", "wb") as f:
        f.write(b"o" * 8192)
        os.fsync(f.fileno())
    assert eff(f"{m}/d/dax") == "1"
    fd = os.open(f"{m}/d/dax", os.O_WRONLY)
    try:
        os.pwrite(fd, b"n" * 4096, 0)
        _kill_mount_and_power_fail(m)       # before close(2), which writes back pages
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    m = mount(dev, mnts())
    with open(f"{m}/d/dax", "rb") as f:
        assert f.read() == b"n" * 4096 + b"o" * 4096


async def test_snapshot_of_a_busy_mounted_dax_volume(mnts):
    ok("ndctl", "create-namespace", "-s", "128M")
    ok("dmsetup", "create", "lv", "--table", "0 131072 linear pmem0 0")
    ok("mkfs.daxfs", "/dev/mapper/lv")
    m = mount("/dev/mapper/lv", mnts(), "dax=always")
    seq = []

    async def writer():
        i = 0
        while True:
            p = f"{m}/rec{i:05d}"
            await trio.to_thread.run_sync(lambda: _write_fsync(p, i))
            seq.append(i)
            i += 1
            await trio.sleep(0)

    async with trio.open_nursery() as n:
        n.start_soon(writer)
        with trio.fail_after(60):
            while len(seq) < 20:
                await trio.sleep(0.01)
        for line in ("lv-real 0 131072 linear pmem0 0", "cow 0 65536 linear pmem0 131072",
                     "snap 0 131072 snapshot lv-real cow P 8"):
            name, table = line.split(" ", 1)
            ok("dmsetup", "create", name, "--table", table)
        before = len(seq)
        r = await trio.to_thread.run_sync(lambda: tool("dmsetup", "suspend", "lv"))
        assert r.returncode == 0, r.stderr
        ok("dmsetup", "load", "lv", "--table", "0 131072 snapshot-origin lv-real")
        ok("dmsetup", "resume", "lv")
        after = len(seq)
        with trio.fail_after(60):
            while len(seq) < after + 20:
                await trio.sleep(0.01)
        n.cancel_scope.cancel()
    assert ok("dmsetup", "table", "lv") == "0 131072 snapshot-origin 253:1\n"
    assert tool("fsck.daxfs", "-n", "/dev/mapper/snap").returncode == 0
    s = mount("/dev/mapper/snap", mnts(), "ro,dax=always")
    assert eff(f"{s}/rec00000") == "1"               # the snapshot is DAX-capable too
    have = sorted(int(x[3:]) for x in os.listdir(s) if x.startswith("rec"))
    assert have == list(range(len(have)))            # a prefix of the records: consistent
    assert before <= len(have) <= after + 1          # everything fsynced before the freeze
    for i in have[:-1]:
        with open(f"{s}/rec{i:05d}", "rb") as f:
            assert f.read() == _record(i)
    assert len(os.listdir(m)) > len(have)            # the origin went on


def _record(i):
    return f"record {i}\n".encode() * 300


def _write_fsync(path, i):
    with open(path, "wb") as f:
        f.write(_record(i))
        os.fsync(f.fileno())


async def test_removal_under_running_io_fails_with_eio_and_unmounts(mnts):
    m = mount(fresh(), mnts(), "dax=always")
    # A writer that never stops by itself and never fills the 64 MiB device: 16 MiB written
    # over and over, so only the removal can end it, however fast or slow the machine is.
    proc = await trio.to_thread.run_sync(lambda: subprocess.Popen(
        ["sh", "-c", f"while dd if=/dev/zero of={m}/stream bs=64k count=256 conv=notrunc "
                     "status=none; do :; done; exit 1"],
        stderr=subprocess.PIPE, text=True))
    with trio.fail_after(60):
        while not os.path.exists(f"{m}/stream") or os.path.getsize(f"{m}/stream") < 256 << 10:
            await trio.sleep(0.01)
    ok("ndctl", "disable-namespace", "pmem0")
    with trio.fail_after(30):
        _, err = await trio.to_thread.run_sync(proc.communicate)
    assert proc.returncode == 1 and "Input/output error" in err
    # The filesystem's own word on it reaches the kernel log, as ext4's reaches dmesg.
    with trio.fail_after(30):
        while "daxfs (pmem0): pmem0: device" not in ok("dmemu", "dmesg"):
            await trio.sleep(0.05)
    with pytest.raises(OSError) as e:
        open(f"{m}/stream").read(10)
    assert e.value.errno == errno.EIO
    subprocess.run(["fusermount3", "-u", m], check=True, timeout=30)
    assert not os.path.ismount(m)


def test_poisoned_block_fails_only_its_file_range(mnts):
    dev = fresh()
    m = mount(dev, mnts(), "dax=always")
    with open(f"{m}/victim", "wb") as f:
        f.write(b"v" * 16384)
        os.fsync(f.fileno())
    with open(f"{m}/bystander", "wb") as f:
        f.write(b"b" * 4096)
        os.fsync(f.fileno())
    out = ok("daxfs-rmap", dev, "--file", f"{m}/victim", "--offset", "8192")
    sector = int(out.split()[1])
    ok("ndctl", "inject-error", "pmem0", "-B", str(sector), "-n", "8")
    assert ok("daxfs-rmap", dev, str(sector)) == f"sector {sector}: /victim offset 8192\n"
    with open(f"{m}/victim", "rb") as f:
        assert f.read(8192) == b"v" * 8192           # before the bad block: fine
        with pytest.raises(OSError) as e:
            f.read(4096)
        assert e.value.errno == errno.EIO
    with open(f"{m}/bystander", "rb") as f:
        assert f.read() == b"b" * 4096
