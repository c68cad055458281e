"""Real FUSE mounts of an image file, driven by ordinary shell tools.

Each test gets a fresh image in tmp_path, mounted by the daxfs command (which returns once
the mount is live); teardown unmounts it, waits for the daemon to release the image (its
the daemon's exit, which comes after its last commit), and checks that fsck finds nothing
wrong.
"""
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from dmemu.process import wait_for_exit
from tests.helpers import daxfs_daemon, unmount

TOP = Path(__file__).resolve().parents[2]
TOOLS = TOP / "tools"
DOCS = Path("/usr/share/doc")

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None or os.geteuid() != 0,
    reason="real FUSE mounts need /dev/fuse, fusermount3 and root")


def run(*cmd, check=True, user=None, **kw):
    if user is not None:
        cmd = ("setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups") + cmd
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def sh(script, **kw):
    return run("sh", "-ec", script, **kw)


def is_mounted(mnt) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(mnt) for line in f)


class Mount:
    def __init__(self, image: Path, mnt: Path):
        self.image, self.mnt = image, mnt

    def mount(self, opts="allow_other,default_permissions", helper=False):
        if helper:
            r = run(TOOLS / "mount.fuse.daxfs", self.image, self.mnt, "-o", opts, check=False)
        else:
            r = run(TOOLS / "daxfs", self.image, self.mnt, "-o", opts, check=False)
        assert r.returncode == 0, r.stderr
        assert is_mounted(self.mnt)       # the command returned only once it was live
        return self

    def unmount(self, cmd=None):
        if cmd is None:
            unmount(self.mnt)     # waits for the daemon to commit and exit
            return
        pid = daxfs_daemon(self.mnt)
        if is_mounted(self.mnt):
            r = run(*cmd, self.mnt, check=False)
            # the daemon may have unmounted itself meanwhile (SIGTERM)
            assert r.returncode == 0 or not is_mounted(self.mnt), r.stderr
        if pid is not None:
            assert wait_for_exit(pid, 120), f"daxfs daemon {pid} still runs after {cmd}"

    def fsck(self):
        r = run(TOOLS / "fsck.daxfs", "-n", self.image, check=False)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def image(tmp_path):
    img = tmp_path / "fs.img"
    with open(img, "wb") as f:
        f.truncate(512 << 20)
    run(TOOLS / "mkfs.daxfs", "-L", "test", img)
    return img


@pytest.fixture
def mntdir():
    """A mount point other users can reach (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="daxfs-mnt-"))
    d.chmod(0o755)
    yield d
    if is_mounted(d):           # a test that failed half-way: never leave a mount behind
        unmount(d, lazy=True)
    if not is_mounted(d):
        d.rmdir()


@pytest.fixture
def m(image, mntdir):
    mount = Mount(image, mntdir)
    yield mount.mount()
    mount.unmount()
    mount.fsck()


def test_files_stat_and_persistence(m):
    mnt = m.mnt
    sh(f"echo hello > {mnt}/a; mkdir -p {mnt}/d/e; ln {mnt}/a {mnt}/d/hard; "
       f"ln -s ../a {mnt}/d/sym; chmod 0640 {mnt}/a")
    st = os.stat(mnt / "a")
    assert st.st_size == 6 and stat.S_IMODE(st.st_mode) == 0o640 and st.st_nlink == 2
    assert os.stat(mnt / "d").st_nlink == 3
    assert run("stat", "-c", "%s %h %F", mnt / "d/sym").stdout.split()[0] == "4"
    assert (mnt / "d/sym").read_text() == "hello\n"
    assert os.readlink(mnt / "d/sym") == "../a"
    m.unmount(cmd=("umount",))           # umount(8) too ends the daemon after its commit
    m.fsck()
    m.mount()
    assert (mnt / "d/hard").read_text() == "hello\n"
    assert sorted(os.listdir(mnt / "d")) == ["e", "hard", "sym"]


def test_cp_tar_find_roundtrip(m, tmp_path):
    src = DOCS
    run("cp", "-a", src, m.mnt / "doc")
    run("diff", "-r", "--no-dereference", src, m.mnt / "doc")
    n_src = len(run("find", src).stdout.splitlines())
    assert len(run("find", m.mnt / "doc").stdout.splitlines()) == n_src
    out = tmp_path / "out"
    out.mkdir()
    sh(f"tar -C {m.mnt} -cf - doc | tar -C {out} -xf -")
    run("diff", "-r", "--no-dereference", src, out / "doc")
    run("mv", m.mnt / "doc", m.mnt / "doc2")
    run("rm", "-rf", m.mnt / "doc2")
    assert os.listdir(m.mnt) == ["lost+found"]


def test_dd_large_and_sparse(m):
    f = m.mnt / "big"
    run("dd", "if=/dev/urandom", f"of={f}", "bs=1M", "count=48", "conv=fsync", "status=none")
    data = f.read_bytes()
    assert len(data) == 48 << 20
    m.unmount()
    m.mount()
    assert hashlib.sha256(f.read_bytes()).digest() == hashlib.sha256(data).digest()
    s = m.mnt / "sparse"
    run("dd", "if=/dev/zero", f"of={s}", "bs=4096", "count=1", "seek=1310720", "status=none")
    st = os.stat(s)
    assert st.st_size == 5 * (1 << 30) + 4096
    assert st.st_blocks <= 8 * 2
    with open(s, "rb") as fh:
        fh.seek(3 << 30)
        assert fh.read(8192) == bytes(8192)
    run("truncate", "-s", "100", s)
    assert os.stat(s).st_size == 100 and os.stat(s).st_blocks <= 8


def test_df_real_numbers(m):
    before = os.statvfs(m.mnt)
    assert before.f_bsize == 4096 and before.f_blocks == (512 << 20) // 4096
    assert before.f_namemax == 255
    run("dd", "if=/dev/zero", f"of={m.mnt}/f", "bs=1M", "count=8", "status=none")
    after = os.statvfs(m.mnt)
    assert before.f_bfree - after.f_bfree >= 2048
    assert before.f_ffree - after.f_ffree == 1
    df = run("df", "-B4096", "--output=size", m.mnt).stdout.split()
    assert int(df[-1]) == before.f_blocks


def test_xattrs_shell(m):
    if shutil.which("setfattr") is None:
        pytest.skip("setfattr/getfattr missing: install the Debian package 'attr'")
    f = m.mnt / "x"
    f.write_text("x")
    run("setfattr", "-n", "user.color", "-v", "blue", f)
    run("setfattr", "-n", "trusted.t", "-v", "0x00ff", f)
    out = run("getfattr", "-d", "-m", "-", "--absolute-names", f).stdout
    assert 'user.color="blue"' in out and "trusted.t=" in out
    run("setfattr", "-x", "user.color", f)
    r = run("getfattr", "-n", "user.color", f, check=False)
    assert r.returncode != 0 and "No such attribute" in r.stderr
    assert os.getxattr(f, "trusted.t") == b"\x00\xff"


def test_permissions_for_unprivileged_user(m):
    mnt = m.mnt
    sh(f"mkdir {mnt}/rootonly && echo secret > {mnt}/rootonly/s && chmod 600 {mnt}/rootonly/s;"
       f"mkdir {mnt}/shared && chmod 1777 {mnt}/shared")
    nobody = 65534
    r = run("touch", mnt / "nope", user=nobody, check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    r = run("cat", mnt / "rootonly/s", user=nobody, check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    run("sh", "-c", f"echo mine > {mnt}/shared/n", user=nobody)
    st = os.stat(mnt / "shared/n")
    assert (st.st_uid, st.st_gid) == (nobody, nobody)
    r = run("chmod", "777", mnt / "rootonly", user=nobody, check=False)
    assert r.returncode != 0 and "Operation not permitted" in r.stderr
    (mnt / "shared/rootfile").write_text("r")
    r = run("rm", "-f", mnt / "shared/rootfile", user=nobody, check=False)
    assert r.returncode != 0                         # sticky directory
    assert run("cat", mnt / "shared/n", user=nobody).stdout == "mine\n"


def test_special_files_and_unlinked_open_file(m):
    mnt = m.mnt
    os.mkfifo(mnt / "fifo")
    assert stat.S_ISFIFO(os.stat(mnt / "fifo").st_mode)
    os.mknod(mnt / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert os.stat(mnt / "null").st_rdev == os.makedev(1, 3)
    # an unlinked open file stays readable and is freed at close
    free0 = os.statvfs(mnt).f_bfree
    with open(mnt / "tmp", "wb+") as f:
        f.write(b"z" * (4 << 20))
        f.flush()
        os.fsync(f.fileno())
        os.unlink(mnt / "tmp")
        f.seek(0)
        assert f.read(3) == b"zzz"
    # the kernel releases asynchronously after close; an fsync of the root waits for it
    fd = os.open(mnt, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    assert os.statvfs(mnt).f_bfree >= free0 - 2


def test_rename_and_errors_through_fuse(m):
    mnt = m.mnt
    (mnt / "a").write_text("a")
    (mnt / "b").write_text("b")
    os.mkdir(mnt / "d")
    (mnt / "d/x").write_text("x")
    with pytest.raises(OSError) as e:
        os.rmdir(mnt / "d")
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as e:
        os.open(mnt / ("n" * 256), os.O_CREAT | os.O_WRONLY)
    assert e.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OSError) as e:
        os.rename(mnt / "d", mnt / "d/sub")
    assert e.value.errno == errno.EINVAL
    os.rename(mnt / "a", mnt / "b")
    assert (mnt / "b").read_text() == "a" and not (mnt / "a").exists()
    run("mv", "-T", "--exchange", mnt / "b", mnt / "d/x", check=False)
    fd = os.open(mnt / "d", os.O_RDONLY)
    os.fsync(fd)                       # fsyncdir must work, not ENOSYS
    os.close(fd)


def test_large_directory_listing(m):
    d = m.mnt / "many"
    d.mkdir()
    n = 5000
    for i in range(n):
        (d / f"f{i:05d}").touch()
    names = os.listdir(d)
    assert len(names) == n and len(set(names)) == n
    assert len(run("find", d, "-type", "f").stdout.splitlines()) == n
    m.unmount()
    m.mount()
    assert len(os.listdir(d)) == n


def test_second_rw_mount_and_mkfs_refused(m, tmp_path):
    other = tmp_path / "mnt2"
    other.mkdir()
    r = run(TOOLS / "daxfs", m.image, other, check=False)
    assert r.returncode != 0 and "in use" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not is_mounted(other)
    r = run(TOOLS / "mkfs.daxfs", "-f", m.image, check=False)
    assert r.returncode != 0 and "in use" in r.stderr


def test_helper_ro_and_remount(image, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = Mount(image, mnt)
    m.mount("rw")
    (mnt / "f").write_text("data")
    m.unmount()
    try:
        m.mount("ro,dax=never,allow_other", helper=True)
        assert (mnt / "f").read_text() == "data"
        with pytest.raises(OSError) as e:
            (mnt / "g").write_text("x")
        assert e.value.errno == errno.EROFS
        opts = [ln.split()[3] for ln in open("/proc/mounts") if ln.split()[1] == str(mnt)][0]
        assert "ro" in opts.split(",") and "nodev" not in opts.split(",")
        fsname = [ln.split()[0] for ln in open("/proc/mounts") if ln.split()[1] == str(mnt)][0]
        assert fsname == str(image)
        r = run(TOOLS / "mount.fuse.daxfs", image, mnt, "-o", "remount,ro", check=False)
        assert r.returncode == 0, r.stderr
    finally:
        m.unmount()
    m.fsck()


def test_mkfs_and_fsck_commands(tmp_path):
    img = tmp_path / "i.img"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    r = run(TOOLS / "mkfs.daxfs", "-L", "lab", "-U", "12345678-1234-1234-1234-123456789abc", img)
    assert "12345678-1234-1234-1234-123456789abc" in r.stdout
    r = run(TOOLS / "mkfs.daxfs", img, check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "-f" in r.stderr
    assert run(TOOLS / "fsck.daxfs", "-n", img).returncode == 0
    from daxfs import format as fmt
    sb = fmt.Superblock.unpack(img.read_bytes()[:4096])
    with open(img, "r+b") as f:           # damage the block bitmap (past its header)
        f.seek(4096 * sb.bbitmap_start + fmt.HDR_SIZE)
        f.write(b"\0" * 8)
    r = run(TOOLS / "fsck.daxfs", "-n", img, check=False)
    assert r.returncode == 4 and "bitmap" in r.stdout
    r = run(TOOLS / "fsck.daxfs", "-y", img, check=False)
    assert r.returncode == 1
    assert run(TOOLS / "fsck.daxfs", "-n", img).returncode == 0
    for cmd in ("mkfs.daxfs", "fsck.daxfs", "daxfs"):
        assert run(TOOLS / cmd, "--help").stdout.startswith("usage:")
    r = run(TOOLS / "fsck.daxfs", tmp_path / "missing", check=False)
    assert r.returncode == 8 and "Traceback" not in r.stderr


def stats(mnt) -> dict:
    import json
    return json.loads(os.getxattr(mnt, "trusted.daxfs.stats"))


def test_request_counts(m):
    """Non-zero attribute timeouts: warm stats and reads cost no getattr requests; big
    writes arrive as big requests; readdirplus lists a directory in few requests."""
    mnt = m.mnt
    f = mnt / "f"
    f.write_bytes(os.urandom(1 << 20))
    os.stat(f)
    before = stats(mnt)["requests"]
    for _ in range(100):
        os.stat(f)
    with open(f, "rb") as fh:
        for _ in range(10):
            fh.seek(0)
            fh.read()
    after = stats(mnt)["requests"]
    # (one or two after the relatime update invalidates the cached attributes)
    assert after.get("getattr", 0) - before.get("getattr", 0) <= 3
    assert after.get("lookup", 0) - before.get("lookup", 0) <= 1
    s0 = stats(mnt)
    run("dd", "if=/dev/zero", f"of={mnt}/w", "bs=1M", "count=16", "status=none")
    s1 = stats(mnt)
    writes = s1["requests"]["write"] - s0["requests"].get("write", 0)
    assert s1["write_bytes"] - s0["write_bytes"] == 16 << 20
    assert writes <= 16 * 8, f"{writes} write requests for 16 MiB"     # >= 128 KiB each
    d = mnt / "d"
    d.mkdir()
    for i in range(2000):
        (d / f"n{i}").touch()
    s0 = stats(mnt)["requests"]
    assert len(os.listdir(d)) == 2000
    s1 = stats(mnt)["requests"]
    assert s1["readdir"] - s0.get("readdir", 0) <= 2000 // 20


def test_close_sends_no_request_and_a_create_costs_four(m):
    """close(2) has nothing to do in daxfs: after the first FLUSH (answered ENOSYS) the kernel
    sends none, so creating a file and closing it is LOOKUP, CREATE, RELEASE and a GETATTR
    of the directory; fsync still reaches daxfs after that."""
    mnt = m.mnt
    (mnt / "first").write_bytes(b"x")               # the one FLUSH
    d = mnt / "d"
    d.mkdir()
    s0 = stats(mnt)["requests"]
    for i in range(50):
        fd = os.open(d / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
    s1 = stats(mnt)["requests"]
    delta = {k: v - s0.get(k, 0) for k, v in s1.items() if v != s0.get(k, 0)}
    delta.pop("getxattr", None)                     # reading the statistics
    assert "flush" not in delta, delta
    assert sum(delta.values()) <= 4 * 50, delta
    fd = os.open(d / "f0", os.O_WRONLY)
    try:
        os.write(fd, b"y")
        os.fsync(fd)
    finally:
        os.close(fd)
    assert stats(mnt)["requests"]["fsync"] == s1.get("fsync", 0) + 1


def test_cold_sequential_reads_come_in_big_requests(m):
    """The mount's readahead matches libfuse's 1 MiB requests: a cold 16 MiB sequential
    read reaches the daemon as about 16 READs, not the 128 of the kernel's default."""
    f = m.mnt / "f"
    f.write_bytes(os.urandom(16 << 20))
    fd = os.open(f, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)     # cold: drop its pages
        s0 = stats(m.mnt)["requests"].get("read", 0)
        while os.read(fd, 1 << 20):
            pass
        reads = stats(m.mnt)["requests"].get("read", 0) - s0
    finally:
        os.close(fd)
    assert 16 <= reads <= 24, f"{reads} READ requests for 16 MiB"


def test_mount_t_fuse_daxfs(image, mntdir):
    """mount(8) finds the helper as /sbin/mount.fuse.daxfs (scripts/setup.sh links it)."""
    link = Path("/sbin/mount.fuse.daxfs")
    if not link.exists() or link.resolve() != (TOOLS / "mount.fuse.daxfs").resolve():
        pytest.skip("/sbin/mount.fuse.daxfs does not point at this checkout: run scripts/setup.sh")
    m = Mount(image, mntdir)
    try:
        r = run("mount", "-t", "fuse.daxfs", image, mntdir, "-o", "allow_other,default_permissions",
                check=False)
        assert r.returncode == 0, r.stderr
        assert is_mounted(mntdir)
        os.mknod(mntdir / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        with open(mntdir / "null", "wb") as f:          # dev: device nodes work
            f.write(b"x")
        line = [ln.split() for ln in open("/proc/mounts") if ln.split()[1] == str(mntdir)][0]
        assert line[0] == str(image) and line[2] == "fuse"
        run("mount", "-t", "fuse.daxfs", "-o", "remount,ro", image, mntdir)   # as fstests does
        with pytest.raises(OSError) as e:
            (mntdir / "x").write_text("x")
        assert e.value.errno == errno.EROFS
        run("umount", mntdir)
    finally:
        m.unmount()
    m.fsck()


def daemon_pids(image: Path) -> list[int]:
    """Processes holding the image open: the daxfs daemon this test started."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == str(image) for fd in (p / "fd").iterdir()):
                pids.append(int(p.name))
        except OSError:
            continue
    return pids


def test_sigterm_unmounts_cleanly(image, mntdir):
    m = Mount(image, mntdir).mount()
    try:
        (mntdir / "f").write_text("kept")         # no fsync: the final commit must carry it
        pids = daemon_pids(image)
        assert len(pids) == 1
        os.kill(pids[0], 15)
    finally:
        m.unmount()            # waits for the daemon to let go of the image
    assert not is_mounted(mntdir)
    m.fsck()
    m.mount()
    try:
        assert (mntdir / "f").read_text() == "kept"
    finally:
        m.unmount()


def test_enospc_through_fuse(tmp_path, mntdir):
    img = tmp_path / "small.img"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    run(TOOLS / "mkfs.daxfs", img)
    m = Mount(img, mntdir).mount()
    try:
        r = run("dd", "if=/dev/zero", f"of={mntdir}/fill", "bs=1M", "count=64", "status=none",
                check=False)
        assert r.returncode != 0 and "No space left" in r.stderr
        st = os.statvfs(mntdir)
        assert st.f_bavail < 16
        os.unlink(mntdir / "fill")
        run("dd", "if=/dev/zero", f"of={mntdir}/again", "bs=1M", "count=4", "status=none")
    finally:
        m.unmount()
    m.fsck()


def test_writeback_cache_mount(image, mntdir):
    """-o writeback: the kernel caches writes and sends them later, through any handle;
    content, appends and fsync must behave exactly as without it."""
    m = Mount(image, mntdir).mount("writeback,allow_other")
    try:
        f = mntdir / "wb"
        payload = os.urandom(1 << 20)
        fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)    # write-only: the kernel may
        for i in range(0, len(payload), 4096):               # read it back to fill pages
            os.pwrite(fd, payload[i:i + 1000], i)
        os.fsync(fd)
        os.close(fd)
        with open(f, "ab") as fa:
            fa.write(b"tail")
        want = bytearray(len(payload) - 4096 + 1000)
        for i in range(0, len(payload), 4096):
            want[i:i + 1000] = payload[i:i + 1000]
        assert f.read_bytes() == bytes(want) + b"tail"
        s = stats(mntdir)["requests"]
        assert s["write"] < 256          # 256 small writes were merged by the kernel
    finally:
        m.unmount()
    m.fsck()
    m.mount()
    try:
        assert (mntdir / "wb").read_bytes() == bytes(want) + b"tail"
    finally:
        m.unmount()
