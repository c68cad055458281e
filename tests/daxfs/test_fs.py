"""The Filesystem API without FUSE: POSIX behaviour and Linux's errnos."""
import errno
import os
import stat
import time

import pytest
import trio
import trio.testing

from daxfs import format as fmt
from daxfs.errors import FsError
from daxfs.fs import RENAME_EXCHANGE, RENAME_NOREPLACE, Ctx, Filesystem

from .conftest import MiB, assert_clean, make_dev

R = fmt.ROOT_INO


def err(e):
    return pytest.raises(FsError, match="") if e is None else _Err(e)


class _Err:
    def __init__(self, code):
        self.code = code

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        assert et is not None, f"expected errno {errno.errorcode[self.code]}"
        assert issubclass(et, FsError), ev
        assert ev.errno == self.code, f"got {errno.errorcode.get(ev.errno)}: {ev}"
        return True


async def remount(fs):
    await fs.unmount()
    return await Filesystem.mount(fs.dev)


async def test_create_write_read_persist(fs):
    fh, f = await fs.create(R, b"a", 0o640, os.O_RDWR)
    assert stat.S_IMODE(f.mode) == 0o640 and stat.S_ISREG(f.mode)
    data = os.urandom(300_000)
    assert await fs.write(fh, 1234, data) == len(data)
    assert await fs.read(fh, 1234, len(data)) == data
    assert await fs.read(fh, 0, 1234) == bytes(1234)
    await fs.release(fh)
    fs2 = await remount(fs)
    f = await fs2.lookup(R, b"a")
    fh = await fs2.open(f.ino, os.O_RDONLY)
    assert f.size == 1234 + len(data)
    assert await fs2.read(fh, 1234, len(data)) == data
    await fs2.release(fh)
    await fs2.unmount()
    await assert_clean(fs.dev)


async def test_errnos(fs):
    d = await fs.mkdir(R, b"d")
    fh, f = await fs.create(d.ino, b"f", 0o644, os.O_RDWR)
    with err(errno.EEXIST):
        await fs.mkdir(R, b"d")
    with err(errno.EEXIST):
        await fs.create(d.ino, b"f", 0o644, 0)
    with err(errno.ENOENT):
        await fs.lookup(R, b"nope")
    with err(errno.ENAMETOOLONG):
        await fs.create(R, b"x" * 256, 0o644, 0)
    fh2, _ = await fs.create(R, b"y" * 255, 0o644, 0)     # 255 bytes is fine
    await fs.release(fh2)
    with err(errno.ENOTEMPTY):
        await fs.rmdir(R, b"d")
    with err(errno.EISDIR):
        await fs.unlink(R, b"d")
    with err(errno.ENOTDIR):
        await fs.rmdir(d.ino, b"f")
    with err(errno.ENOTDIR):
        await fs.lookup(f.ino, b"x")
    with err(errno.EPERM):
        await fs.link(d.ino, R, b"dlink")
    with err(errno.EISDIR):
        await fs.setattr(d.ino, size=0)
    with err(errno.EFBIG):
        await fs.setattr(f.ino, size=fmt.MAX_FILE_SIZE + 1)
    with err(errno.EFBIG):
        await fs.write(fh, fmt.MAX_FILE_SIZE, b"x")
    with err(errno.EINVAL):
        await fs.rename(R, b"d", d.ino, b"sub")           # into itself
    with err(errno.EINVAL):
        await fs.readlink(f.ino)
    with err(errno.ENODATA):
        await fs.getxattr(f.ino, b"user.none")
    with err(errno.EOPNOTSUPP):
        await fs.setxattr(f.ino, b"bogus.ns", b"1")
    await fs.release(fh)


async def test_mknod_types(fs):
    for name, mode, rdev in [(b"fifo", stat.S_IFIFO | 0o600, 0),
                             (b"sock", stat.S_IFSOCK | 0o600, 0),
                             (b"chr", stat.S_IFCHR | 0o600, os.makedev(1, 3)),
                             (b"blk", stat.S_IFBLK | 0o600, os.makedev(7, 0))]:
        i = await fs.mknod(R, name, mode, rdev)
        assert stat.S_IFMT(i.mode) == stat.S_IFMT(mode) and i.rdev == rdev
    fs2 = await remount(fs)
    assert (await fs2.lookup(R, b"chr")).rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO((await fs2.lookup(R, b"fifo")).mode)
    await fs2.unmount()


async def test_truncate_up_down_zeroes(fs):
    fh, f = await fs.create(R, b"t", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"A" * 10000)
    await fs.setattr(f.ino, size=5000)
    assert f.size == 5000 and f.blocks == 2
    await fs.setattr(f.ino, size=20000)
    got = await fs.read(fh, 0, 20000)
    assert got == b"A" * 5000 + bytes(15000)
    await fs.setattr(f.ino, size=0)
    assert f.blocks == 0 and await fs.read(fh, 0, 10) == b""
    await fs.write(fh, 8000, b"B")
    assert await fs.read(fh, 0, 9000) == bytes(8000) + b"B"
    await fs.release(fh)


async def test_symlink_hardlink_nlink(fs):
    fh, f = await fs.create(R, b"f", 0o644, os.O_RDWR)
    await fs.release(fh)
    target = b"/some/where/" + b"x" * 3000
    s = await fs.symlink(R, b"s", target)
    assert await fs.readlink(s.ino) == target and s.size == len(target)
    await fs.link(f.ino, R, b"g")
    assert f.nlink == 2
    await fs.unlink(R, b"f")
    assert f.nlink == 1
    d = await fs.mkdir(R, b"d")
    await fs.mkdir(d.ino, b"e")
    root = await fs.getattr(R)
    assert d.nlink == 3 and root.nlink == 4          # d and lost+found
    fs2 = await remount(fs)
    assert await fs2.readlink((await fs2.lookup(R, b"s")).ino) == target
    assert (await fs2.lookup(R, b"g")).nlink == 1
    await fs2.unmount()


async def test_rename_variants(fs):
    a = await fs.mkdir(R, b"a")
    b = await fs.mkdir(R, b"b")
    fh, f = await fs.create(a.ino, b"f", 0o644, 0)
    await fs.release(fh)
    fh, g = await fs.create(b.ino, b"g", 0o644, 0)
    await fs.release(fh)
    with err(errno.EEXIST):
        await fs.rename(a.ino, b"f", b.ino, b"g", RENAME_NOREPLACE)
    await fs.rename(a.ino, b"f", b.ino, b"g", RENAME_EXCHANGE)
    assert (await fs.lookup(b.ino, b"g")).ino == f.ino
    assert (await fs.lookup(a.ino, b"f")).ino == g.ino
    with err(errno.ENOENT):
        await fs.rename(a.ino, b"f", b.ino, b"none", RENAME_EXCHANGE)
    await fs.rename(a.ino, b"f", b.ino, b"g")       # replaces: f's inode (g) is freed
    assert await fs.listdir(a.ino) == []
    with err(errno.ENOENT):
        await fs.getattr(f.ino)
    sub = await fs.mkdir(a.ino, b"sub")
    await fs.rename(a.ino, b"sub", b.ino, b"sub2")
    assert sub.parent == b.ino and a.nlink == 2 and b.nlink == 3
    with err(errno.EISDIR):
        await fs.rename(b.ino, b"g", b.ino, b"sub2")
    with err(errno.ENOTDIR):
        await fs.rename(b.ino, b"sub2", b.ino, b"g")
    await fs.mkdir(a.ino, b"full")
    fh, _ = await fs.create((await fs.lookup(a.ino, b"full")).ino, b"x", 0o644, 0)
    await fs.release(fh)
    with err(errno.ENOTEMPTY):
        await fs.rename(b.ino, b"sub2", a.ino, b"full")
    await fs.mkdir(a.ino, b"empty")
    await fs.rename(b.ino, b"sub2", a.ino, b"empty")
    assert (await fs.lookup(a.ino, b"empty")).ino == sub.ino and b.nlink == 2
    with err(errno.EINVAL):
        await fs.rename(R, b"a", sub.ino, b"loop")


async def test_unlinked_open_file_is_orphan_until_release(dev):
    fs = await Filesystem.mount(dev)
    fh, f = await fs.create(R, b"o", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"x" * 50000)
    free0 = fs.balloc.free
    await fs.unlink(R, b"o")
    assert fs.orphans == [f.ino] and fs.sb.orphan_head == f.ino
    assert await fs.read(fh, 0, 5) == b"xxxxx"          # still readable while open
    await fs.sync()
    # crash now: the next mount frees the orphan
    dev.power_fail()
    fs2 = await Filesystem.mount(dev)
    assert fs2.orphans == [] and fs2.sb.orphan_head == 0
    assert fs2.balloc.free == free0 + 13
    await fs2.unmount()
    await assert_clean(dev)
    # and without a crash, the last release frees it
    fs3 = await Filesystem.mount(dev)
    fh, f = await fs3.create(R, b"p", 0o644, os.O_RDWR)
    await fs3.unlink(R, b"p")
    assert fs3.orphans == [f.ino]
    await fs3.release(fh)
    assert fs3.orphans == []
    with err(errno.ENOENT):
        await fs3.getattr(f.ino)
    await fs3.unmount()
    await assert_clean(dev)


async def test_xattrs(fs):
    fh, f = await fs.create(R, b"x", 0o644, 0)
    await fs.release(fh)
    await fs.setxattr(f.ino, b"user.a", b"1")
    await fs.setxattr(f.ino, b"trusted.b", b"\0\xff")
    await fs.setxattr(f.ino, b"security.c", b"")
    with err(errno.EEXIST):
        await fs.setxattr(f.ino, b"user.a", b"2", flags=1)
    with err(errno.ENODATA):
        await fs.setxattr(f.ino, b"user.zz", b"2", flags=2)
    with err(errno.ENOSPC):
        await fs.setxattr(f.ino, b"user.big", b"v" * (fmt.XATTR_SPACE - 14))
    fs2 = await remount(fs)
    assert await fs2.listxattr(f.ino) == [b"security.c", b"trusted.b", b"user.a"]
    assert await fs2.getxattr(f.ino, b"trusted.b") == b"\0\xff"
    await fs2.removexattr(f.ino, b"user.a")
    await fs2.removexattr(f.ino, b"trusted.b")
    await fs2.removexattr(f.ino, b"security.c")
    assert (await fs2.getattr(f.ino)).xattr_block == 0
    await fs2.unmount()
    await assert_clean(fs.dev)


async def test_dax_flag_inherited(fs):
    d = await fs.mkdir(R, b"d")
    await fs.setxattr(d.ino, b"user.daxfs.dax", b"1")
    assert d.flags & fmt.IFLAG_DAX
    fh, f = await fs.create(d.ino, b"f", 0o644, 0)
    await fs.release(fh)
    sub = await fs.mkdir(d.ino, b"sub")
    plain = await fs.mkdir(R, b"plain")
    assert f.flags & fmt.IFLAG_DAX and sub.flags & fmt.IFLAG_DAX
    assert not plain.flags & fmt.IFLAG_DAX
    fs2 = await remount(fs)
    f2 = await fs2.lookup(d.ino, b"f")
    assert f2.flags & fmt.IFLAG_DAX
    assert await fs2.getxattr(f2.ino, b"user.daxfs.dax") == b"1"
    await fs2.unmount()


async def test_enospc_leaves_no_corruption():
    dev = await make_dev(4 * MiB)
    fs = await Filesystem.mount(dev)
    fh, f = await fs.create(R, b"big", 0o644, os.O_RDWR)
    off = 0
    short = 0
    with err(errno.ENOSPC):
        while True:
            n = await fs.write(fh, off, b"z" * 65536)
            short += n < 65536          # the device fills up with a short write first
            off += n
    assert f.size == off and short == 1
    assert await fs.read(fh, off - 10, 20) == b"z" * 10
    # metadata operations fail cleanly too once the space is gone
    names = 0
    try:
        while True:
            await fs.mkdir(R, b"d%d" % names)
            names += 1
    except FsError as e:
        assert e.errno == errno.ENOSPC
    await fs.release(fh)
    await fs.unmount()
    await assert_clean(dev)
    fs = await Filesystem.mount(dev)
    await fs.unlink(R, b"big")
    fh, g = await fs.create(R, b"again", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"y" * 65536 * 8)       # freed space is usable again
    await fs.release(fh)
    await fs.unmount()
    await assert_clean(dev)


async def test_read_only_mount_refuses_changes(dev):
    fs = await Filesystem.mount(dev)
    fh, _ = await fs.create(R, b"f", 0o644, 0)
    await fs.release(fh)
    await fs.sync()                     # committed but not unmounted: journal to replay
    ro = await Filesystem.mount(dev, read_only=True)
    assert await ro.listdir(R) == [b"lost+found", b"f"]
    for call in (ro.mkdir(R, b"x"), ro.unlink(R, b"f"), ro.setxattr(R, b"user.a", b"1")):
        with err(errno.EROFS):
            await call
    with err(errno.EROFS):
        await ro.open((await ro.lookup(R, b"f")).ino, os.O_WRONLY)
    await fs.unmount()


async def test_access_and_ownership(fs):
    user = Ctx(uid=1000, gid=1000)
    d = await fs.mkdir(R, b"d", 0o755)
    fh, f = await fs.create(d.ino, b"f", 0o640, 0, ctx=user)
    await fs.release(fh)
    assert (f.uid, f.gid) == (1000, 1000)
    assert await fs.access(f.ino, os.R_OK | os.W_OK, user)
    with err(errno.EACCES):
        await fs.access(f.ino, os.R_OK, Ctx(uid=2000, gid=2000))
    assert await fs.access(f.ino, os.R_OK, Ctx(uid=2000, gid=1000))
    with err(errno.EACCES):
        await fs.access(d.ino, os.W_OK, user)
    g = await fs.mkdir(R, b"g", 0o2775)
    await fs.setattr(g.ino, gid=50)
    sub = await fs.mkdir(g.ino, b"sub", 0o755, ctx=user)
    assert sub.gid == 50 and sub.mode & stat.S_ISGID


async def test_statfs_real_numbers(fs):
    s0 = await fs.statfs()
    assert s0.blocks == fs.sb.total_blocks and s0.bsize == 4096 and s0.namemax == 255
    fh, _ = await fs.create(R, b"f", 0o644, os.O_RDWR)
    s1 = await fs.statfs()
    assert s0.bfree == s1.bfree and s0.ffree - s1.ffree == 1   # the root has its block
    await fs.write(fh, 0, b"q" * (100 * 4096))
    await fs.release(fh)
    s2 = await fs.statfs()
    assert s1.bfree - s2.bfree == 100


async def test_sparse_multi_gib_file():
    dev = await make_dev(64 * MiB)
    fs = await Filesystem.mount(dev)
    fh, f = await fs.create(R, b"sparse", 0o644, os.O_RDWR)
    offsets = [k * (1 << 30) + k * 4096 for k in range(1, 9)]   # up to ~8 GiB
    for o in offsets:
        await fs.write(fh, o, b"M" * 5000)
    # 16 data blocks in 8 extents, and an extent-chain block: 8 do not fit inline
    assert f.size == offsets[-1] + 5000 and f.blocks == 16 + 1 and fmt.INLINE_EXTENTS < 8
    await fs.release(fh)
    await fs.unmount()
    await assert_clean(dev)
    fs = await Filesystem.mount(dev)
    f = await fs.lookup(R, b"sparse")
    fh = await fs.open(f.ino, os.O_RDONLY)
    for o in offsets:
        want = (bytes(10) + b"M" * 5000 + bytes(10))[:f.size - (o - 10)]
        assert await fs.read(fh, o - 10, 5020) == want
    await fs.release(fh)
    await fs.unmount()


async def test_many_extents_use_chain_blocks():
    dev = await make_dev(64 * MiB)
    fs = await Filesystem.mount(dev)
    fh, f = await fs.create(R, b"frag", 0o644, os.O_RDWR)
    for k in range(600):                # every other block: 600 separate extents
        await fs.write(fh, k * 8192, b"%06d" % k)
    assert len(f.ext_lblk) == 600 and len(f.chain) == 3
    await fs.release(fh)
    await fs.unmount()
    await assert_clean(dev)
    fs = await Filesystem.mount(dev)
    f = await fs.lookup(R, b"frag")
    fh = await fs.open(f.ino, os.O_RDWR)
    assert await fs.read(fh, 599 * 8192, 6) == b"000599"
    await fs.setattr(f.ino, size=8192 * 4)
    assert len(f.chain) == 0 and len(f.ext_lblk) == 4
    await fs.release(fh)
    await fs.unmount()
    await assert_clean(dev)


async def test_readdir_large_directory_persists():
    fs = await Filesystem.mount(await make_dev(64 * MiB, total_inodes=30000))
    d = await fs.mkdir(R, b"big")
    n = 20000
    for i in range(n):
        fh, _ = await fs.create(d.ino, b"n%05d" % i, 0o644, 0)
        await fs.release(fh)
    names = await fs.listdir(d.ino)
    assert len(names) == n and len(set(names)) == n
    fs2 = await remount(fs)
    d2 = await fs2.lookup(R, b"big")
    got = []
    cookie = 0
    while True:          # resume listing in chunks, like the kernel does
        chunk = []
        async for name, inode, nxt in fs2.readdir(d2.ino, cookie):
            chunk.append(name)
            cookie = nxt
            if len(chunk) == 1000:
                break
        if not chunk:
            break
        got += chunk
    assert sorted(got) == sorted(names)
    for i in range(0, n, 2):
        await fs2.unlink(d2.ino, b"n%05d" % i)
    assert len(await fs2.listdir(d2.ino)) == n // 2
    await fs2.unmount()
    await assert_clean(fs.dev)


async def test_relatime(fs):
    fh, f = await fs.create(R, b"f", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"x")
    seen = []
    fs.on_invalidate = seen.append
    await fs.read(fh, 0, 1)
    assert f.atime_ns > f.mtime_ns and seen == [f.ino]
    a = f.atime_ns
    await fs.read(fh, 0, 1)                     # not again until the next change
    assert f.atime_ns == a and seen == [f.ino]
    await fs.release(fh)


async def test_relatime_during_a_commit(fs):
    """A read while another task holds the lock (a commit packing the dirty inodes) still
    updates atime, with the read's time, once that task lets go and before the next waiter
    gets in; the kernel is told then. It used to be skipped for good: `cat` of files while
    the periodic commit ran left their old atime."""
    fh, f = await fs.create(R, b"f", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"x")
    seen = []
    fs.on_invalidate = seen.append
    order = []
    inside, leave = trio.Event(), trio.Event()

    async def commit():
        async with fs.lock:
            inside.set()
            await leave.wait()
            order.append(("commit done", f.atime_ns))

    async def next_waiter():
        async with fs.lock:
            order.append(("next", f.atime_ns))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(commit)
        await inside.wait()
        nursery.start_soon(next_waiter)
        await trio.testing.wait_all_tasks_blocked()
        before = time.time_ns()
        await fs.read(fh, 0, 1)
        assert f.atime_ns < f.mtime_ns and seen == []      # not yet: the lock is held
        leave.set()
    assert before <= f.atime_ns <= time.time_ns() and seen == [f.ino]
    assert order[0][1] < f.mtime_ns and order[1] == ("next", f.atime_ns)
    await fs.release(fh)


async def test_no_atime_while_frozen(fs):
    """As Linux's touch_atime: a read of a frozen filesystem changes nothing."""
    fh, f = await fs.create(R, b"f", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"x")
    a = f.atime_ns
    await fs.freeze()
    await fs.read(fh, 0, 1)
    fs.thaw()
    await fs.sync()                 # takes and lets go of the lock: nothing was put off
    assert f.atime_ns == a
    await fs.read(fh, 0, 1)
    assert f.atime_ns > f.mtime_ns
    await fs.release(fh)


async def test_inode_freed_and_reused_in_one_transaction(dev):
    """Found by the model test: the freed and the new inode with the same number were both
    in the transaction, and the free slot could be written over the new inode."""
    for _ in range(20):
        fs = await Filesystem.mount(dev)
        fh, f = await fs.create(R, b"a", 0o644, os.O_RDWR)
        await fs.release(fh)
        await fs.sync()
        await fs.unlink(R, b"a")
        fs.ialloc.cursor = 1
        fh, g = await fs.create(R, b"b", 0o644, os.O_RDWR)
        await fs.release(fh)
        assert g.ino == f.ino and g.generation == f.generation + 1
        await fs.sync()
        dev.power_fail()
        fs = await Filesystem.mount(dev)
        assert (await fs.lookup(R, b"b")).ino == g.ino
        await fs.unlink(R, b"b")
        await fs.unmount()
        await assert_clean(dev)


async def test_periodic_commit(dev, autojump_clock):
    """Changes nobody fsyncs become durable within the commit interval (virtual time)."""
    import trio
    from daxfs.mount import Committer
    fs = await Filesystem.mount(dev)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(Committer(fs, 5.0).run)
        await trio.sleep(0.5)
        c0 = fs.journal.commits
        await fs.mkdir(R, b"later")
        await trio.sleep(3)
        assert fs.journal.commits == c0
        await trio.sleep(2)
        assert fs.journal.commits == c0 + 1
        await trio.sleep(20)                       # nothing dirty: no empty commits
        assert fs.journal.commits == c0 + 1
        nursery.cancel_scope.cancel()
    dev.power_fail()
    fs2 = await Filesystem.mount(dev)
    assert await fs2.listdir(R) == [b"lost+found", b"later"]
    await fs2.unmount()


async def test_inodes_know_they_are_dirty(fs):
    fh, f = await fs.create(R, b"d", 0o644, os.O_RDWR)
    assert f.dirty
    await fs.fsync(fh)
    assert not f.dirty
    await fs.write(fh, 0, b"x")
    assert f.dirty
    await fs.commit()
    assert not f.dirty
    await fs.release(fh)


async def test_100k_entry_directory():
    """100,000 names in one directory: create, look up, list in resumable chunks, remove
    some, remount, list again, fsck."""
    dev = await make_dev(128 * MiB, total_inodes=100_100)
    fs = await Filesystem.mount(dev)
    d = await fs.mkdir(R, b"huge")
    n = 100_000
    for i in range(n):
        await fs.mknod(d.ino, b"entry-%06d" % i, stat.S_IFREG | 0o644)
    for i in range(0, n, 997):
        assert (await fs.lookup(d.ino, b"entry-%06d" % i)).ino
    got, cookie = [], 0
    while True:
        chunk = []
        async for name, _, nxt in fs.readdir(d.ino, cookie):
            chunk.append(name)
            cookie = nxt
            if len(chunk) == 4096:
                break
        if not chunk:
            break
        got += chunk
        if len(got) == 4096 * 5:              # removals in the middle of a listing
            for i in range(0, n, 10):
                await fs.unlink(d.ino, b"entry-%06d" % i)
    assert len(got) == len(set(got))
    assert set(got) >= {b"entry-%06d" % i for i in range(n) if i % 10}
    await fs.unmount()
    await assert_clean(dev)
    fs = await Filesystem.mount(dev)
    d = await fs.lookup(R, b"huge")
    assert len(await fs.listdir(d.ino)) == n - n // 10
    await fs.unmount()


async def test_read_racing_block_reuse_never_sees_other_files_data(dev):
    """A read waits on the device without the lock; if the blocks it mapped are freed and
    reused meanwhile, it must not return the new owner's data."""
    import trio
    fs = await Filesystem.mount(dev)
    fh, a = await fs.create(R, b"a", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"A" * 8192)
    await fs.sync()
    gate = trio.Event()
    entered = trio.Event()
    real_read = dev.read

    async def slow_read(sector, nbytes):
        data = await real_read(sector, nbytes)
        if not gate.is_set():
            entered.set()
            await gate.wait()
        return await real_read(sector, nbytes) if gate.is_set() else data

    result = []
    async with trio.open_nursery() as nursery:
        dev.read = slow_read

        async def reader():
            result.append(await fs.read(fh, 0, 8192))
        nursery.start_soon(reader)
        await entered.wait()
        dev.read = real_read
        await fs.setattr(a.ino, size=0)                   # frees a's blocks
        async with fs.lock:                                # make them reusable now
            await fs._commit()
            await fs.journal.reset()
            fs.balloc.release_pending()
        fs.balloc.cursor = fs.sb.data_start
        gh, b = await fs.create(R, b"b", 0o644, os.O_RDWR)
        await fs.write(gh, 0, b"B" * 8192)
        await fs.release(gh)
        gate.set()
    assert b"B" not in result[0]
    await fs.release(fh)
    await fs.unmount()


async def test_commit_failure_turns_read_only(dev):
    """A device that fails writes must not leave a half-known state behind: the commit
    fails with EIO, the filesystem refuses further changes, the device stays consistent."""
    fs = await Filesystem.mount(dev)
    await fs.mkdir(R, b"kept")
    await fs.sync()

    async def broken_write(*a, **kw):
        raise OSError(errno.EIO, "I/O error")
    dev.write = broken_write
    await fs.mkdir(R, b"lost")
    with err(errno.EIO):
        await fs.sync()
    with err(errno.EROFS):
        await fs.mkdir(R, b"more")
    del dev.write
    dev.power_fail()
    fs2 = await Filesystem.mount(dev)
    assert await fs2.listdir(R) == [b"lost+found", b"kept"]
    await fs2.unmount()
    await assert_clean(dev)


async def test_a_slow_data_write_holds_only_its_file(dev):
    """The data of a write goes to the device under the file's own lock: while it is on
    its way, other files are created, written and committed, and a read of the same file
    does not wait; a commit meanwhile cannot make the write's new blocks reachable."""
    import trio
    fs = await Filesystem.mount(dev)
    fh, f = await fs.create(R, b"slow", 0o644, os.O_RDWR)
    await fs.fsync(fh)
    gate, entered = trio.Event(), trio.Event()
    orig = dev.write

    async def write(sector, data, **kw):
        if len(data) == 65536 and not gate.is_set():
            entered.set()
            await gate.wait()
        return await orig(sector, data, **kw)
    dev.write = write
    with trio.fail_after(20):                    # with one lock for all, this would hang
        async with trio.open_nursery() as n:
            n.start_soon(fs.write, fh, 0, b"s" * 65536)
            await entered.wait()
            fh2, g = await fs.create(R, b"other", 0o644, os.O_RDWR)
            await fs.write(fh2, 0, b"o" * 100)
            await fs.fsync(fh2)                      # a full commit, during the slow write
            assert await fs.read(fh, 0, 10) == b""   # not written yet, and no waiting
            assert not f.ext_lblk                    # its blocks are reserved, not the file's
            await fs.release(fh2)
            gate.set()
    assert await fs.read(fh, 0, 65536) == b"s" * 65536
    await fs.release(fh)
    await fs.unmount()
    await assert_clean(dev)
