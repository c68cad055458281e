"""Recording a workload on a real daxfs mount, for crash-state exploration.

A workload runs on a fresh daxfs whose device records what reaches it: through a
log-writes target over a plain disk with a volatile write cache (the ``log`` model), or as
the persistence trace of an adr pmem namespace mounted with DAX (the ``pmem`` model). The
workload tells an oracle (crash_oracle.Oracle) what it made durable, and the oracle puts
a mark in the record at that moment. The result is a crash_states.Recording: plain data
that any process can rebuild every crash state from.

One dmemud serves a whole run: each recording makes its own devices under names of its
own and destroys them after.
"""
import itertools
import os
import subprocess
import tempfile

import trio

from dmemu.dm.replay import read_log
from dmemu.dm.targets.log_writes import LOG_DISCARD_FLAG, LOG_FLUSH_FLAG, LOG_FUA_FLAG, LOG_MARK_FLAG

from .crash_oracle import Oracle
from .crash_states import Recording, pieces_of

_serial = itertools.count()


def _sh(tools: str):
    env = dict(os.environ, PATH=f"{tools}:{os.environ['PATH']}")

    def sh(*argv):
        r = subprocess.run(list(argv), capture_output=True, env=env, text=True)
        if r.returncode:
            raise RuntimeError(f"{' '.join(argv)}: {(r.stderr or r.stdout).strip()}")
    return sh


async def _mkfs(device: str) -> None:
    """mkfs.daxfs, in this process: a recording's cost is mostly processes starting."""
    from .mkfs import mkfs
    from .source import open_source
    async with open_source(device, exclusive=True, read_only=False) as dev:
        await mkfs(dev)


async def _run_workload(workload, mnt: str, oracle: Oracle) -> None:
    """The workload in a thread (its marks reach dmemud through this trio loop)."""
    oracle.observe()
    await trio.to_thread.run_sync(workload, mnt, oracle)
    oracle.observe()


async def _quietly(call) -> None:
    """Clean-up that must not hide the error that brought us here."""
    try:
        await call
    except Exception:
        pass


async def _remove_all(k, names: list, patience: float = 30.0) -> None:
    """Remove the devices in ``names`` (emptying it), holders before what they hold. The
    daxfs process of a mount closes its device a moment after the unmount returns (its
    last commit comes first), so a device still open is tried again for a while."""
    with trio.move_on_after(patience):
        while names:
            for dm in list(names):
                try:
                    await k.call("dm_remove", name=dm)
                except Exception:           # still open, or held by another of them
                    continue
                names.remove(dm)
            if names:
                await trio.sleep(0.02)
    if names:
        await k.call("dm_remove", name=names[0])     # the error, as dmemud words it


async def _mount(tools: str, device: str, mnt: str, opts: str):
    """daxfs in the foreground, as our child: its exit says its last write is done, so a
    recording ends at the same write every time (a daemonized mount may still be writing
    after the unmount returns)."""
    env = dict(os.environ, PATH=f"{tools}:{os.environ['PATH']}")
    errors = tempfile.TemporaryFile(mode="w+")     # not a pipe: nobody drains it meanwhile
    proc = subprocess.Popen([f"{tools}/daxfs", device, mnt, "-f", "-o", opts], env=env,
                            stdout=subprocess.DEVNULL, stderr=errors, text=True)
    proc.errors = errors
    with trio.move_on_after(120):
        while not os.path.ismount(mnt):
            if proc.poll() is not None:
                errors.seek(0)
                msg = errors.read().strip().splitlines()
                errors.close()
                raise RuntimeError(f"daxfs {device}: {msg[-1] if msg else proc.returncode}")
            await trio.sleep(0.02)
    if not os.path.ismount(mnt):
        proc.kill()
        proc.wait()
        errors.close()
        raise RuntimeError(f"daxfs {device}: not mounted after 120 s")
    return proc


async def _unmount_and_wait(mnt: str, proc) -> None:
    await trio.to_thread.run_sync(_unmount, mnt)
    try:
        await trio.to_thread.run_sync(proc.wait, 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.errors.close()


async def _run_mounted(tools: str, device: str, opts: str, workload, mark, alphabet,
                       snapshot=None) -> Oracle:
    """The workload on a fresh mount of device, unmounted (and its daemon gone) after,
    whatever happened; the oracle holds what it promised."""
    mnt = tempfile.mkdtemp(prefix=f"crashcheck-{os.getpid()}-mnt-", dir="/tmp")
    oracle = Oracle(mark, mnt, alphabet=alphabet)
    oracle.snapshot = snapshot
    try:
        daemon = await _mount(tools, device, mnt, opts)
    except BaseException:
        with trio.CancelScope(shield=True):      # also when interrupted (Ctrl-C)
            await trio.to_thread.run_sync(_unmount, mnt)
        raise
    try:
        await _run_workload(workload, mnt, oracle)
    finally:
        with trio.CancelScope(shield=True):
            await _unmount_and_wait(mnt, daemon)
    return oracle


def _unmount(mnt: str) -> None:
    subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
    os.rmdir(mnt)


async def record_log(k, name: str, workload, *, size_mib: int, tools: str,
                     broken: bool = False, alphabet: bytes | None = None) -> Recording:
    """``workload`` on a daxfs over log-writes over a disk with a volatile write cache.

    The recorded disk holds the filesystem's volume and, after it, room for a COW store:
    a workload may take a snapshot of the mounted volume (``oracle.snapshot()``) the way
    lvcreate does, and then the snapshot is checked at every later point too."""
    sh = _sh(tools)
    tag = f"cc{os.getpid()}x{next(_serial)}"
    fs_sectors = size_mib * 2048
    cow_sectors = fs_sectors // 2
    sectors = fs_sectors + cow_sectors
    data_dev, log_dev, lw, vol = f"{tag}d", f"{tag}l", f"{tag}lw", f"{tag}v"
    made_dm, made_disks = [], []
    try:
        await k.call("create_disk", size=str(sectors * 512), name=data_dev)
        made_disks.append(data_dev)
        await k.call("create_disk", size=str(sectors * 512 * 4), name=log_dev)
        made_disks.append(log_dev)
        await k.call("dm_create", name=lw, table=f"0 {sectors} log-writes {data_dev} {log_dev}")
        made_dm.append(lw)
        await k.call("dm_create", name=vol, table=f"0 {fs_sectors} linear {lw} 0")
        made_dm.append(vol)
        await _mkfs(f"/dev/mapper/{vol}")
        await k.call("dm_message", name=lw, sector=0, words=["mark", "mkfs"])
        counter = itertools.count()
        token = trio.lowlevel.current_trio_token()

        def mark(label=None):
            label = label or f"o{next(counter)}"
            trio.from_thread.run(lambda: k.call("dm_message", name=lw, sector=0,
                                                words=["mark", label]), trio_token=token)
            return label

        def snapshot():
            """lvcreate -s: new devices, suspend (the filesystem freezes), swap, resume."""
            sh("dmsetup", "create", f"{tag}r", "--table", f"0 {fs_sectors} linear {lw} 0")
            made_dm.insert(0, f"{tag}r")
            sh("dmsetup", "create", f"{tag}c", "--table",
               f"0 {cow_sectors} linear {lw} {fs_sectors}")
            made_dm.insert(0, f"{tag}c")
            sh("xfs_io", "-c", "pwrite -S 0 0 4k", f"/dev/mapper/{tag}c")
            sh("dmsetup", "create", f"{tag}s", "--table",
               f"0 {fs_sectors} snapshot {tag}r {tag}c P 8")
            made_dm.insert(0, f"{tag}s")
            sh("dmsetup", "suspend", vol)
            sh("dmsetup", "load", vol, "--table", f"0 {fs_sectors} snapshot-origin {tag}r")
            sh("dmsetup", "resume", vol)
            mark("snapshot")

        opts = "commit=3600" + (",x-crashcheck-skip-flush" if broken else "")
        oracle = await _run_mounted(tools, f"/dev/mapper/{vol}", opts, workload, mark,
                                    alphabet, snapshot=snapshot)
        await _remove_all(k, made_dm)
        log = await k.open_device(log_dev, read_only=True)
        try:
            ops, position = await _ops_of_log(log)
        finally:
            await log.close()
    finally:
        with trio.CancelScope(shield=True):      # also when interrupted (Ctrl-C)
            await _quietly(_remove_all(k, made_dm))
            for d in made_disks:
                await _quietly(k.call("destroy", device=d, kind="disk"))
    rec = Recording(workload=name, model="log", size=sectors * 512, fs_bytes=fs_sectors * 512,
                    initial=[], ops=ops, start=position["mkfs"], events=oracle.events,
                    position=position,
                    bounds={"max_size": oracle.max_size, "alphabet": oracle.alphabet})
    if "snapshot" in position:
        rec.snapshot = {"at": position["snapshot"], "cow_offset": fs_sectors * 512,
                        "cow_bytes": cow_sectors * 512}
    return rec


async def _ops_of_log(log):
    """The log as crash_states ops, and each mark's op index (the op it precedes)."""
    ops, position = [], {}
    for e in await read_log(log):
        if e.flags & LOG_MARK_FLAG:
            label = (await log.read(e.log_sector, 512))[:e.data_len].decode()
            position[label] = len(ops)
        elif e.flags & LOG_DISCARD_FLAG:
            ops.append(("w", e.sector * 512, bytes(e.nr_sectors * 512), False))
        elif e.flags & LOG_FLUSH_FLAG and not e.data_len:
            ops.append(("f",))
        elif e.data_len:
            if e.flags & LOG_FLUSH_FLAG:
                ops.append(("f",))
            ops.append(("w", e.sector * 512, await log.read(e.log_sector, e.data_len),
                        bool(e.flags & LOG_FUA_FLAG)))
    return ops, position


async def record_pmem(k, name: str, workload, *, size_mib: int, tools: str,
                      broken: bool = False, alphabet: bytes | None = None) -> Recording:
    """``workload`` on an adr namespace mounted with DAX, with its persistence trace."""
    from dmemu.persist_trace import read_trace
    sh = _sh(tools)
    ns = (await k.call("create_namespace", size=str(size_mib << 20), mode="fsdax",
                       persistence="adr"))["namespace"]
    dev = ns["blockdev"]
    try:
        await _mkfs(f"/dev/{dev}")
        paths = await k.call("trace", action="start", device=dev)
        counter = itertools.count()
        position = {}

        def mark(label=None):
            label = label or f"o{next(counter)}"
            # durable so far: the records already in the trace
            position[label] = len(read_trace(paths["trace"]))
            return label

        opts = "dax=always,commit=3600" + (",x-crashcheck-skip-dax-flush" if broken else "")
        oracle = await _run_mounted(tools, f"/dev/{dev}", opts, workload, mark, alphabet)
        await k.call("trace", action="stop", device=dev)
        records = read_trace(paths["trace"])
        with open(paths["base"], "rb") as f:
            initial = pieces_of(f.read())
        for p in (paths["trace"], paths["base"]):
            try:
                os.unlink(p)
            except OSError:
                pass
    finally:
        with trio.CancelScope(shield=True):      # also when interrupted (Ctrl-C)
            await _quietly(k.call("trace", action="stop", device=dev))
            await _quietly(k.call("destroy", device=dev, kind="pmem"))
    return Recording(workload=name, model="pmem", size=size_mib << 20, fs_bytes=size_mib << 20,
                     initial=initial, ops=[("r", off, data) for off, data in records], start=0,
                     events=oracle.events, position=position,
                     bounds={"max_size": oracle.max_size, "alphabet": oracle.alphabet})


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


def snapshot_view(image, fs_bytes: int, cow_offset: int, cow_bytes: int) -> bytes | None:
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
