"""Generated workloads in the manner of CrashMonkey's ACE (bounded black-box crash testing).

ACE's bounds: a small fixed file set, a few operations with a few argument shapes each,
sequences of length 1 to 3, and after each operation a persistence point from a small
set. Every sequence of one operation is generated (``seq-1``); sequences of two and three
are sampled with a seed (``seq-2``, ``seq-3``), as the full sets grow combinatorially.

The file set: files ``foo``, ``A/foo``, ``A/bar``, ``B/foo`` and directories ``A``, ``B``,
``A/C``. Every workload starts from the same state, made durable: ``A`` with
``A/foo`` (8 KiB), ``foo`` (5000 bytes), ``B`` absent; so creation, writes to files that
exist on the device, and namespace changes across directories are all reachable in one
step. A small model of the tree keeps only sequences whose operations can succeed.

Operations: creat, mkdir, write (append, aligned and unaligned overwrite, a write past
the end that leaves a hole), truncate (shrink, grow), link, unlink, rename (to a new
name, over an existing file, of a directory), rmdir, setxattr, removexattr, and a store
through a shared mapping followed by msync. fallocate is not among them: daxfs does not
implement it (FUSE answers EOPNOTSUPP). Persistence after each operation: fsync or
fdatasync of the file, fsync of its parent directory, sync, or (before the last) none.
sync(2) does not reach a FUSE server (docs/format.md), so on daxfs it promises nothing;
it stays among the persistence points because a workload that uses it must still leave
a consistent filesystem.

Every byte a workload writes is one of a few letters, so the oracle can tell data the
workload wrote from anything else the device held (bytes never written to a file).
"""
import mmap
import os
import random

FILES = ("foo", "A/foo", "A/bar", "B/foo")
DIRS = ("A", "B", "A/C")
ALPHABET = b"abcdefghijklmnopqrstuvwxyz"
INITIAL = {"": "dir", "A": "dir", "A/foo": 8192, "foo": 5000}
PERSIST = ("fsync", "fdatasync", "fsync-parent", "sync")


def _parent(p: str) -> str:
    return os.path.dirname(p)


# -- the model: path -> "dir" or a file's size; hard links share a size list ------------------

class Model:
    def __init__(self):
        self.tree = {}
        for p, v in INITIAL.items():
            self.tree[p] = v if v == "dir" else [v]

    def copy(self):
        m = Model.__new__(Model)
        sizes = {}
        m.tree = {}
        for p, v in self.tree.items():
            if v == "dir":
                m.tree[p] = v
            else:
                m.tree[p] = sizes.setdefault(id(v), [v[0]])
        return m

    def is_file(self, p):
        return isinstance(self.tree.get(p), list)

    def is_dir(self, p):
        return self.tree.get(p) == "dir"

    def absent(self, p):
        return p not in self.tree and self.is_dir(_parent(p))

    def empty_dir(self, p):
        return self.is_dir(p) and p and not any(_parent(q) == p for q in self.tree if q)


def _ops(m: Model):
    """Every (op, args) that can succeed on the model."""
    for f in FILES:
        if m.absent(f):
            yield ("creat", f)
    for d in DIRS:
        if m.absent(d):
            yield ("mkdir", d)
        if m.empty_dir(d) and d != "A":
            yield ("rmdir", d)
    for f in FILES:
        if not m.is_file(f):
            continue
        for kind in ("append", "append-unaligned", "overwrite", "overwrite-unaligned", "hole"):
            yield ("write", f, kind)
        yield ("truncate", f, "shrink")
        yield ("truncate", f, "grow")
        yield ("setxattr", f)
        yield ("removexattr", f)
        if m.tree[f][0] > 0:
            yield ("mmap", f)
        yield ("unlink", f)
        for g in FILES:
            if g == f:
                continue
            if m.absent(g):
                yield ("link", f, g)
                yield ("rename", f, g)
            elif m.is_file(g) and m.tree[g] is not m.tree[f]:
                yield ("rename", f, g)
    if m.is_dir("A/C") and m.absent("B/C"):
        yield ("rename", "A/C", "B/C")


def _apply(m: Model, op) -> None:
    kind = op[0]
    if kind == "creat":
        m.tree[op[1]] = [0]
    elif kind == "mkdir":
        m.tree[op[1]] = "dir"
    elif kind == "rmdir" or kind == "unlink":
        del m.tree[op[1]]
    elif kind == "write":
        size = m.tree[op[1]]
        size[0] = _written_size(size[0], op[2])
    elif kind == "truncate":
        size = m.tree[op[1]]
        size[0] = size[0] // 2 if op[2] == "shrink" else size[0] + 6000
    elif kind == "link":
        m.tree[op[2]] = m.tree[op[1]]
    elif kind == "rename":
        src, dst = op[1], op[2]
        moved = {p: v for p, v in m.tree.items() if p == src or p.startswith(src + "/")}
        for p in moved:
            del m.tree[p]
        for p, v in moved.items():
            m.tree[dst + p[len(src):]] = v


def _written_size(size: int, kind: str) -> int:
    off, n = _write_args(size, kind)
    return max(size, off + n)


def _write_args(size: int, kind: str) -> tuple[int, int]:
    return {"append": (size - size % 4096 + (4096 if size % 4096 else 0), 4096),
            "append-unaligned": (size, 1000),
            "overwrite": (0, 4096),
            "overwrite-unaligned": (1000, 3000),
            "hole": (size + 8192, 2000)}[kind]


def _target(op) -> str:
    return op[2] if op[0] in ("link", "rename") else op[1]


def _persists(op, last: bool):
    is_dir = op[0] in ("mkdir",) or (op[0] == "rename" and op[1] == "A/C")
    gone = op[0] in ("unlink", "rmdir")
    out = []
    if not gone:
        out.append("fsync")
        if not is_dir:
            out.append("fdatasync")
    out += ["fsync-parent", "sync"]
    if not last:
        out.append("none")
    return out


def sequences(length: int):
    """Every valid sequence of ``length`` (op, persistence) steps, in a fixed order."""
    def rec(m, n):
        if n == 0:
            yield ()
            return
        for op in _ops(m):
            for p in _persists(op, n == 1):
                m2 = m.copy()
                _apply(m2, op)
                for rest in rec(m2, n - 1):
                    yield ((op, p),) + rest
    yield from rec(Model(), length)


def sample_sequences(length: int, count: int, seed: int):
    """``count`` distinct random valid sequences of ``length`` steps, seeded."""
    rng = random.Random(f"ace/{length}/{seed}")
    seen, out = set(), []
    tries = 0
    while len(out) < count and tries < count * 20:
        tries += 1
        m, seq = Model(), []
        for i in range(length):
            op = rng.choice(list(_ops(m)))
            p = rng.choice(_persists(op, i == length - 1))
            _apply(m, op)
            seq.append((op, p))
        seq = tuple(seq)
        if seq not in seen:
            seen.add(seq)
            out.append(seq)
    return out


def describe(seq) -> str:
    parts = []
    for op, p in seq:
        parts.append(f"{op[0]}({','.join(op[1:])})" + ("" if p == "none" else f";{p}"))
    return " ".join(parts)


# -- running a sequence on a mount ------------------------------------------------------------

def _fill(step: int, n: int) -> bytes:
    return ALPHABET[step % len(ALPHABET):step % len(ALPHABET) + 1] * n


def _fsync_path(path: str, data_only: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        (os.fdatasync if data_only else os.fsync)(fd)
    finally:
        os.close(fd)


def setup(mnt: str) -> None:
    os.mkdir(os.path.join(mnt, "A"))
    for p, v in INITIAL.items():
        if v != "dir":
            with open(os.path.join(mnt, p), "wb") as f:
                f.write(_fill(len(p), v))
    # fsync of a directory is a full commit: everything so far is durable (sync(2) does
    # not reach a FUSE server, docs/format.md)
    _fsync_path(mnt)


def _same_inode(mnt: str, path: str) -> list:
    """Every name in the file set that is the same inode as ``path``."""
    try:
        ino = os.lstat(os.path.join(mnt, path)).st_ino
    except FileNotFoundError:
        return [path]
    out = []
    for f in FILES:
        try:
            if os.lstat(os.path.join(mnt, f)).st_ino == ino:
                out.append(f)
        except FileNotFoundError:
            pass
    return out or [path]


def _names_in(mnt: str, d: str) -> list:
    """The names of the file set that live directly in ``d`` (present or not)."""
    return [os.path.basename(p) for p in FILES + DIRS if _parent(p) == d]


def run_step(mnt: str, oracle, step: int, op, persist: str) -> None:
    kind, path = op[0], op[1]
    full = os.path.join(mnt, path)
    if kind in ("write", "truncate", "setxattr", "removexattr", "mmap"):
        for p in _same_inode(mnt, path):
            oracle.changing(p)
    if kind in ("creat", "mkdir", "link"):
        # a new name: before the persistence point it may or may not have reached the device
        oracle.either(_target(op), {"dir" if kind == "mkdir" else "file"})
    if kind == "creat":
        os.close(os.open(full, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
    elif kind == "mkdir":
        os.mkdir(full)
    elif kind == "rmdir":
        oracle.either(path, {"absent"})
        os.rmdir(full)
    elif kind == "unlink":
        oracle.either(path, {"absent"})
        os.unlink(full)
    elif kind == "write":
        size = os.stat(full).st_size
        off, n = _write_args(size, op[2])
        fd = os.open(full, os.O_WRONLY)
        try:
            os.pwrite(fd, _fill(step, n), off)
        finally:
            os.close(fd)
    elif kind == "truncate":
        size = os.stat(full).st_size
        os.truncate(full, size // 2 if op[2] == "shrink" else size + 6000)
    elif kind == "setxattr":
        os.setxattr(full, "user.ace", _fill(step, 100))
    elif kind == "removexattr":
        try:
            os.removexattr(full, "user.ace")
        except OSError:
            pass          # none set: the call fails, as on any filesystem
    elif kind == "mmap":
        fd = os.open(full, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            m = mmap.mmap(fd, size, mmap.MAP_SHARED)
            n = min(size, 3000)
            m[size - n:size] = _fill(step, n)
            m.flush()
            m.close()
        finally:
            os.close(fd)
    elif kind == "link":
        os.link(full, os.path.join(mnt, op[2]))
    elif kind == "rename":
        dst = op[2]
        # the new name holds what it held or what was renamed over it, never neither
        oracle.either(dst, oracle.promised(path) or {"file"})
        oracle.either(path, {"absent"})
        os.rename(full, os.path.join(mnt, dst))
    _persist(mnt, oracle, op, persist)


def _persist(mnt: str, oracle, op, persist: str) -> None:
    target = _target(op)
    full = os.path.join(mnt, target)
    if persist in ("fsync", "fdatasync"):
        _fsync_path(full, persist == "fdatasync")
        if os.path.isdir(full):
            oracle.dir_durable(target, _names_in(mnt, target))
        for p in _same_inode(mnt, target) if not os.path.isdir(full) else [target]:
            oracle.durable(p)
    elif persist == "fsync-parent":
        parent = _parent(target)
        _fsync_path(os.path.join(mnt, parent))
        oracle.dir_durable(parent, _names_in(mnt, parent))
    elif persist == "sync":
        os.sync()             # promises nothing on a FUSE mount (docs/format.md)
        oracle.observe()
    else:
        oracle.observe()


def workload_for(seq):
    def run(mnt: str, oracle) -> None:
        setup(mnt)
        for p in FILES + DIRS:
            oracle.durable(p)
        for step, (op, persist) in enumerate(seq, 1):
            run_step(mnt, oracle, step, op, persist)
    run.__doc__ = describe(seq)
    return run


def generated(spec: str, seed: int, count: int | None, spread: int | None = None) -> list:
    """[(name, sequence)] of ``seq-1`` (all, or ``spread`` of them evenly spread, which
    covers every kind of operation), ``seq-2``/``seq-3`` (``count`` sampled, 100 by
    default), or one of them by name: ``seq-2/17``. Names number the whole family, so a
    name means the same sequence whatever ``spread`` is."""
    family, _, index = spec.partition("/")
    length = int(family.split("-")[1])
    if length == 1:
        seqs = list(sequences(1))
    else:
        seqs = sample_sequences(length, count or 100, seed)
    named = [(f"{family}/{i}", s) for i, s in enumerate(seqs)]
    if length == 1 and spread and not index and spread < len(named):
        named = [named[i * len(named) // spread] for i in range(spread)]
    if index:
        i = int(index)
        if not 0 <= i < len(named):
            raise ValueError(f"{spec}: {family} has workloads 0 to {len(named) - 1}")
        return [named[i]]
    return named


def is_generated(spec: str) -> bool:
    family = spec.partition("/")[0]
    return family in ("seq-1", "seq-2", "seq-3")

