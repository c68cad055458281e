"""snapshot: a point-in-time view of an origin, its changes kept in an exception store.

A chunk with an exception lives on the COW device; any other chunk is read from the
origin. A write to the snapshot allocates an exception and copies the origin chunk first.
When the store is full the snapshot is invalidated (P, N) and all its I/O fails, or for
PO it overflows: writes fail, reads carry on. With ``snapshot_dax`` the target implements
direct_access when origin and COW are both DAX-capable; a table that mixes DAX-capable and
non-DAX devices under one snapshot is refused, with the devices named.
"""
import errno
import logging

from ...errors import DmemuError
from ..errors import DMError, ExceptionStoreError, TargetError
from ..cow import BATCH_SECTORS
from ..exception_store import create_exception_store
from ..region import Remap
from ..status import snapshot_status_text, snapshot_table_text
from ..target_args import check_device_area, check_snapshot_devices
from .base import Target

log = logging.getLogger(__name__)

# How many neighbouring chunks one read region may cover, when they map the same way.
MAX_RUN = 256


class SnapshotTarget(Target):
    name = "snapshot"
    version = (1, 16, 0)

    def __init__(self, dm, line, args):
        super().__init__(dm, line, args)
        self.args = args
        self.origin = dm.get_device(args.origin, line)
        self.cow = dm.get_device(args.cow, line)
        check_snapshot_devices(args, self.origin, self.cow)
        check_device_area(self.name, self.origin, 0, self.len)
        # Linux has no DAX snapshots, so it never minds the mix (design.md 3 does).
        if not dm.linux and self.origin.dax_capable != self.cow.dax_capable:
            raise TargetError(errno.EINVAL, mixed_dax_message(dm, self.origin, self.cow))
        self.direct_access = dm.params["snapshot_dax"]
        self.md = dm.loading          # the mapped device this table is loaded into
        self.overflow = False
        self.active = False
        self.store = create_exception_store(args.store_type, args.chunk_size, self.cow)
        # register_snapshot(): a snapshot already using this COW device (the live table of a
        # device being reloaded) keeps committing exceptions until this one is resumed, so
        # the metadata on disk is not the whole story yet: the exceptions are handed over at
        # resume instead of being read now. Only one handover may be pending at a time.
        sharing = dm.origins.sharing_cow(self.origin, self.cow)
        if len(sharing) > 1 or any(s.handover_from is not None for s in sharing):
            raise TargetError(errno.EINVAL,
                              "snapshot: Snapshot cow pairing for exception table handover failed")
        self.handover_from = sharing[0] if sharing else None
        if self.handover_from is not None:
            src = self.handover_from
            self.chunk_size, self.shift = src.chunk_size, src.shift
            self.exceptions, self.valid, self.warnings = {}, src.valid, []
        else:
            try:
                meta = self.store.read_metadata()
            except OSError as e:
                raise TargetError(errno.EIO, f"snapshot: Failed to read snapshot metadata: {e.strerror}")
            except DMError as e:
                if e.message == "Invalid or corrupt snapshot":
                    dm.kernel_log("persistent snapshot", e.message)   # read_header's DMWARN
                raise TargetError(e.errno, f"snapshot: {e.message}") from None
            self.chunk_size = self.store.chunk_size
            self.shift = self.chunk_size.bit_length() - 1
            self.exceptions = dict(meta.exceptions)
            self.valid = meta.valid
            self.warnings = meta.warnings
            for w in self.warnings:
                # snapshot_ctr's own warning, or read_header's (dm-snap-persistent.c)
                dm.kernel_log("snapshots" if w == "Snapshot is marked invalid." else
                              "persistent snapshot", w)
        dm.origins.register(self)

    def devices(self):
        return [self.origin, self.cow]

    def table_text(self):
        return snapshot_table_text(self.origin.devno, self.cow.devno, self.store.table_text(),
                                   self.args.features)

    def status_text(self):
        return snapshot_status_text(self.store.usage(), valid=self.valid, overflow=self.overflow)

    def has_exception(self, chunk: int) -> bool:
        return chunk in self.exceptions

    # -- copy-on-write ---------------------------------------------------------------------

    def _copy(self, chunks: list[int]) -> tuple[int, bool]:
        """Copy origin ``chunks`` (ascending, none held yet) into the store as one batch.

        The order is the persistent store's crash contract: every chunk's data is written
        to the COW device first, then the exceptions are committed in allocation order, and
        the store writes its metadata area once for the batch (once per area it fills),
        with PREFLUSH|FUA, so no metadata on the media ever names a chunk whose data is not
        there. Runs of chunks consecutive on both devices move as one read and one write.
        Returns (chunks committed, whether the store had room for all of them).
        """
        try:
            news = self.store.prepare_batch(chunks)
        except ExceptionStoreError:
            news = []                   # the store was invalidated meanwhile
        room = len(news) == len(chunks)
        pairs = list(zip(chunks, news))
        copied = []
        i = 0
        while i < len(pairs):
            j = i + 1
            while j < len(pairs) and pairs[j][0] == pairs[j - 1][0] + 1 \
                    and pairs[j][1] == pairs[j - 1][1] + 1:
                j += 1
            old, new = pairs[i]
            first = old << self.shift
            n = min((j - i) << self.shift, self.origin.nr_sectors - first)
            try:
                # a view of the origin's media, copied once, into the COW device
                self.cow.write(new << self.shift, self.origin.read(first, n * 512, view=True))
                ok = True
            except OSError:
                log.error("snapshot %s: copying chunks %d-%d failed", self.md.name, old,
                          pairs[j - 1][0])
                ok = False
            copied += [(o, w, ok) for o, w in pairs[i:j]]
            i = j
        done_count = 0
        for done in self.store.commit_batch(copied):
            if done.success:
                self.exceptions[done.old_chunk] = done.new_chunk
                done_count += 1
            else:
                self.invalidate("Error reading/writing.")
        return done_count, room

    def copy_origin_chunks(self, sector: int, end: int) -> tuple[int, int] | None:
        """Called by the origin before a write to sectors [sector, end): copy every chunk
        of them this snapshot lacks, in one batch. Returns the sector span of the chunks
        copied just now, or None."""
        if not self.valid:
            return None
        first, last = sector >> self.shift, (end - 1) >> self.shift
        todo = [c for c in range(first, last + 1) if c not in self.exceptions]
        if not todo:
            return None
        n, room = self._copy(todo)
        if not room:
            self.invalidate("Unable to allocate exception.")
        if not n:
            return None
        return todo[0] << self.shift, (todo[-1] + 1) << self.shift

    def invalidate(self, why: str) -> None:
        if not self.valid:
            return
        self.dm.kernel_log("snapshots", f"Invalidating snapshot: {why}")
        self.valid = False
        self.store.drop_snapshot()
        self.dm.table_event(self.md)
        md = self.md
        self.dm.leases.revoke_soon(lambda lease: lease.through(md), "snapshot invalidated")

    async def revoke_all(self, why: str) -> None:
        md = self.md
        await self.dm.leases.revoke(lambda lease: lease.through(md), why)

    # -- mapping ---------------------------------------------------------------------------

    def _fail(self, what: str):
        state = "Overflow" if self.overflow and self.valid else "Invalid"
        return DmemuError(errno.EIO, f"{self.md.name}: snapshot is {state}: {what} fails")

    def _run(self, chunk: int, limit: int, step) -> tuple[int, int]:
        """The run of chunks around ``chunk`` that ``step(c)`` says map like it."""
        lo, hi, n = chunk, chunk + 1, 0
        while hi < limit and n < MAX_RUN and step(hi):
            hi, n = hi + 1, n + 1
        n = 0
        while lo > 0 and n < MAX_RUN and step(lo - 1):
            lo, n = lo - 1, n + 1
        return lo, hi

    def _remap_chunk(self, chunk: int) -> Remap:
        nchunks = -(-self.len // self.chunk_size)
        new = self.exceptions.get(chunk)
        if new is None:
            lo, hi = self._run(chunk, nchunks, lambda c: c not in self.exceptions)
            start = lo << self.shift
            return Remap(start, min(hi << self.shift, self.len) - start, "remap", self.origin, start)
        delta = new - chunk
        lo, hi = self._run(chunk, nchunks, lambda c: self.exceptions.get(c) == c + delta)
        start = lo << self.shift
        return Remap(start, min(hi << self.shift, self.len) - start, "remap", self.cow,
                     (lo + delta) << self.shift)

    def remap_sync(self, offset, write):
        if not self.valid:
            raise self._fail("I/O")
        if write and self.overflow:
            raise self._fail("write")
        return self._remap_chunk(offset >> self.shift)

    async def remap(self, offset, write):
        return await self.remap_range(offset, 1, write)

    async def remap_range(self, offset, nr, write):
        """A write to the snapshot itself copies the origin chunks it covers first, all of
        them in one batch (as an origin write does), then maps onto the copies."""
        if not self.valid:
            raise self._fail("I/O")
        if write and self.overflow:
            # snapshot_map: once overflowed, every write fails, held chunks included
            raise self._fail("write")
        chunk = offset >> self.shift
        if not write or chunk in self.exceptions:
            return self._remap_chunk(chunk)
        last = min((offset + max(nr, 1) - 1) >> self.shift,
                   chunk + max(1, BATCH_SECTORS >> self.shift) - 1,
                   (self.len - 1) >> self.shift)
        async with self.dm.origins.lock(self.origin):
            todo = [c for c in range(chunk, last + 1) if c not in self.exceptions]
            if todo:
                if not self.valid:
                    raise self._fail("I/O")
                if not self._copy(todo)[1]:
                    if self.store.type_name == "PO":
                        await self._overflowed()
                        raise self._fail("write")
                    self.invalidate("Unable to allocate exception.")
                    await self.revoke_all("snapshot invalidated")
                    raise self._fail("write")
                # Read leases of these chunks still point at the origin: take them back.
                first = self.begin + (todo[0] << self.shift)
                end = self.begin + ((todo[-1] + 1) << self.shift)
                md = self.md
                await self.dm.leases.revoke(lambda lease: lease.covers(md, first, end),
                                            "snapshot write")
            if not self.valid:
                raise self._fail("I/O")
            return self._remap_chunk(chunk)

    async def _overflowed(self) -> None:
        """A PO store ran out of room on a snapshot write: reads go on, writes stop, and
        mappings handed out for writing held chunks are taken back."""
        if not self.overflow:
            self.overflow = True
            self.dm.kernel_log("snapshots", "Snapshot overflowed: Unable to allocate exception.")
            self.dm.table_event(self.md)
        md = self.md
        await self.dm.leases.revoke(lambda lease: lease.write and lease.through(md),
                                    "snapshot overflowed")

    async def preresume(self):
        src = self.handover_from
        if src is not None and src.md is not None and not src.md.suspended:
            self.dm.kernel_log("snapshots", "Unable to perform snapshot handover until source is suspended.")
            raise TargetError(errno.EINVAL, "snapshot: Unable to perform snapshot handover "
                                            "until source is suspended")

    def _handover(self) -> None:
        """__handover_exceptions: take the source's exceptions and store as they are now;
        the source gets no further I/O."""
        src, self.handover_from = self.handover_from, None
        self.store, src.store = src.store, self.store
        if self.args.store_type in ("P", "PO"):
            # the new table says whether userspace understands Overflow
            self.store.overflow = self.args.store_type == "PO"
            self.store.type_name = self.args.store_type
        self.exceptions, src.exceptions = src.exceptions, {}
        self.chunk_size, self.shift = self.store.chunk_size, self.store.chunk_size.bit_length() - 1
        self.valid, self.overflow = src.valid, src.overflow
        src.valid = False

    async def resume(self):
        if self.handover_from is not None:
            async with self.dm.origins.lock(self.origin):
                self._handover()
        self.active = True
        # Leases handed out before this snapshot existed write the origin without copying.
        await self.dm.revoke_reaching(self.origin, 0, self.origin.nr_sectors, "snapshot activated",
                                      writes_only=True)

    def dtr(self):
        self.active = False
        for dest in self.dm.origins.snapshots_of(self.origin):
            if dest.handover_from is self:
                # the source goes before the handover happened: the destination has nothing
                self.dm.kernel_log("snapshots", "Cancelling snapshot handover.")
                dest.valid = False
                dest.handover_from = None
        self.dm.origins.unregister(self)


def mixed_dax_message(dm, origin, cow) -> str:
    def side(role, dev):
        state = "DAX-capable" if dev.dax_capable else "not DAX-capable"
        return f"{role} {dm.describe(dev)} is {state}"
    return ("snapshot: cannot mix DAX-capable and non-DAX devices in one snapshot: "
            f"{side('origin', origin)}, {side('COW', cow)}; put the COW on a "
            + ("DAX-capable device (a pmem namespace in fsdax mode)" if origin.dax_capable
               else "non-DAX device") + " like its origin")
