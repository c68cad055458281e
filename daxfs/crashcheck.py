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
    """What the workload promised: (mark, path, sha256 or None for 'gone')."""
    mark: callable
    events: list = field(default_factory=list)
    touched: dict = field(default_factory=dict)     # path -> mark of the last change

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


async def run_log_mode(k, workload, *, size_mib: int, tools: str, broken: bool,
                       max_points: int | None, progress=print) -> tuple[int, list]:
    """Returns (points checked, failures as (point, problems))."""
    sectors = size_mib * 2048
    env = dict(os.environ, PATH=f"{tools}:{os.environ['PATH']}")

    def sh(*argv):
        subprocess.run(list(argv), check=True, capture_output=True, env=env)

    await k.call("create_disk", size=str(sectors * 512), name="crashdata")
    await k.call("create_disk", size=str(sectors * 512 * 4), name="crashlog")
    await k.call("dm_create", name="crashlw", table=f"0 {sectors} log-writes crashdata crashlog")
    sh("mkfs.daxfs", "/dev/mapper/crashlw")
    await k.call("dm_message", name="crashlw", sector=0, words=["mark", "mkfs"])
    mnt = tempfile.mkdtemp(prefix="crashcheck-", dir="/tmp")
    counter = iter(range(1 << 30))

    def mark():
        name = f"o{next(counter)}"
        sh("dmsetup", "message", "crashlw", "0", "mark", name)
        return name
    oracle = Oracle(mark)
    opts = "commit=3600" + (",x-crashcheck-skip-flush" if broken else "")
    sh("daxfs", "/dev/mapper/crashlw", mnt, "-o", opts)
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
    points, failures = 0, []
    with tempfile.NamedTemporaryFile(prefix="crashimg-") as img:
        for i, image in log_crash_states(entries, data, sectors * 512, position["mkfs"]):
            img.seek(0)
            img.write(image)
            img.flush()
            want = expectations(oracle.events, position, i)
            problems = await check_image(img.name, want)
            points += 1
            if problems:
                failures.append((i, problems))
            if max_points and points >= max_points:
                break
    progress(f"{points} crash points checked")
    return points, failures


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
