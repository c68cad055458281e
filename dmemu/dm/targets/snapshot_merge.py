"""snapshot-merge: an origin that takes its snapshot's chunks back, while it is in use.

Loaded on the origin's own device in place of snapshot-origin, with the snapshot's
arguments (``<origin> <cow> P <chunk>``), as LVM does for ``lvconvert --merge``. From
resume on, a worker copies the newest run of exceptions from the COW back to the origin,
flushes the origin, and only then commits the shortened exception list (dm-snap.c's
snapshot_merge_next_chunks and merge_callback): a crash at any point leaves every chunk
either still in the store or already on the origin, and loading the table again resumes.

I/O to a chunk that still has an exception goes to the COW (it holds the chunk's current
contents), every other chunk to the origin. The worker takes back the mappings of a run
before copying it, and holds new ones off until the run is committed, as the kernel
queues bios to chunks being merged. When the store is empty the status shows no data
chunks (``allocated == metadata``), which is what LVM polls for.
"""
import errno
import logging
import os

import trio

from ..errors import TargetError
from ..region import Remap
from ..status import snapshot_status_text
from .snapshot import SnapshotTarget

log = logging.getLogger(__name__)

# Chunks copied per step: kcopyd's job size bounds the kernel's run in the same way.
MAX_MERGE_CHUNKS = 64


def _pause_after() -> int | None:
    """A test knob, read from dmemud's environment: stop merging once this many chunks
    have been merged since the table was resumed, and hold there (I/O goes on) until the
    device is suspended or removed, or the power fails. It lets a test cut the power while
    a merge is certainly still under way. Unset: merge to the end."""
    v = os.environ.get("DMEMU_MERGE_PAUSE_AFTER_CHUNKS")
    return int(v) if v and v.isdigit() else None


class SnapshotMergeTarget(SnapshotTarget):
    name = "snapshot-merge"
    version = (1, 16, 0)

    def __init__(self, dm, line, args):
        if args.store_type not in ("P", "PO"):
            raise TargetError(errno.EINVAL, "snapshot-merge: Snapshot exception store does "
                                            "not support snapshot-merge.")
        super().__init__(dm, line, args)
        # Not a snapshot of anyone any more: origin writes copy nothing into this store.
        dm.origins.unregister(self)
        if not self.valid:
            raise TargetError(errno.EINVAL, "snapshot-merge: Snapshot is marked invalid: "
                                            "cannot merge it.")
        self.merge_failed = False
        self.merging: tuple[int, int] | None = None     # chunks [a, b) being copied now
        self._merged = trio.Event()
        self._scope: trio.CancelScope | None = None

    def status_text(self):
        return snapshot_status_text(self.store.usage(), valid=self.valid,
                                    merge_failed=self.merge_failed)

    # -- mapping ---------------------------------------------------------------------------

    def _remap_chunk(self, chunk: int) -> Remap:
        """The parent's run, cut so it never reaches into the run being merged."""
        r = super()._remap_chunk(chunk)
        if self.merging is None:
            return r
        a, b = (x << self.shift for x in self.merging)
        lo, hi = r.start, r.start + r.length
        if hi <= a or lo >= b:
            return r
        pos = chunk << self.shift
        new_lo, new_hi = (lo, a) if pos < a else (b, hi)
        return Remap(new_lo, new_hi - new_lo, r.kind, r.lower, r.lower_start + (new_lo - lo))

    async def remap_range(self, offset, nr, write):
        # not the snapshot's batch copy-on-write: a merging target copies nothing on write
        return await self.remap(offset, write)

    async def remap(self, offset, write):
        chunk = offset >> self.shift
        while self.merging is not None and self.merging[0] <= chunk < self.merging[1]:
            await self._merged.wait()
        if not self.valid:
            raise self._fail("I/O")
        return self._remap_chunk(chunk)

    def remap_sync(self, offset, write):
        # The daemon's own bios are carried out before the worker copies a run (it copies
        # synchronously), so the COW still holds a merging chunk's current contents.
        if not self.valid:
            raise self._fail("I/O")
        return self._remap_chunk(offset >> self.shift)

    # -- the merge worker ------------------------------------------------------------------

    async def resume(self):
        # Loaded while the snapshot's own device still uses the COW: its exceptions (and
        # the store as that device left it) come over now, as snapshot_merge_resume does.
        if self.handover_from is not None:
            async with self.dm.origins.lock(self.origin):
                self._handover()
        self.active = True
        if self._scope is None and not self.merge_failed:
            self.dm.queue_work(self._merge_all)

    def postsuspend(self):
        self._stop()

    def dtr(self):
        self.active = False
        self._stop()

    def _stop(self):
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None

    async def _merge_all(self):
        with trio.CancelScope() as scope:
            self._scope = scope
            pause, merged = _pause_after(), 0
            try:
                while True:
                    nr, old, new = self.store.prepare_merge()
                    if nr == 0:
                        log.info("%s: merge finished", self.md.name)
                        self.dm.table_event(self.md)
                        return
                    if pause is not None:
                        if merged >= pause:
                            log.warning("%s: merge paused after %d chunks "
                                        "(DMEMU_MERGE_PAUSE_AFTER_CHUNKS)", self.md.name, merged)
                            await trio.sleep_forever()
                        nr = min(nr, pause - merged)
                    merged += min(nr, MAX_MERGE_CHUNKS)
                    await self._merge_run(nr, old, new)
                    await trio.sleep(0)          # let I/O in between runs
            except _MergeStop:
                return
            finally:
                if self._scope is scope:
                    self._scope = None

    async def _merge_run(self, nr: int, old: int, new: int) -> None:
        nr = min(nr, MAX_MERGE_CHUNKS)
        first_old, first_new = old - nr + 1, new - nr + 1
        self.merging = (first_old, old + 1)
        self._merged = trio.Event()
        md = self.md
        start = self.begin + (first_old << self.shift)
        try:
            failed = await self.dm.leases.revoke(
                lambda lease: lease.covers(md, start, start + (nr << self.shift)),
                "snapshot merge")
            if failed:
                # A mapping of the COW copy may still be written: moving the chunk now
                # could lose that write. Stop; the store still holds every chunk.
                log.error("device-mapper: snapshots: %s: merge stopped: %s kept mappings",
                          md.name, ", ".join(f"pid {c.pid}" for c in failed))
                self.merge_failed = True
                self.dm.table_event(md)
                raise _MergeStop()
            # From here to the commit nothing awaits: no bio can come in between.
            sector = first_old << self.shift
            n = min(nr << self.shift, self.origin.nr_sectors - sector)
            try:
                data = self.cow.read(first_new << self.shift, n * 512)
                self.origin.write(sector, data)
                self.origin.flush()         # merged chunks durable before the store forgets them
                self.store.commit_merge(nr)
            except OSError as e:
                log.error("device-mapper: snapshots: %s: merge failed: %s", md.name, e)
                self.merge_failed = True
                self.dm.table_event(md)
                raise _MergeStop() from None
            for c in range(first_old, old + 1):
                self.exceptions.pop(c, None)
        finally:
            self.merging = None
            self._merged.set()


class _MergeStop(Exception):
    """A copy failed: the status says "Merge failed" and the worker ends."""
