"""What fstests' generic tests found through a real mount: directory listings at the
getdents level (`.` and `..`), the whole timestamp range a user can set, kernel attribute
caches kept fresh, POSIX ACLs."""
import ctypes
import os
import struct
import time

import trio

from tests.daxfs.test_mount import TOOLS, Mount, image, m, mntdir, run   # noqa: F401 (fixtures)

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


def fsync_path(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
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
    must leave none stale. (Files read while the periodic commit held the lock used to
    keep their old atime in daxfs itself: test_fs.test_relatime_during_a_commit.)"""
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


def test_every_timestamp_a_user_can_set(m):
    """Dates far outside 32- and 64-bit-nanosecond ranges are stored and returned as given
    and survive a remount; none of them brings the daemon down (fstests generic/634)."""
    dates = ["2486-07-02 20:20:24", "1600-01-01", "1901-12-13 20:45:52", "2038-01-19 03:14:07",
             "2514-05-30 01:53:03", "0000-01-01", "2147483647-12-31 23:59:59"]
    for i, date in enumerate(dates):
        f = m.mnt / f"t{i}"
        f.write_text(date)
        run("touch", "-d", f"{date} UTC", f)
    report = run("sh", "-c", f"TZ=UTC stat -c '%y %Y %n' {m.mnt}/t*").stdout
    fsync_path(m.mnt / "t0")                # a commit: the daemon must still be there
    assert os.path.ismount(m.mnt)
    for i, date in enumerate(dates):
        line = report.splitlines()[i]
        assert line.split()[0].lstrip("0") == date.split()[0].lstrip("0"), line
    m.unmount()
    m.mount()
    assert run("sh", "-c", f"TZ=UTC stat -c '%y %Y %n' {m.mnt}/t*").stdout == report


def test_utime_now_and_omit(m):
    f = m.mnt / "f"
    f.write_text("x")
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    before = os.stat(f)
    run("touch", f)                           # utimensat(UTIME_NOW, UTIME_NOW)
    st = os.stat(f)
    assert st.st_atime_ns == st.st_mtime_ns == st.st_ctime_ns > before.st_ctime_ns
    run("touch", "-m", "-d", "2001-02-03 UTC", f)   # atime UTIME_OMIT: left as it was
    st2 = os.stat(f)
    assert st2.st_atime_ns == st.st_atime_ns
    assert st2.st_mtime_ns == 981158400 * 10**9
    assert st2.st_ctime_ns >= st.st_ctime_ns
    run("touch", "-a", "-d", "2001-02-03 UTC", f)   # mtime UTIME_OMIT
    st3 = os.stat(f)
    assert st3.st_mtime_ns == st2.st_mtime_ns and st3.st_atime_ns == 981158400 * 10**9
    m.unmount()
    m.mount()
    st4 = os.stat(f)
    assert (st4.st_atime_ns, st4.st_mtime_ns, st4.st_ctime_ns) == \
        (st3.st_atime_ns, st3.st_mtime_ns, st3.st_ctime_ns)


async def test_a_failure_inside_a_commit_never_kills_the_daemon(image, mntdir, monkeypatch, caplog):
    """Whatever goes wrong inside a commit (here a struct.error, as an unencodable field
    once raised), the daemon keeps serving: the filesystem turns read-only with a logged
    error, what was committed before reads back, the periodic committer lives on."""
    import errno
    import logging

    from daxfs import journal
    from daxfs.mount import parse_options, serve

    broken = False
    real_commit = journal.Journal.commit

    async def commit(self, images):
        if broken:
            raise struct.error("argument out of range")    # not an OSError
        return await real_commit(self, images)
    monkeypatch.setattr(journal.Journal, "commit", commit)

    mo = parse_options(["allow_other", "commit=0.2"], str(image))
    caplog.set_level(logging.ERROR)
    async with trio.open_nursery() as nursery:
        ready = trio.Event()
        nursery.start_soon(lambda: serve(str(image), str(mntdir), mo, ready=ready.set))
        await ready.wait()
        sync = trio.to_thread.run_sync
        try:
            await sync((mntdir / "kept").write_text, "committed before")
            await sync(fsync_path, mntdir / "kept")      # (sync(2) does not reach FUSE)
            await sync(fsync_path, mntdir)
            broken = True
            await sync((mntdir / "lost").write_text, "never committed")
            # the periodic commit (0.2 s) meets the failure, not an fsync
            with trio.fail_after(30):
                while not any("commit failed" in r.getMessage() for r in caplog.records):
                    await trio.sleep(0.1)
            try:
                await sync((mntdir / "more").write_text, "x")
                raise AssertionError("a write succeeded on a filesystem that went read-only")
            except OSError as e:
                assert e.errno in (errno.EROFS, errno.EIO), e
            assert await sync((mntdir / "kept").read_text) == "committed before"
            assert sorted(await sync(os.listdir, mntdir)) == ["kept", "lost", "lost+found"]
            await trio.sleep(0.5)           # a few more periodic commits: still serving
            assert await sync(os.path.ismount, mntdir)
            assert (await sync(os.statvfs, mntdir)).f_bsize == 4096
        finally:
            await sync(lambda: run("fusermount3", "-u", mntdir, check=False))
    assert any(r.levelno >= logging.ERROR and "read-only" in r.getMessage()
               for r in caplog.records)
    broken = False
    m = Mount(image, mntdir)
    m.fsck()
    m.mount()
    try:
        assert (mntdir / "kept").read_text() == "committed before"
    finally:
        m.unmount()


USERS = {"nobody": 65534, "daemon": 1}


def as_user(user, *cmd):
    uid = USERS[user]
    return run("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd,
               check=False)


def test_posix_acls(m):
    """setfacl/getfacl round trip, the kernel enforcing the ACL, mode and ACL in step both
    ways, default ACLs inherited by new files and directories, kept across a remount."""
    f = m.mnt / "f"
    f.write_text("secret")
    f.chmod(0o600)
    assert as_user("nobody", "cat", f).returncode != 0
    run("setfacl", "-m", "u:nobody:r", f)
    assert as_user("nobody", "cat", f).stdout == "secret"            # enforced by the kernel
    assert as_user("daemon", "cat", f).returncode != 0
    assert stat_mode(f) == 0o640                                      # group bits = mask
    assert run("getfacl", "-c", f).stdout.split() == [
        "user::rw-", "user:nobody:r--", "group::---", "mask::r--", "other::---"]
    f.chmod(0o600)                                                    # mask follows chmod
    assert "mask::---" in run("getfacl", "-c", f).stdout
    assert as_user("nobody", "cat", f).returncode != 0
    run("setfacl", "-b", f)                                          # back to the mode alone
    assert "+" not in run("ls", "-l", f).stdout.split()[0]

    d = m.mnt / "d"
    d.mkdir()
    run("setfacl", "-d", "-m", "u:nobody:rwx,g::r-x,o::---", d)
    run("sh", "-c", f"umask 0; touch {d}/new; mkdir {d}/sub")
    new_acl = run("getfacl", "-c", d / "new").stdout
    assert "user:nobody:rwx" in new_acl and "other::---" in new_acl
    assert stat_mode(d / "new") & 0o007 == 0
    sub_acl = run("getfacl", "-c", d / "sub").stdout
    assert "default:user:nobody:rwx" in sub_acl and "user:nobody:rwx" in sub_acl
    assert as_user("daemon", "cat", d / "new").returncode != 0
    assert as_user("nobody", "sh", "-c", f"echo hi > {d}/new").returncode == 0

    # a default ACL, not the umask, decides (needs FUSE_DONT_MASK: scripts/setup.sh builds
    # the library that asks for it); without one, the umask applies as always
    assert (TOOLS.parent / "daxfs/native/libdaxfs-fusecaps.so").exists(), \
        "run scripts/setup.sh: it builds daxfs/native/libdaxfs-fusecaps.so"
    g = m.mnt / "g"
    g.mkdir()
    run("setfacl", "-d", "--set", "u::rwx,g::rwx,o::-", g)
    run("sh", "-c", f"umask 022; mkdir {g}/sub; touch {g}/file; touch {m.mnt}/plain; "
        f"mkdir {m.mnt}/plaindir")
    assert "group::rwx" in run("getfacl", "-c", g / "sub").stdout.split()   # generic/319
    assert stat_mode(g / "sub") == 0o770 and stat_mode(g / "file") == 0o660
    assert stat_mode(m.mnt / "plain") == 0o644 and stat_mode(m.mnt / "plaindir") == 0o755

    before = run("getfacl", "-cR", m.mnt).stdout
    m.unmount()
    m.mount()
    assert run("getfacl", "-cR", m.mnt).stdout == before


def test_setfacl_clears_sgid_of_outsiders(m):
    """As ext4 (fstests generic/375): a mode change through an ACL by a user outside the
    file's group clears set-group-ID; inside the group it stays."""
    f = m.mnt / "f"
    f.touch()
    os.chown(f, 65534, 65534)
    f.chmod(0o2755)
    assert as_user("nobody", "setfacl", "-m", "u::rwx,g::rwx,o::rwx", f).returncode == 0
    assert stat_mode(f) == 0o2777
    os.chown(f, 65534, 0)
    f.chmod(0o2755)
    assert as_user("nobody", "setfacl", "-m", "u::rwx,g::rwx,o::rwx", f).returncode == 0
    assert stat_mode(f) == 0o777


def stat_mode(path) -> int:
    return os.stat(path).st_mode & 0o7777


def test_atime_mount_options(image, mntdir):
    """strictatime updates atime on every read, relatime on the first after a change;
    nodiratime and diratime are accepted (fstests generic/003 cycles through them all)."""
    m = Mount(image, mntdir)
    m.mount("allow_other,default_permissions,nodiratime")
    try:
        f = mntdir / "f"
        f.write_text("x")
        run("cat", f)
        first = os.stat(f).st_atime_ns
        time.sleep(0.05)
        run("cat", f)
        assert os.stat(f).st_atime_ns == first          # relatime: once after a change
    finally:
        m.unmount()
    m.mount("allow_other,default_permissions,strictatime,diratime")
    try:
        run("cat", f)
        a1 = os.stat(f).st_atime_ns
        time.sleep(0.05)
        run("cat", f)
        assert os.stat(f).st_atime_ns > a1 > first       # strictatime: every read
    finally:
        m.unmount()
    m.fsck()


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 128)]


def name_to_handle(path) -> _FileHandle:
    fh = _FileHandle(handle_bytes=128)
    mount_id = ctypes.c_int()
    if _libc.name_to_handle_at(-100, os.fsencode(path), ctypes.byref(fh),
                               ctypes.byref(mount_id), 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))
    return fh


def open_by_handle(mount_fd: int, fh: _FileHandle) -> int:
    fd = _libc.open_by_handle_at(mount_fd, ctypes.byref(fh), os.O_RDONLY)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return fd


def test_open_by_handle_after_the_kernel_forgot(m):
    """File handles (NFS export, open_by_handle_at) of files and directories open again
    after the kernel dropped its inodes; the handle of a removed file is stale
    (fstests generic/426, 467)."""
    import errno
    d = m.mnt / "d"
    d.mkdir()
    f = d / "f"
    f.write_text("by handle")
    gone = d / "gone"
    gone.write_text("x")
    handles = {p: name_to_handle(p) for p in (d, f, gone)}
    gone.unlink()
    with open("/proc/sys/vm/drop_caches", "w") as c:
        c.write("2")
    mfd = os.open(m.mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = open_by_handle(mfd, handles[f])
        assert os.read(fd, 100) == b"by handle"
        os.close(fd)
        fd = open_by_handle(mfd, handles[d])
        assert os.fstat(fd).st_ino == os.stat(d).st_ino
        os.close(fd)
        try:
            os.close(open_by_handle(mfd, handles[gone]))
            raise AssertionError("a removed file opened by its handle")
        except OSError as e:
            assert e.errno == errno.ESTALE
    finally:
        os.close(mfd)


def test_mounting_a_mounted_device_again_shares_it(image, mntdir, tmp_path):
    """As on Linux, a second mount of a mounted device is another view of the same file
    system (fstests generic/732 renames through one and reads through the other)."""
    other = tmp_path / "second"
    other.mkdir()
    helper = TOOLS / "mount.fuse.daxfs"
    m = Mount(image, mntdir)
    m.mount(helper=True)
    try:
        r = run(helper, image, other, "-o", "allow_other,default_permissions", check=False)
        assert r.returncode == 0, r.stderr
        (mntdir / "A").mkdir()
        (mntdir / "A" / "f").write_text("one file system")
        os.rename(other / "A" / "f", other / "g")
        assert (mntdir / "g").read_text() == "one file system"
        run("umount", other)
        assert (mntdir / "g").exists()            # the first mount is untouched
    finally:
        if os.path.ismount(other):
            run("umount", "-l", other, check=False)
        m.unmount()
    m.fsck()


def test_rename_whiteout(m):
    """renameat2(RENAME_WHITEOUT), as overlayfs uses it: the file moves and a whiteout
    (character device 0:0) takes its old name in the same step (fstests generic/078)."""
    import errno
    import stat as st
    RENAME_WHITEOUT, RENAME_EXCHANGE = 4, 2
    src, dst = m.mnt / "src", m.mnt / "dst"
    src.write_text("moved")

    def renameat2(a, b, flags):
        if _libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), flags) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    renameat2(src, dst, RENAME_WHITEOUT)
    assert dst.read_text() == "moved"
    s = os.lstat(src)
    assert st.S_ISCHR(s.st_mode) and s.st_rdev == 0
    assert sorted(os.listdir(m.mnt)) == ["dst", "lost+found", "src"]
    try:
        renameat2(dst, src, RENAME_WHITEOUT | RENAME_EXCHANGE)
        raise AssertionError("whiteout with exchange accepted")
    except OSError as e:
        assert e.errno == errno.EINVAL
    m.unmount()
    m.mount()
    assert st.S_ISCHR(os.lstat(src).st_mode) and dst.read_text() == "moved"
