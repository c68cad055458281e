"""Workloads for crashcheck: each makes changes on a mount and tells the oracle what it
made durable. They use ordinary file operations, as an application would."""
import os


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: str, data: bytes, fsync: bool = True) -> None:
    with open(path, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()           # out of Python's buffer, or fsync runs before the write
            os.fsync(f.fileno())


def fsync_files(mnt: str, oracle) -> None:
    """Files of growing sizes, each fsynced with its directory, in nested directories."""
    os.makedirs(os.path.join(mnt, "d1", "d2"))
    _fsync_dir(mnt)
    for i in range(8):
        p = os.path.join("d1" if i % 2 else "d1/d2", f"f{i}")
        _write(os.path.join(mnt, p), bytes([65 + i]) * (4096 * (i + 1) + 100 * i))
        _fsync_dir(os.path.dirname(os.path.join(mnt, p)))
        oracle.durable(p, mnt)


def rename_storm(mnt: str, oracle) -> None:
    """Write a new version, fsync it, rename it over the old one, fsync the directory:
    at any crash the target holds a whole version, never a torn one."""
    _write(os.path.join(mnt, "target"), b"version 0\n" * 500)
    _fsync_dir(mnt)
    oracle.durable("target", mnt)
    for i in range(1, 7):
        _write(os.path.join(mnt, f"tmp{i}"), f"version {i}\n".encode() * (500 + 300 * i))
        oracle.changing("target")
        os.rename(os.path.join(mnt, f"tmp{i}"), os.path.join(mnt, "target"))
        _fsync_dir(mnt)
        oracle.durable("target", mnt)


def create_unlink(mnt: str, oracle) -> None:
    """Creates, unlinks, xattrs and an overwrite in place, fsynced at each step."""
    for i in range(6):
        p = f"c{i}"
        _write(os.path.join(mnt, p), os.urandom(3000 + 5000 * i))
        os.setxattr(os.path.join(mnt, p), "user.step", str(i).encode())
        _fsync_dir(mnt)
        oracle.durable(p, mnt)
        if i >= 2:
            gone = f"c{i - 2}"
            oracle.changing(gone)
            os.unlink(os.path.join(mnt, gone))
            _fsync_dir(mnt)
    oracle.changing("c5")
    with open(os.path.join(mnt, "c5"), "r+b") as f:
        f.seek(100)
        f.write(b"overwritten in place")
        f.flush()
        os.fsync(f.fileno())
    oracle.durable("c5", mnt)


WORKLOADS = {"fsync-files": fsync_files, "rename-storm": rename_storm,
             "create-unlink": create_unlink}


def random_mix(mnt: str, oracle, seed: int = 7) -> None:
    """fsx-like: random writes at random offsets, truncates and extends over a few files,
    with an fsync now and then; a file's promise holds from its fsync to its next change."""
    import random
    rng = random.Random(seed)
    names = [f"r{i}" for i in range(3)]
    for n in names:
        _write(os.path.join(mnt, n), b"")
    _fsync_dir(mnt)
    for step in range(40):
        n = rng.choice(names)
        path = os.path.join(mnt, n)
        oracle.changing(n)
        with open(path, "r+b") as f:
            op = rng.random()
            if op < 0.6:
                f.seek(rng.randrange(0, 256 << 10))
                f.write(bytes([rng.randrange(256)]) * rng.randrange(1, 20000))
            elif op < 0.8:
                f.truncate(rng.randrange(0, 128 << 10))
            else:
                f.truncate(rng.randrange(128 << 10, 512 << 10))
            if rng.random() < 0.4:
                f.flush()
                os.fsync(f.fileno())
                synced = True
            else:
                synced = False
        if synced:
            oracle.durable(n, mnt)


def dax_msync(mnt: str, oracle) -> None:
    """Stores through shared mappings of DAX files, made durable with msync (MAP_SYNC's
    guarantee served through fsync), and appends with write()."""
    import mmap
    for i in range(4):
        p = f"m{i}"
        path = os.path.join(mnt, p)
        with open(path, "wb") as f:
            f.truncate(64 << 10)
            os.fsync(f.fileno())
        _fsync_dir(mnt)
        fd = os.open(path, os.O_RDWR)
        try:
            m = mmap.mmap(fd, 64 << 10, mmap.MAP_SHARED)
            for j in range(16):
                m[j * 4096:(j + 1) * 4096] = bytes([i * 16 + j]) * 4096
            m.flush()
            m.close()
        finally:
            os.close(fd)
        oracle.durable(p, mnt)


def snapshot_during_writes(mnt: str, oracle) -> None:
    """Files written and fsynced, a snapshot taken (the filesystem frozen under it), then
    more writes and overwrites on the origin, which copy chunks into the snapshot's store:
    at every crash point the origin holds what was fsynced, and once the snapshot exists it
    holds everything fsynced before it."""
    for i in range(4):
        _write(os.path.join(mnt, f"s{i}"), bytes([48 + i]) * (6000 * (i + 1)))
        _fsync_dir(mnt)
        oracle.durable(f"s{i}", mnt)
    oracle.snapshot()
    for i in range(4):
        oracle.changing(f"s{i}")
        with open(os.path.join(mnt, f"s{i}"), "r+b") as f:
            f.write(b"after the snapshot" * 100)
            f.flush()
            os.fsync(f.fileno())
        oracle.durable(f"s{i}", mnt)
        _write(os.path.join(mnt, f"n{i}"), os.urandom(9000))
        _fsync_dir(mnt)
        oracle.durable(f"n{i}", mnt)


def fsync_append(mnt: str, oracle) -> None:
    """The fast-commit path: files that exist on the device (made durable with their
    directory first) are appended to, overwritten, sparsely extended and truncated, each
    change followed by fsync or fdatasync alone, which writes one fast-commit record; holes
    of a file of 300 extents are filled the same way."""
    names = [f"a{i}" for i in range(3)]
    for n in names:
        _write(os.path.join(mnt, n), n.encode() * 500)
    # a file of 300 extents, more than a record could hold whole: its records carry the
    # ranges that changed
    frag = os.path.join(mnt, "frag")
    fd = os.open(frag, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for k in range(300):
            os.pwrite(fd, b"F%d" % k, 2 * k * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(mnt)
    for n in names + ["frag"]:
        oracle.durable(n, mnt)
    for step in range(12):
        n = names[step % 3]
        oracle.changing(n)
        with open(os.path.join(mnt, n), "r+b") as f:
            if step % 4 == 3:
                f.truncate(700 * step)
            elif step % 4 == 2:
                f.seek(0, os.SEEK_END)
                f.seek(f.tell() + 3 * 4096)          # a hole, then data: a new extent
                f.write(b"s%d" % step * 300)
            else:
                f.seek(0, os.SEEK_END)
                f.write(bytes([65 + step]) * (2500 * (step + 1)))
                f.seek(10)
                f.write(b"overwritten %d" % step)
            f.flush()                               # out of Python's buffer first
            (os.fdatasync if step % 2 else os.fsync)(f.fileno())
        oracle.durable(n, mnt)
        if step % 3 == 1:
            oracle.changing("frag")
            fd = os.open(frag, os.O_WRONLY)
            try:
                os.pwrite(fd, b"hole %d" % step * 1000, (40 * step + 1) * 4096)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            oracle.durable("frag", mnt)


WORKLOADS["fsync-append"] = fsync_append
WORKLOADS["random-mix"] = random_mix
WORKLOADS["snapshot-during-writes"] = snapshot_during_writes
DAX_WORKLOADS = {"dax-msync": dax_msync, "fsync-files": fsync_files,
                 "fsync-append": fsync_append}
