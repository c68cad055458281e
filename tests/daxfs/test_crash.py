"""Crash consistency by enumeration.

Each workload runs on a recording MemoryBlockDevice. For many prefixes of the recorded
writes and flushes (every flush and FUA point, plus points in between) the post-crash
device is rebuilt: only what was durable at that point (writes followed by a flush or
written with FUA), and also with a random selection of the volatile writes surviving, as a
real write cache may do. Every such image must mount (replaying the journal), pass fsck
both before and after the mount, and hold everything that fsync/O_SYNC had promised by then.
"""
import os
import random

import pytest

from daxfs import format as fmt
from daxfs.fs import Filesystem
from daxfs.fsck import check
from daxfs.mkfs import mkfs
from dmemu.blockdev import PAGE_SIZE, SECTOR_SIZE
from dmemu.memdev import MemoryBlockDevice

R = fmt.ROOT_INO
MiB = 1 << 20


class Recorder:
    """Runs a workload and remembers, for each fsync-like promise, the log position."""

    def __init__(self, dev, fs):
        self.dev = dev
        self.fs = fs
        self.promises: list[tuple[int, dict]] = []

    def promise(self, state: dict) -> None:
        """state: path -> expected bytes (None: must not exist), durable from now on."""
        self.promises.append((len(self.dev.log), dict(state)))

    async def path_ino(self, fs, path: str):
        ino = R
        for part in path.strip("/").split("/"):
            ino = (await fs.lookup(ino, part.encode())).ino
        return ino


def crash_image(initial: bytes, log: list, k: int, rng=None) -> bytearray:
    """The media after the first k log entries, when power fails right then."""
    view = bytearray(initial)
    media = bytearray(initial)
    dirty: set[int] = set()
    for entry in log[:k]:
        if entry[0] == "flush":
            for b in dirty:
                media[b * PAGE_SIZE:(b + 1) * PAGE_SIZE] = view[b * PAGE_SIZE:(b + 1) * PAGE_SIZE]
            dirty.clear()
            continue
        _, sector, data, fua = entry
        off = sector * SECTOR_SIZE
        view[off:off + len(data)] = data
        if fua:
            media[off:off + len(data)] = data
        dirty.update(range(off // PAGE_SIZE, (off + len(data) + PAGE_SIZE - 1) // PAGE_SIZE))
    if rng is not None:             # the cache wrote back some volatile blocks on its own
        for b in sorted(dirty):
            if rng.random() < 0.5:
                media[b * PAGE_SIZE:(b + 1) * PAGE_SIZE] = view[b * PAGE_SIZE:(b + 1) * PAGE_SIZE]
    return media


def crash_points(log: list, extra: int = 40) -> list[int]:
    """Every point right after a flush or FUA write, right before each, and `extra`
    random points in between (torn transactions)."""
    points = {0, len(log)}
    for i, e in enumerate(log):
        if e[0] == "flush" or e[3]:
            points.add(i + 1)
            points.add(i)
    rng = random.Random(len(log))
    points.update(rng.sample(range(len(log) + 1), min(extra, len(log) + 1)))
    return sorted(points)


class Sparse:
    """Expected content of a huge sparse file: its size and some (offset, bytes) samples."""

    def __init__(self, size: int, samples: dict):
        self.size, self.samples = size, samples

    def __eq__(self, other):
        return isinstance(other, Sparse) and (self.size, self.samples) == \
            (other.size, other.samples)

    def __repr__(self):
        return f"Sparse({self.size}, {self.samples})"


async def read_path(fs, path: str, want=None):
    ino = R
    try:
        for part in path.strip("/").split("/"):
            ino = (await fs.lookup(ino, part.encode())).ino
    except OSError:
        return None
    inode = await fs.getattr(ino)
    if inode.is_lnk:
        return b"->" + await fs.readlink(ino)
    fh = await fs.open(ino, os.O_RDONLY)
    if isinstance(want, Sparse):
        data = Sparse(inode.size, {o: await fs.read(fh, o, len(b)) for o, b in want.samples.items()})
    else:
        data = await fs.read(fh, 0, inode.size)
    await fs.release(fh)
    return data


async def run_matrix(workload, size=16 * MiB):
    dev = MemoryBlockDevice(size // SECTOR_SIZE)
    await mkfs(dev)
    fs = await Filesystem.mount(dev)
    await dev.flush()
    initial = bytes(dev.media)
    dev.record = True
    rec = Recorder(dev, fs)
    await workload(fs, rec)
    log = list(dev.log)
    assert any(e[0] == "flush" for e in log), "workload made nothing durable"
    checked = 0
    for k in crash_points(log):
        for variant in (None, random.Random(k)):
            image = crash_image(initial, log, k, variant)
            where = f"crash after {k}/{len(log)} log entries ({'random cache' if variant else 'durable only'})"
            d2 = MemoryBlockDevice(size // SECTOR_SIZE)
            d2.view[:] = image
            d2.media[:] = image
            msgs = []
            code, _ = await check(d2, out=msgs.append)
            assert code == 0, f"{where}: fsck before mount: {msgs}"
            fs2 = await Filesystem.mount(d2)
            # a path must hold its last promised state or one promised later (a later
            # commit may already have made a later state durable)
            expected: dict[str, list] = {}
            for pos, state in rec.promises:
                for path, want in state.items():
                    if pos <= k:
                        expected[path] = [want]
                    elif path in expected:
                        expected[path].append(want)
            for path, wants in expected.items():
                got = await read_path(fs2, path, wants[0])
                assert got in wants, f"{where}: {path}: {got!r:.60} not in {wants!r:.80}"
            await fs2.unmount()
            msgs = []
            code, _ = await check(d2, out=msgs.append)
            assert code == 0, f"{where}: fsck after mount: {msgs}"
            checked += 1
    return checked


async def w_files(fs, rec):
    fh, a = await fs.create(R, b"a", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"A" * 10000)
    await fs.fsync(fh)
    rec.promise({"a": b"A" * 10000})
    fh2, _ = await fs.create(R, b"b", 0o644, os.O_RDWR)
    await fs.write(fh2, 0, b"B" * 70000)           # not fsynced: may or may not survive
    d = await fs.mkdir(R, b"dir")
    fh3, _ = await fs.create(d.ino, b"c", 0o644, os.O_RDWR)
    await fs.write(fh3, 5000, b"C" * 3000)
    await fs.rename(R, b"b", d.ino, b"b2")
    await fs.fsync(fh3)
    rec.promise({"dir/c": bytes(5000) + b"C" * 3000, "dir/b2": b"B" * 70000, "b": None})
    await fs.unlink(d.ino, b"b2")
    await fs.write(fh2, 70000, b"more")             # b2's inode is an orphan now
    for h in (fh, fh2, fh3):
        await fs.release(h)
    await fs.symlink(R, b"link", b"dir/c")
    await fs.sync()
    rec.promise({"link": b"->dir/c", "dir/b2": None})


async def w_directory_churn(fs, rec):
    d = await fs.mkdir(R, b"many")
    for i in range(300):
        fh, _ = await fs.create(d.ino, b"f%03d" % i, 0o644, os.O_RDWR)
        await fs.write(fh, 0, b"%d" % i)
        await fs.release(fh)
    await fs.fsyncdir(d.ino)
    rec.promise({f"many/f{i:03d}": b"%d" % i for i in range(0, 300, 2)})
    for i in range(1, 300, 2):
        await fs.unlink(d.ino, b"f%03d" % i)
    sub = await fs.mkdir(d.ino, b"sub")
    for i in range(0, 40, 2):
        await fs.rename(d.ino, b"f%03d" % (i + 200), sub.ino, b"g%03d" % i)
    await fs.fsyncdir(sub.ino)
    rec.promise({f"many/f{i:03d}": None for i in range(1, 300, 2)} |
                {f"many/f{i + 200:03d}": None for i in range(0, 40, 2)} |
                {f"many/sub/g{i:03d}": b"%d" % (i + 200) for i in range(0, 40, 2)})


async def w_overwrite_truncate_xattr(fs, rec):
    fh, f = await fs.create(R, b"x", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"1" * 20000)
    await fs.fsync(fh)
    await fs.write(fh, 4096, b"2" * 4096)           # in-place overwrite
    await fs.setattr(f.ino, size=12000)
    await fs.setxattr(f.ino, b"user.k", b"v")
    await fs.fsync(fh)
    rec.promise({"x": b"1" * 4096 + b"2" * 4096 + b"1" * 3808})
    await fs.release(fh)
    zh, z = await fs.create(R, b"z", 0o644, os.O_RDWR)
    await fs.write(zh, 1 << 32, b"far")             # sparse, beyond 4 GiB
    await fs.link(z.ino, R, b"y")
    await fs.fsync(zh, datasync=True)
    rec.promise({"y": Sparse((1 << 32) + 3, {(1 << 32) - 2: b"\0\0far"})})
    await fs.write(zh, 0, b"head")
    await fs.fsync(zh)
    rec.promise({"z": Sparse((1 << 32) + 3, {0: b"head\0", (1 << 32): b"far"})})
    await fs.release(zh)


async def w_orphan_and_osync(fs, rec):
    fh, f = await fs.create(R, b"gone", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"G" * 40000)
    await fs.unlink(R, b"gone")
    await fs.fsync(fh)                               # orphan is durable
    rec.promise({"gone": None})
    sh, s = await fs.create(R, b"sync", 0o644, os.O_RDWR | os.O_SYNC)
    await fs.write(sh, 0, b"S" * 5000)               # O_SYNC: durable on return
    rec.promise({"sync": b"S" * 5000})
    await fs.write(sh, 5000, b"T" * 100)
    rec.promise({"sync": b"S" * 5000 + b"T" * 100})
    await fs.release(sh)
    await fs.release(fh)                             # frees the orphan
    await fs.sync()


async def w_journal_wrap_and_reuse(fs, rec):
    """Many small commits on a small journal, freeing and reallocating blocks: freed blocks
    must not be reused while a replayable transaction could still claim them."""
    for round_ in range(12):
        name = b"r%d" % round_
        fh, _ = await fs.create(R, name, 0o644, os.O_RDWR)
        await fs.write(fh, 0, bytes([65 + round_]) * 200_000)
        await fs.fsync(fh)
        await fs.release(fh)
        rec.promise({name.decode(): bytes([65 + round_]) * 200_000})
        if round_ >= 2:
            old = b"r%d" % (round_ - 2)
            await fs.unlink(R, old)
            # new data right after the free: must not land in the old file's blocks while
            # a crash could still bring the old file back
            fh, _ = await fs.create(R, b"n%d" % round_, 0o644, os.O_RDWR)
            await fs.write(fh, 0, b"n" * 200_000)
            await fs.release(fh)
            if round_ >= 4:
                await fs.unlink(R, b"n%d" % (round_ - 2))
            d = await fs.mkdir(R, b"d%d" % round_)
            for i in range(5):
                fh, _ = await fs.create(d.ino, b"e%d" % i, 0o644, os.O_RDWR)
                await fs.release(fh)
            await fs.sync()
            rec.promise({old.decode(): None})


async def w_fdatasync_overwrite(fs, rec):
    """In-place overwrites change only timestamps, so fdatasync and O_DSYNC skip the commit
    and only flush: the data must still be durable."""
    fh, f = await fs.create(R, b"db", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"0" * 40000)
    await fs.fsync(fh)
    rec.promise({"db": b"0" * 40000})
    await fs.write(fh, 8192, b"1" * 4096)
    await fs.fsync(fh, datasync=True)
    rec.promise({"db": b"0" * 8192 + b"1" * 4096 + b"0" * 27712})
    dh = await fs.open(f.ino, os.O_RDWR | os.O_DSYNC)
    await fs.write(dh, 0, b"2" * 100)
    rec.promise({"db": b"2" * 100 + b"0" * 8092 + b"1" * 4096 + b"0" * 27712})
    await fs.write(dh, 40000, b"3" * 10)             # extends: must commit the size
    rec.promise({"db": b"2" * 100 + b"0" * 8092 + b"1" * 4096 + b"0" * 27712 + b"3" * 10})
    await fs.release(dh)
    await fs.release(fh)


async def w_namespace(fs, rec):
    """Exchanges, directory moves, rmdir, hard links, symlinks and xattrs."""
    from daxfs.fs import RENAME_EXCHANGE
    a = await fs.mkdir(R, b"a")
    b = await fs.mkdir(R, b"b")
    for d, name, data in ((a, b"f", b"first"), (b, b"g", b"second")):
        fh, _ = await fs.create(d.ino, name, 0o644, os.O_RDWR)
        await fs.write(fh, 0, data)
        await fs.release(fh)
    await fs.sync()
    rec.promise({"a/f": b"first", "b/g": b"second"})
    await fs.rename(a.ino, b"f", b.ino, b"g", RENAME_EXCHANGE)
    await fs.fsyncdir(a.ino)
    rec.promise({"a/f": b"second", "b/g": b"first"})
    sub = await fs.mkdir(a.ino, b"sub")
    await fs.symlink(sub.ino, b"ln", b"../f")
    f = await fs.lookup(a.ino, b"f")
    await fs.link(f.ino, sub.ino, b"hard")
    await fs.setxattr(f.ino, b"user.tag", b"v1")
    await fs.rename(a.ino, b"sub", b.ino, b"moved")
    await fs.sync()
    rec.promise({"b/moved/ln": b"->../f", "b/moved/hard": b"second", "a/sub/ln": None})
    await fs.unlink((await fs.lookup(b.ino, b"moved")).ino, b"ln")
    await fs.unlink((await fs.lookup(b.ino, b"moved")).ino, b"hard")
    await fs.rmdir(b.ino, b"moved")
    await fs.removexattr(f.ino, b"user.tag")
    await fs.sync()
    rec.promise({"b/moved/hard": None, "b/moved/ln": None, "a/f": b"second"})


async def w_fast_commits(fs, rec):
    """fsync of files that exist on the device is one fast-commit record each, not a
    journal commit: appends, overwrites, a truncate, a file growing an extent chain, a
    sparse write; the records are replayed after the crash."""
    names = [b"log", b"frag", b"cut"]
    fhs = {}
    for n in names:
        fh, _ = await fs.create(R, n, 0o644, os.O_RDWR)
        await fs.write(fh, 0, n * 1000)
        fhs[n] = fh
    await fs.sync()
    state = {n.decode(): n * 1000 for n in names}
    rec.promise(state)
    commits = fs.journal.commits
    for i in range(6):
        data = b"%d" % i * 1500
        await fs.write(fhs[b"log"], len(state["log"]), data)
        state["log"] += data
        await fs.fsync(fhs[b"log"])
        rec.promise(state)
        # a hole then a block: the extents of frag outgrow the inode, a chain appears
        off = len(state["frag"]) + 8192
        await fs.write(fhs[b"frag"], off, b"f%d" % i)
        state["frag"] = state["frag"] + bytes(off - len(state["frag"])) + b"f%d" % i
        await fs.fsync(fhs[b"frag"], datasync=True)
        rec.promise(state)
    await fs.setattr((await fs.lookup(R, b"cut")).ino, size=100)
    state["cut"] = state["cut"][:100]
    await fs.fsync(fhs[b"cut"])
    rec.promise(state)
    assert fs.journal.commits == commits, "an fsync did a full commit"
    assert fs.fc.records >= 13
    for fh in fhs.values():
        await fs.release(fh)


@pytest.mark.parametrize("workload", [w_fast_commits, w_namespace, w_fdatasync_overwrite, w_files, w_directory_churn, w_overwrite_truncate_xattr,
                                      w_orphan_and_osync, w_journal_wrap_and_reuse],
                         ids=lambda w: w.__name__[2:])
async def test_crash_matrix(workload):
    # the small device makes the allocator wrap around and reuse freed blocks
    small = workload is w_journal_wrap_and_reuse
    checked = await run_matrix(workload, size=(3 if small else 16) * MiB)
    assert checked >= 10


def test_crash_image_model():
    """The rebuild keeps FUA and flushed writes, drops the rest."""
    init = bytes(3 * PAGE_SIZE)
    log = [("write", 0, b"a" * 4096, False), ("write", 8, b"b" * 4096, True),
           ("flush",), ("write", 16, b"c" * 4096, False)]
    img = crash_image(init, log, 2)
    assert img[:4096] == bytes(4096) and img[4096:8192] == b"b" * 4096
    img = crash_image(init, log, 4)
    assert img[:4096] == b"a" * 4096 and img[8192:] == bytes(4096)


async def test_freed_blocks_not_reused_before_commit():
    """Blocks freed by an uncommitted unlink must not receive another file's data: after a
    crash the unlink is undone and the old file must still hold its own bytes."""
    dev = MemoryBlockDevice(16 * MiB // SECTOR_SIZE)
    await mkfs(dev)
    fs = await Filesystem.mount(dev)
    fh, a = await fs.create(R, b"a", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"A" * 40960)
    await fs.fsync(fh)
    await fs.release(fh)
    a_blocks = {p + i for _, n, p in a.extents() for i in range(n)}
    await fs.unlink(R, b"a")                    # not committed
    fs.balloc.cursor = fs.sb.data_start         # make the allocator look at low blocks first
    fh, b = await fs.create(R, b"b", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"B" * 40960)         # data reaches the device now
    b_blocks = {p + i for _, n, p in b.extents() for i in range(n)}
    assert not a_blocks & b_blocks
    await dev.flush()                           # B's data is durable, its metadata is not
    dev.power_fail()
    fs2 = await Filesystem.mount(dev)
    assert await read_path(fs2, "a") == b"A" * 40960
    await fs2.unmount()
    code, _ = await check(dev)
    assert code == 0
