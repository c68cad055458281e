"""What fstests' generic tests found through a real mount: directory listings at the
getdents level (`.` and `..`), the whole timestamp range a user can set, kernel attribute
caches kept fresh, POSIX ACLs."""
import ctypes
import os
import struct
import time

import trio

from tests.daxfs.test_mount import Mount, image, m, mntdir, run   # noqa: F401 (fixtures)

SYS_getdents64 = 217            # x86_64
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def getdents(fd: int, bufsize: int = 32768) -> list[tuple[bytes, int, int]]:
    """One getdents64 call: [(name, d_ino, d_off), ...] as the kernel hands them over."""
    buf = ctypes.create_string_buffer(bufsize)
    n = _libc.syscall(SYS_getdents64, fd, buf, bufsize)
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    out, pos = [], 0
    raw = buf.raw[:n]
    while pos < n:
        ino, off, reclen, _type = struct.unpack_from("<QqHB", raw, pos)
        name = raw[pos + 19:pos + reclen].split(b"\0", 1)[0]
        out.append((name, ino, off))
        pos += reclen
    return out


def listing(path, bufsize: int = 32768, start: int | None = None):
    """Every entry getdents returns for path, from offset start (lseek) to the end."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if start is not None:
            os.lseek(fd, start, os.SEEK_SET)
        out = []
        while True:
            part = getdents(fd, bufsize)
            if not part:
                return out
            out += part
    finally:
        os.close(fd)


def test_dot_and_dotdot_in_listings(m):
    d = m.mnt / "d"
    sub = d / "sub"
    sub.mkdir(parents=True)
    for i in range(40):
        (sub / f"f{i:02d}").touch()
    (sub / "child").mkdir()

    ents = listing(sub)
    names = [e[0] for e in ents]
    assert names[:2] == [b".", b".."]            # first, as every Linux filesystem does
    assert sorted(names[2:]) == sorted([f"f{i:02d}".encode() for i in range(40)] + [b"child"])
    inos = {e[0]: e[1] for e in ents}
    assert inos[b"."] == os.stat(sub).st_ino
    assert inos[b".."] == os.stat(d).st_ino
    assert inos[b"f07"] == os.stat(sub / "f07").st_ino

    # the root's parent is itself
    root = {e[0]: e[1] for e in listing(m.mnt)}
    assert root[b"."] == root[b".."] == os.stat(m.mnt).st_ino

    # resumable at every offset the kernel handed out, with entries one per call
    small = listing(sub, bufsize=64)
    assert [e[0] for e in small] == names
    for i, (_, _, off) in enumerate(ents):
        assert [e[0] for e in listing(sub, start=off)] == names[i + 1:]

    # `ls -a` (what users see), and lookups of . and .. are what they always were
    assert run("ls", "-a", sub).stdout.split()[:2] == [".", ".."]
    assert os.stat(sub / "child" / "..").st_ino == os.stat(sub).st_ino
    assert os.stat(sub / ".").st_ino == os.stat(sub).st_ino

    # a renamed directory's .. follows it
    os.rename(sub / "child", d / "moved")
    assert {e[0]: e[1] for e in listing(d / "moved")}[b".."] == os.stat(d).st_ino

    # the lookup counts are right: the kernel forgets what readdirplus handed it (drop the
    # dentry cache), then rmdir, unmount and fsck (in the fixture) find nothing left over
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")
    for i in range(40):
        (sub / f"f{i:02d}").unlink()
    sub.rmdir()


def test_atime_changes_reach_the_kernel_after_a_burst(m):
    """relatime updates made on reads are pushed to the kernel's attribute cache (60 s
    timeout) by invalidation; a burst of more of them than the old 1000-slot queue held
    must leave none stale."""
    d = m.mnt / "many"
    d.mkdir()
    n = 3000
    run("sh", "-ec", f'cd {d}; i=0; while [ $i -lt {n} ]; do echo x > f$i; i=$((i+1)); done; '
        'touch -a -d 2001-01-01 f*')
    old = {i: os.stat(d / f"f{i}").st_atime_ns for i in range(n)}   # now cached by the kernel
    assert all(v < 10**18 for v in old.values())
    run("sh", "-c", f"cat {d}/f* > /dev/null")
    deadline = time.monotonic() + 30
    stale = list(range(n))
    while stale and time.monotonic() < deadline:
        stale = [i for i in stale if os.stat(d / f"f{i}").st_atime_ns == old[i]]
        if stale:
            time.sleep(0.2)
    assert not stale, f"{len(stale)} files still show their old atime"


async def test_invalidations_coalesce_per_inode(fs, monkeypatch):
    """However many changes come before the invalidator runs, each inode is invalidated
    once per wake-up and none is dropped."""
    from daxfs import operations
    seen = []
    monkeypatch.setattr(operations.pyfuse3, "invalidate_inode",
                        lambda ino, attr_only=False: seen.append(ino))
    ops = operations.Operations(fs)
    for _ in range(5):
        for ino in range(2, 5002):
            ops.invalidate(ino)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ops.run_invalidator)
        with trio.move_on_after(20):
            while len(seen) < 5000:
                await trio.sleep(0.01)
            ops.invalidate(7)                   # a later change is invalidated again
            while len(seen) < 5001:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert len(seen) == 5001, f"{len(seen)} invalidations of 5001"
    assert sorted(seen[:5000]) == list(range(2, 5002)) and seen[5000] == 7
