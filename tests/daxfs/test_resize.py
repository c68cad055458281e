"""daxfs-resize, offline: growing and shrinking an unmounted image or device.

Files are written and read back through real FUSE mounts; every resize ends with fsck -n
clean; a refused resize changes nothing, byte for byte; a power failure at any fence of a
resize on adr pmem leaves a filesystem fsck accepts, of the old size or of the new one.
"""
import hashlib
import os
import random
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
import trio

from daxfs import format as fmt
from daxfs.filedev import FileBlockDevice
from daxfs.fs import Filesystem
from tests.helpers import ok, tool, unmount

MiB = 1 << 20

needs_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None or os.geteuid() != 0,
    reason="real FUSE mounts need /dev/fuse, fusermount3 and root")


def total_blocks(image: Path) -> int:
    return fmt.Superblock.unpack(image.read_bytes()[:fmt.BLOCK_SIZE]).total_blocks


def fsck_clean(dev, why: str = "") -> None:
    r = tool("fsck.daxfs", "-n", dev)
    assert r.returncode == 0, why + r.stdout + r.stderr


@pytest.fixture
def image(tmp_path):
    img = tmp_path / "fs.img"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    ok("mkfs.daxfs", img)
    return img


@pytest.fixture
def mnt():
    d = Path(tempfile.mkdtemp(prefix="daxfs-mnt-"))
    yield d
    if os.path.ismount(d):
        unmount(d, lazy=True)
    if not os.path.ismount(d):
        d.rmdir()


def mounted(image, mnt):
    r = tool("daxfs", image, mnt)
    assert r.returncode == 0, r.stderr


def write_files(mnt: Path, sizes) -> dict:
    sums = {}
    for i, size in enumerate(sizes):
        data = os.urandom(size)
        (mnt / f"f{i}").write_bytes(data)
        sums[f"f{i}"] = hashlib.sha256(data).hexdigest()
    return sums


def read_sums(mnt: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in mnt.iterdir()
            if p.is_file()}


@needs_fuse
def test_offline_grow_then_shrink_keeps_files(image, mnt):
    mounted(image, mnt)
    sums = write_files(mnt, [5000, 300_000, 2 * MiB])
    unmount(mnt)
    with open(image, "r+b") as f:
        f.truncate(128 * MiB)
    out = ok("daxfs-resize", image)              # no SIZE: the whole device
    assert out.splitlines()[-1] == f"The filesystem on {image} is now 32768 (4k) blocks long."
    assert total_blocks(image) == 32768
    fsck_clean(image)
    mounted(image, mnt)
    assert read_sums(mnt) == sums
    st = os.statvfs(mnt)
    assert st.f_blocks * st.f_frsize == 128 * MiB
    # the new space is usable: more than the old filesystem could ever hold
    big = os.urandom(80 * MiB)
    (mnt / "big").write_bytes(big)
    assert hashlib.sha256((mnt / "big").read_bytes()).digest() == hashlib.sha256(big).digest()
    os.unlink(mnt / "big")
    unmount(mnt)
    fsck_clean(image)
    ok("daxfs-resize", image, "24M")
    assert total_blocks(image) == 6144
    fsck_clean(image)
    mounted(image, mnt)
    assert read_sums(mnt) == sums
    st = os.statvfs(mnt)
    assert st.f_blocks * st.f_frsize == 24 * MiB
    unmount(mnt)
    fsck_clean(image)


@needs_fuse
def test_shrink_below_what_is_used_is_refused_and_changes_nothing(image, mnt):
    mounted(image, mnt)
    write_files(mnt, [40 * MiB])
    unmount(mnt)
    before = image.read_bytes()
    r = tool("daxfs-resize", image, "16M")
    assert r.returncode != 0
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"daxfs-resize: {image}: cannot shrink to 4096 blocks: ")
    assert "the smallest size is" in lines[0] and "delete files" in lines[0]
    assert image.read_bytes() == before
    fsck_clean(image)


class Writer:
    """Writes numbered files into a directory until stopped (a busy application)."""

    def __init__(self, d: Path):
        self.d, self.n, self.stop, self.error = d, 0, threading.Event(), None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    @staticmethod
    def content(i: int) -> bytes:
        return (f"file {i} ".encode() * 8000)[:60000]

    def run(self):
        try:
            while not self.stop.is_set():
                (self.d / f"w{self.n}").write_bytes(self.content(self.n))
                self.n += 1
                if self.n == 5:
                    self.started.set()
        except OSError as e:
            self.error = e
        finally:
            self.started.set()

    def finish(self) -> int:
        self.stop.set()
        self.thread.join(60)
        assert self.error is None, self.error
        return self.n

    def check(self, d: Path, n: int) -> None:
        for i in range(n):
            assert (d / f"w{i}").read_bytes() == self.content(i), i


@needs_fuse
def test_online_grow_while_a_writer_is_busy(image, mnt):
    mounted(image, mnt)
    w = Writer(mnt)
    try:
        assert w.started.wait(60)
        with open(image, "r+b") as f:
            f.truncate(100 * MiB)
        out = ok("daxfs-resize", image)
        assert f"is mounted on {mnt}; on-line resizing required" in out
        assert out.splitlines()[-1] == f"The filesystem on {image} is now 25600 (4k) blocks long."
        st = os.statvfs(mnt)
        assert st.f_blocks * st.f_frsize == 100 * MiB
    finally:
        n = w.finish()
    assert n > 5
    w.check(mnt, n)
    # shrinking a mounted filesystem is refused, as ext4 refuses it
    r = tool("daxfs-resize", image, "32M")
    assert r.returncode != 0 and len(r.stderr.splitlines()) == 1
    assert "on-line shrinking is not supported; unmount it first" in r.stderr
    unmount(mnt)
    fsck_clean(image)
    assert total_blocks(image) == 25600
    mounted(image, mnt)
    w.check(mnt, n)
    unmount(mnt)


@pytest.mark.parametrize("args, words", [
    (["2x"], "invalid size '2x'"),
    (["1G"], "larger than the device"),
])
def test_bad_sizes_are_refused_in_one_line(image, args, words):
    before = image.read_bytes()
    r = tool("daxfs-resize", image, *args)
    assert r.returncode != 0 and words in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert image.read_bytes() == before


def test_growing_beyond_the_block_bitmap_is_refused(tmp_path):
    """mkfs sizes the block bitmap for 16 times the device; beyond that the refusal says
    how far the filesystem can grow."""
    img = tmp_path / "small.img"
    with open(img, "wb") as f:
        f.truncate(4 * MiB)
    ok("mkfs.daxfs", img)
    with open(img, "r+b") as f:
        f.truncate(256 * MiB)
    before = img.read_bytes()
    r = tool("daxfs-resize", img)
    assert r.returncode != 0 and len(r.stderr.splitlines()) == 1
    assert "the block bitmap of this filesystem covers at most 32384 blocks" in r.stderr
    assert img.read_bytes() == before
    ok("daxfs-resize", img, "64M")
    fsck_clean(img)


def test_a_dirty_filesystem_is_refused(image):
    raw = bytearray(image.read_bytes()[:fmt.BLOCK_SIZE])
    sb = fmt.Superblock.unpack(raw)
    sb.state = fmt.STATE_DIRTY
    with open(image, "r+b") as f:
        f.write(sb.pack())
    r = tool("daxfs-resize", image, "32M")
    assert r.returncode != 0 and "run fsck.daxfs -y" in r.stderr
    assert total_blocks(image) == 16384


@pytest.mark.parametrize("new, start", [("32M", None), ("64M", "32M")])
def test_power_failure_at_any_fence_of_a_resize_leaves_old_or_new(dmemu_root, tmp_path,
                                                                   new, start):
    """On adr pmem, whose stores are lost unless flushed and fenced: the media as a power
    failure after each fence of a traced shrink (and grow) leaves it is a filesystem fsck
    accepts, of the old size or the new."""
    ok("ndctl", "create-namespace", "-s", "64M", "--persistence", "adr")
    ok("mkfs.daxfs", "/dev/pmem0")
    if start:
        ok("daxfs-resize", "/dev/pmem0", start)
    old = 8192 if start else 16384
    ok("dmemu", "trace", "start", "pmem0")
    ok("daxfs-resize", "/dev/pmem0", new)
    fences = int(ok("dmemu", "trace", "status", "pmem0").split(":")[1].split()[0])
    ok("dmemu", "trace", "stop", "pmem0")
    assert fences >= 3
    sizes = set()
    # (crash-image --unflushed is not used: it lets lines that only a later fence flushes
    # survive, stores the resize had not made yet at this fence)
    for f in range(fences + 1):
        out = tmp_path / "crash.img"
        ok("dmemu", "crash-image", "pmem0", "--fence", str(f), "-o", out)
        # mount would replay the journal: fsck -n does the same, in memory
        fsck_clean(out, f"fence {f} of {fences}: ")
        sizes.add(total_blocks_after_replay(out))
    assert sizes == {old, int(new[:-1]) * 256}


def total_blocks_after_replay(image: Path) -> int:
    """The size a mount sees: the journal replayed (read-only, in memory)."""
    async def size():
        dev = FileBlockDevice(str(image), read_only=True)
        try:
            fs = await Filesystem.mount(dev, read_only=True)
            return fs.sb.total_blocks
        finally:
            dev.close()
    return trio.run(size)


@pytest.mark.parametrize("start, new", [(16 * MiB, 8 * MiB), (8 * MiB, 16 * MiB)])
async def test_power_failure_at_any_write_of_a_resize_on_a_write_cache(start, new):
    """A disk with a volatile write cache: at every point of an offline resize (each flush
    and FUA, and between), with only what was durable or also a random share of the cached
    writes, the device holds the old or the new filesystem, fsck-clean, mountable, its
    file intact."""
    from daxfs.fsck import check
    from daxfs.mkfs import mkfs
    from daxfs.resize import resize
    from dmemu.memdev import MemoryBlockDevice

    from .test_crash import crash_image, crash_points, read_path

    dev = MemoryBlockDevice(16 * MiB // 512)
    await mkfs(dev)
    fs = await Filesystem.mount(dev)
    if start != 16 * MiB:
        await resize(fs, start // fmt.BLOCK_SIZE)
    fh, _ = await fs.create(fmt.ROOT_INO, b"keep", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"K" * 50000)
    await fs.release(fh)
    await fs.unmount()
    initial = bytes(dev.media)
    dev.record = True
    fs = await Filesystem.mount(dev)
    await resize(fs, new // fmt.BLOCK_SIZE)
    await fs.unmount()
    log = list(dev.log)
    sizes = set()
    for k in crash_points(log):
        for variant in (None, random.Random(k)):
            where = f"crash after {k}/{len(log)} ({'random cache' if variant else 'durable'})"
            d2 = MemoryBlockDevice(16 * MiB // 512)
            d2.view[:] = d2.media[:] = crash_image(initial, log, k, variant)
            msgs = []
            code, _ = await check(d2, out=msgs.append)
            assert code == 0, f"{where}: {msgs}"
            fs2 = await Filesystem.mount(d2)
            sizes.add(fs2.sb.total_blocks)
            assert await read_path(fs2, "keep") == b"K" * 50000, where
            await fs2.unmount()
            code, _ = await check(d2, out=msgs.append)
            assert code == 0, f"{where}, after mount: {msgs}"
    assert sizes == {start // fmt.BLOCK_SIZE, new // fmt.BLOCK_SIZE}
