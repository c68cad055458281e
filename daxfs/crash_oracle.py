"""What a crash state must show, and the check of one state against it.

While a workload runs, the ``Oracle`` notes its promises in order, each tied to a mark in
the recording: a path's value after an fsync of it (its bytes, by sha256) or of its
directory (that it exists as a file or directory, or that it is gone), a path changing
(no promise until the next one), a rename or unlink in flight (old or new, never
neither). It also watches the tree after every step, so the check knows the longest each
name ever was and which names ever existed.

A state passes when fsck finds it clean, or repairs it and the repaired filesystem keeps
every promise; every promise in force at its point holds; and no file is longer than its
name ever was, sits under a name never created, or holds bytes the workload never wrote
(checked where the workload writes from a known alphabet).
"""
import hashlib
import os
import stat

from .fs import Filesystem
from .fsck import check

ABSENT, DIR, FILE = "absent", "dir", "file"     # FILE: a regular file, any contents


class Oracle:
    """The workload's side: ``mark()`` puts a mark in the recording and returns its name."""

    def __init__(self, mark, root: str, *, alphabet: bytes | None = None):
        self.mark = mark
        self.root = root
        self.events: list = []             # (mark, path, frozenset of values, weak)
        self.max_size: dict = {}           # path -> longest it ever was
        self.alphabet = set(alphabet) | {0} if alphabet is not None else None
        self.snapshot = None               # set by a recorder that can take snapshots

    def value(self, path: str) -> str:
        p = os.path.join(self.root, path)
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return ABSENT
        if stat.S_ISDIR(st.st_mode):
            return DIR
        with open(p, "rb") as f:
            return "sha:" + hashlib.sha256(f.read()).hexdigest()

    def observe(self) -> None:
        """Note every name in the tree and its size (called after each step)."""
        for d, dirs, files in os.walk(self.root):
            for name in files:
                p = os.path.join(d, name)
                rel = os.path.relpath(p, self.root)
                try:
                    size = os.lstat(p).st_size
                except FileNotFoundError:
                    continue
                self.max_size[rel] = max(self.max_size.get(rel, 0), size)
            for name in dirs:
                self.max_size.setdefault(os.path.relpath(os.path.join(d, name), self.root), 0)

    def _event(self, path, values, weak=False):
        self.events.append((self.mark(), path, None if values is None else frozenset(values),
                            weak))

    def durable(self, path: str, root: str | None = None) -> None:
        """``path`` was fsynced (and reachable): it must read back as it is now."""
        self.observe()
        self._event(path, {self.value(path)})

    def dir_durable(self, dirpath: str, names) -> None:
        """``dirpath`` was fsynced: each of ``names`` in it exists (file or dir) or not."""
        self.observe()
        for n in names:
            p = os.path.normpath(os.path.join(dirpath, n))
            v = self.value(p)
            self._event(p, {FILE if v.startswith("sha:") else v}, weak=True)

    def promised(self, path: str):
        """The values ``path`` is promised to have now, or None."""
        now = {ev[0]: 0 for ev in self.events}
        return expectations(self.events, now, 1).get(path)

    def changing(self, path: str) -> None:
        """``path`` is about to change: no promise about it until the next one."""
        self.observe()
        self._event(path, None)

    def either(self, path: str, values) -> None:
        """``path`` is about to become one of ``values`` or stay as promised (atomic)."""
        self.observe()
        self._event(path, set(values), weak="widen")


def expectations(events: list, position: dict, point: int) -> dict:
    """{path: frozenset of allowed values} in force at crash point ``point``."""
    want = {}
    for ev in events:
        name, path, values = ev[0], ev[1], ev[2]
        weak = ev[3] if len(ev) > 3 else False
        # a mark at P: the record before P was complete; P itself is the first record
        # that may hold what came after (a change begun, or nothing yet promised)
        if position[name] > point:
            break
        if values is None or values == "changing":
            want.pop(path, None)
        elif isinstance(values, str):            # the older form: a sha256 hex digest
            want[path] = frozenset({"sha:" + values})
        elif weak == "widen":
            if path in want:
                want[path] = want[path] | values
        elif weak:
            old = want.get(path)
            # a directory's fsync says the name exists; a file's own promise is stronger
            if not (old and values == {FILE} and all(v.startswith("sha:") for v in old)):
                want[path] = values
        else:
            want[path] = values
    return want


async def _lookup(fs: Filesystem, path: str):
    ino = fs.sb.root_ino
    inode = None
    for part in path.strip("/").split("/"):
        try:
            inode = await fs.lookup(ino, part.encode())
        except OSError:
            return None
        ino = inode.ino
    return inode if inode is not None else await fs.iget(ino)


async def read_whole(fs: Filesystem, ino: int, size: int) -> bytes:
    fh = await fs.open(ino, os.O_RDONLY)
    try:
        return await fs.read(fh, 0, size)
    finally:
        await fs.release(fh)


async def actual_value(fs: Filesystem, path: str) -> str:
    inode = await _lookup(fs, path)
    if inode is None:
        return ABSENT
    if inode.is_dir:
        return DIR
    return "sha:" + hashlib.sha256(await read_whole(fs, inode.ino, inode.size)).hexdigest()


def _allowed(actual: str, values) -> bool:
    return actual in values or (FILE in values and actual.startswith("sha:"))


def _describe(v: str) -> str:
    return "a file with other contents" if v.startswith("sha:") else {
        ABSENT: "missing", DIR: "a directory", FILE: "a file"}.get(v, v)


async def check_device(dev, want: dict, bounds: dict | None = None) -> tuple[list, list]:
    """fsck and the oracle on a crash state; (problems, what fsck repaired first, if it
    had to)."""
    msgs = []
    code, _ = await check(dev, out=msgs.append)
    repaired = []
    if code:
        if not hasattr(dev, "writable_copy"):
            return [f"fsck exit {code}: " + "; ".join(msgs[:3])], []
        dev = dev.writable_copy()
        fixmsgs = []
        await check(dev, repair=True, out=fixmsgs.append)
        again = []
        code2, _ = await check(dev, out=again.append)
        if code2:
            return [f"fsck exit {code}: " + "; ".join(msgs[:3]) +
                    f"; still exit {code2} after repair: " + "; ".join(again[:2])], []
        repaired = msgs[:3]
        dev.read_only = True
    problems = []
    try:
        fs = await Filesystem.mount(dev, read_only=True)
    except OSError as e:
        return [f"mount failed after fsck passed: {e}"], repaired
    for p, values in sorted(want.items()):
        got = await actual_value(fs, p)
        if not _allowed(got, values):
            if got.startswith("sha:") and any(v.startswith("sha:") for v in values):
                inode = await _lookup(fs, p)
                problems.append(f"{p}: {inode.size} bytes that differ from what was made durable")
            else:
                problems.append(f"{p}: {_describe(got)}, though made durable as "
                                + " or ".join(sorted(_describe(v) for v in values)))
    if bounds and bounds.get("max_size") is not None:
        problems += await _check_bounds(fs, bounds)
    if repaired:
        problems = [f"after fsck repaired it ({'; '.join(msgs[:2])}): {p}" for p in problems]
    return problems, repaired


async def _check_bounds(fs: Filesystem, bounds: dict) -> list:
    """No file longer than its name ever was, no name never created, no foreign bytes."""
    problems = []
    max_size = bounds["max_size"]
    alphabet = bounds.get("alphabet")

    async def walk(ino: int, prefix: str):
        async for name, inode, _ in fs.readdir(ino):
            rel = prefix + name.decode(errors="replace")
            if prefix == "lost+found/":
                # fsck's #INO for an inode no directory named: a name the workload never
                # made, but the promises are checked by path above; its bytes must still
                # be the workload's
                if inode.is_reg and alphabet is not None:
                    foreign = set(await read_whole(fs, inode.ino, inode.size)) - alphabet
                    if foreign:
                        problems.append(f"{rel}: holds bytes never written to any file "
                                        f"(e.g. 0x{min(foreign):02x})")
                continue
            if rel not in max_size:
                problems.append(f"{rel}: a name the workload never created")
                continue
            if inode.is_dir:
                await walk(inode.ino, rel + "/")
            elif inode.is_reg:
                if inode.size > max_size[rel]:
                    problems.append(f"{rel}: {inode.size} bytes, longer than it ever was "
                                    f"({max_size[rel]})")
                elif alphabet is not None:
                    data = await read_whole(fs, inode.ino, inode.size)
                    foreign = set(data) - alphabet
                    if foreign:
                        problems.append(f"{rel}: holds bytes never written to any file "
                                        f"(e.g. 0x{min(foreign):02x})")
    await walk(fs.sb.root_ino, "")
    return problems
