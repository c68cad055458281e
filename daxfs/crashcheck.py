"""Crash consistency by enumeration: every state a power failure could leave, checked.

A workload runs on a fresh daxfs whose device records its writes: through a log-writes
target over a plain disk (``log`` mode), or as a persistence trace of an adr pmem namespace
mounted with DAX (``fences`` mode). The workload tells an oracle what it made durable
(``durable(path)`` right after an fsync), and the oracle marks that moment in the record.

Then for every crash point after mkfs, the device is rebuilt as the crash would leave it,
in memory, and checked in-process: fsck must find it clean, and every file the workload
had made durable before that point (and not touched since) must read back exactly.

The crash model of ``log`` mode is the block layer's: at a FLUSH every write completed
before it is durable; after the last FLUSH, of the writes that followed only FUA writes are
known to be durable, so the rebuilt device keeps those and drops the others. A filesystem
that wrote a commit block without flushing what it references is caught there. ``fences``
mode rebuilds the pmem at every fence from the trace (dmemu.persist_trace).
"""
import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass, field

from dmemu.dm.replay import read_log
from dmemu.dm.targets.log_writes import LOG_FLUSH_FLAG, LOG_FUA_FLAG, LOG_MARK_FLAG

from .filedev import FileBlockDevice
from .fs import Filesystem
from .fsck import check


@dataclass
class Oracle:
    """What the workload promised: (mark, path, sha256, or "changing" while it changes)."""
    mark: callable
    events: list = field(default_factory=list)
    snapshot: callable = None      # take a snapshot of the mounted volume, where supported

    def durable(self, path: str, root: str) -> None:
        """``path`` (under ``root``) was fsynced with its directory: it must survive."""
        name = self.mark()
        with open(os.path.join(root, path), "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        self.events.append((name, path, digest))

    def changing(self, path: str) -> None:
        """``path`` is about to change: no promise about it until the next durable()."""
        self.events.append((self.mark(), path, "changing"))


def expectations(events: list, position: dict, point: int) -> dict:
    """{path: digest} that must hold at crash point ``point`` (an index in the record)."""
    want = {}
    for name, path, digest in events:
        if position[name] >= point:
            break
        if digest == "changing":
            want.pop(path, None)
        else:
            want[path] = digest
    return want


async def read_file(fs: Filesystem, path: str) -> bytes | None:
    ino = fs.sb.root_ino
    for part in path.strip("/").split("/"):
        try:
            ino = (await fs.lookup(ino, part.encode())).ino
        except OSError:
            return None
    fh = await fs.open(ino, os.O_RDONLY)
    inode = fs.handle(fh).inode
    data = await fs.read(fh, 0, inode.size)
    await fs.release(fh)
    return data


async def check_image(path: str, want: dict) -> list[str]:
    """fsck and the oracle on an image file; the problems found."""
    problems = []
    dev = FileBlockDevice(path, read_only=True)
    try:
        msgs = []
        code, _ = await check(dev, out=msgs.append)
        if code:
            problems.append(f"fsck exit {code}: " + "; ".join(msgs[:3]))
            return problems
        fs = await Filesystem.mount(dev, read_only=True)
        for p, digest in sorted(want.items()):
            data = await read_file(fs, p)
            if data is None:
                problems.append(f"{p}: missing, though made durable")
            elif hashlib.sha256(data).hexdigest() != digest:
                problems.append(f"{p}: {len(data)} bytes that differ from what was made durable")
    finally:
        dev.close()
    return problems


def log_crash_states(entries, data: dict, size: int, start: int):
    """(entry index, image bytes) at every FLUSH or FUA point from ``start`` on, under the
    block layer's crash model. ``data``: entry index -> bytes written."""
    durable = bytearray(size)       # everything up to the last FLUSH
    for i, e in enumerate(entries):
        if e.flags & LOG_FLUSH_FLAG:
            # Everything completed before the flush is durable now.
            for j in range(last_flush_pos(entries, i) + 1, i):
                apply(durable, entries[j], data)
        if i < start or not (e.flags & (LOG_FLUSH_FLAG | LOG_FUA_FLAG)):
            continue
        image = bytearray(durable)
        lf = last_flush_pos(entries, i + 1)
        for j in range(lf + 1, i + 1):
            if entries[j].flags & LOG_FUA_FLAG:
                apply(image, entries[j], data)
        yield i, image


def last_flush_pos(entries, end: int) -> int:
    for j in range(end - 1, -1, -1):
        if entries[j].flags & LOG_FLUSH_FLAG:
            return j
    return -1


def apply(image: bytearray, e, data: dict) -> None:
    if e.flags & (LOG_MARK_FLAG | LOG_FLUSH_FLAG) and not e.data_len:
        return
    off = e.sector * 512
    image[off:off + e.nr_sectors * 512] = data.get(e.index, bytes(e.nr_sectors * 512))


class _MemCow:
    """A COW store's bytes as the synchronous device the exception store reads."""
    logical_block_size = 512

    def __init__(self, data: bytes):
        self.data = bytearray(data)
        self.nr_sectors = len(data) // 512
        self.name = "cow"

    def read(self, sector, nbytes):
        return bytes(self.data[sector * 512:sector * 512 + nbytes])

    def write(self, sector, data, *, fua=False, preflush=False):
        self.data[sector * 512:sector * 512 + len(data)] = data

    def flush(self):
        pass


def snapshot_view(image: bytes, fs_bytes: int, cow_offset: int, cow_bytes: int) -> bytes | None:
    """The snapshot's contents in a crash image: the origin with every committed exception
    read from the COW store (Linux's persistent layout), or None if the store is invalid."""
    from dmemu.dm.persistent import PersistentStore
    cow = _MemCow(image[cow_offset:cow_offset + cow_bytes])
    store = PersistentStore(cow, 0)
    meta = store.read_metadata()
    if not meta.valid:
        return None
    view = bytearray(image[:fs_bytes])
    cb = store.chunk_size * 512
    for old, new in meta.exceptions:
        view[old * cb:(old + 1) * cb] = cow.data[new * cb:(new + 1) * cb]
    return bytes(view)


async def run_log_mode(k, workload, *, size_mib: int, tools: str, broken: bool,
                       max_points: int | None, progress=print) -> tuple[int, list]:
    """Returns (points checked, failures as (point, problems)).

    The recorded disk holds the filesystem's volume and, after it, room for a COW store:
    a workload may take a snapshot of the mounted volume (``oracle.snapshot()``) the way
    lvcreate does, and then the snapshot is checked at every later point too."""
    fs_sectors = size_mib * 2048
    cow_sectors = fs_sectors // 2
    sectors = fs_sectors + cow_sectors
    env = dict(os.environ, PATH=f"{tools}:{os.environ['PATH']}")

    def sh(*argv):
        subprocess.run(list(argv), check=True, capture_output=True, env=env)

    await k.call("create_disk", size=str(sectors * 512), name="crashdata")
    await k.call("create_disk", size=str(sectors * 512 * 4), name="crashlog")
    await k.call("dm_create", name="crashlw", table=f"0 {sectors} log-writes crashdata crashlog")
    await k.call("dm_create", name="vol", table=f"0 {fs_sectors} linear crashlw 0")
    sh("mkfs.daxfs", "/dev/mapper/vol")
    await k.call("dm_message", name="crashlw", sector=0, words=["mark", "mkfs"])
    mnt = tempfile.mkdtemp(prefix="crashcheck-", dir="/tmp")
    counter = iter(range(1 << 30))

    def mark(name=None):
        name = name or f"o{next(counter)}"
        sh("dmsetup", "message", "crashlw", "0", "mark", name)
        return name

    def snapshot():
        """lvcreate -s: new devices, suspend (the filesystem freezes), swap, resume."""
        sh("dmsetup", "create", "vol-real", "--table", f"0 {fs_sectors} linear crashlw 0")
        sh("dmsetup", "create", "snap-cow", "--table",
           f"0 {cow_sectors} linear crashlw {fs_sectors}")
        sh("xfs_io", "-c", "pwrite -S 0 0 4k", "/dev/mapper/snap-cow")
        sh("dmsetup", "create", "snap", "--table", f"0 {fs_sectors} snapshot vol-real snap-cow P 8")
        sh("dmsetup", "suspend", "vol")
        sh("dmsetup", "load", "vol", "--table", f"0 {fs_sectors} snapshot-origin vol-real")
        sh("dmsetup", "resume", "vol")
        mark("snapshot")
    oracle = Oracle(mark)
    oracle.snapshot = snapshot
    opts = "commit=3600" + (",x-crashcheck-skip-flush" if broken else "")
    sh("daxfs", "/dev/mapper/vol", mnt, "-o", opts)
    try:
        workload(mnt, oracle)
    finally:
        subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
        os.rmdir(mnt)
    log = await k.open_device("crashlog", read_only=True)
    entries = await read_log(log)
    data, position = {}, {}
    for e in entries:
        if e.data_len and not e.flags & LOG_MARK_FLAG:
            data[e.index] = await log.read(e.log_sector, e.data_len)
        if e.flags & LOG_MARK_FLAG:
            name = (await log.read(e.log_sector, 512))[:e.data_len].decode()
            position[name] = e.index
    await log.close()
    snap_want = (expectations(oracle.events, position, position["snapshot"])
                 if "snapshot" in position else None)
    points, failures = 0, []
    with tempfile.NamedTemporaryFile(prefix="crashimg-") as img:
        for i, image in log_crash_states(entries, data, sectors * 512, position["mkfs"]):
            problems = await _check_bytes(img, bytes(image[:fs_sectors * 512]),
                                          expectations(oracle.events, position, i))
            if snap_want is not None and i > position["snapshot"]:
                view = snapshot_view(image, fs_sectors * 512, fs_sectors * 512, cow_sectors * 512)
                if view is None:
                    problems.append("snapshot: its COW store is invalid")
                else:
                    problems += [f"snapshot: {p}" for p in await _check_bytes(img, view, snap_want)]
            points += 1
            if problems:
                failures.append((i, problems))
            if max_points and points >= max_points:
                break
    progress(f"{points} crash points checked")
    return points, failures


async def _check_bytes(img, image: bytes, want: dict) -> list[str]:
    img.seek(0)
    img.truncate(0)
    img.write(image)
    img.flush()
    return await check_image(img.name, want)


async def run_fence_mode(k, workload, *, size_mib: int, tools: str, max_points: int | None,
                         broken: bool = False, progress=print) -> tuple[int, list]:
    """The workload on an adr namespace mounted with DAX; every fence of its persistence
    trace rebuilt and checked. Returns (points checked, failures as (fence, problems))."""
    from dmemu.persist_trace import materialize, read_trace
    env = dict(os.environ, PATH=f"{tools}:{os.environ['PATH']}")

    def sh(*argv):
        subprocess.run(list(argv), check=True, capture_output=True, env=env)

    ns = (await k.call("create_namespace", size=str(size_mib << 20), mode="fsdax",
                       persistence="adr", name="crashpmem"))["namespace"]["blockdev"]
    sh("mkfs.daxfs", f"/dev/{ns}")
    paths = await k.call("trace", action="start", device=ns)
    mnt = tempfile.mkdtemp(prefix="crashcheck-", dir="/tmp")
    counter = iter(range(1 << 30))
    position = {}

    def mark():
        name = f"o{next(counter)}"
        # durable so far: the records already in the trace
        position[name] = len(read_trace(paths["trace"])) - 1
        return name
    oracle = Oracle(mark)
    opts = "dax=always,commit=3600" + (",x-crashcheck-skip-dax-flush" if broken else "")
    sh("daxfs", f"/dev/{ns}", mnt, "-o", opts)
    try:
        workload(mnt, oracle)
    finally:
        subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
        os.rmdir(mnt)
    await k.call("trace", action="stop", device=ns)
    records = read_trace(paths["trace"])
    points, failures = 0, []
    with tempfile.NamedTemporaryFile(prefix="crashimg-") as img:
        for fence in range(len(records) + 1):
            materialize(paths["base"], records, fence, img.name)
            problems = await check_image(img.name, expectations(oracle.events, position, fence))
            points += 1
            if problems:
                failures.append((fence, problems))
            if max_points and points >= max_points:
                break
    progress(f"{points} fences checked")
    return points, failures
