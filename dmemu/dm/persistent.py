"""The persistent exception store (`P`, `PO`): Linux's on-disk format, version 1.

Layout of the COW device (dm-snap-persistent.c), CS = chunk size in sectors, chunk k at
byte k*CS*512, all integers little-endian:

    chunk 0            header (DiskHeader below; the rest of the chunk is zero)
    chunk 1            metadata area 0: E = CS*512/16 exception entries
    chunks 2 .. E+1    the data chunks area 0 describes
    chunk E+2          metadata area 1, and so on: area i at chunk 1 + i*(E+1)

An entry is ``u64 old_chunk, u64 new_chunk``; an area's list ends at the first entry
with new_chunk == 0 (chunk 0 is the header, so it is never a real target). An area with
all E entries used is full and loading continues in the next one; the area after a full
one is zeroed before the full one is committed, so the chain always ends.

Durability: a commit writes the whole current area with REQ_PREFLUSH|REQ_FUA, so the
copied data (written before, plainly) is durable before the metadata naming it, and the
metadata is durable when the write completes. Header and zeroing writes are plain writes,
made durable by the next commit's preflush, exactly as in the kernel.
"""
import errno
import logging
import struct

from .errors import DMError, ExceptionStoreError, ExceptionStoreFull
from .exception_store import (DM_CHUNK_SIZE_DEFAULT_SECTORS, SECTOR_SHIFT, SECTOR_SIZE,
                              Completion, ExceptionStore, Metadata, Usage,
                              validate_chunk_size)

log = logging.getLogger(__name__)

# "SnAp" read as a little-endian u32 (SNAP_MAGIC).
SNAP_MAGIC = 0x70416E53
# SNAPSHOT_DISK_VERSION: no backward or forward compatibility in the kernel either.
SNAPSHOT_DISK_VERSION = 1
# NUM_SNAPSHOT_HDR_CHUNKS: the header occupies chunk 0 only.
NUM_SNAPSHOT_HDR_CHUNKS = 1

DISK_HEADER = struct.Struct("<IIII")
"""struct disk_header: u32 magic (SNAP_MAGIC; 0 = no store yet), u32 valid (1, or 0 once
invalidated: never revived), u32 version (1), u32 chunk_size (sectors; overrides the
table's)."""

DISK_EXCEPTION = struct.Struct("<QQ")
"""struct disk_exception: u64 old_chunk (origin chunk), u64 new_chunk (COW chunk, != 0
for a used entry)."""


def exceptions_per_area(chunk_size: int) -> int:
    """E: how many 16-byte entries one metadata chunk holds."""
    return (chunk_size << SECTOR_SHIFT) // DISK_EXCEPTION.size


def area_location(chunk_size: int, area: int) -> int:
    """The chunk holding metadata area ``area``."""
    return NUM_SNAPSHOT_HDR_CHUNKS + (exceptions_per_area(chunk_size) + 1) * area


def is_metadata_chunk(chunk_size: int, chunk: int) -> bool:
    """True for the header and every metadata area chunk (never handed out as data)."""
    return chunk == 0 or chunk % (exceptions_per_area(chunk_size) + 1) == NUM_SNAPSHOT_HDR_CHUNKS


class PersistentStore(ExceptionStore):
    """pstore: the in-memory state of a persistent store.

    current_area: index of the metadata area being filled (its image is ``area``).
    current_committed: entries of ``area`` already used.
    next_free: next COW chunk to hand out; never a header or metadata chunk.
    """

    def __init__(self, cow, chunk_size: int, *, overflow: bool = False,
                 origin_block_size: int = SECTOR_SIZE):
        super().__init__(cow, chunk_size, origin_block_size=origin_block_size)
        self.overflow = overflow            # PO: userspace understands "Overflow"
        self.type_name = "PO" if overflow else "P"
        self.version = SNAPSHOT_DISK_VERSION
        self.next_free = NUM_SNAPSHOT_HDR_CHUNKS + 1   # skip the header and area 0
        self.current_area = 0
        self.current_committed = 0
        self.exceptions_per_area = 0
        self.area = bytearray()
        self._callbacks: list[tuple[int, int]] = []
        self._batch: tuple | None = None    # (old chunks, new chunks) from prepare_batch

    # -- I/O -------------------------------------------------------------------------
    def _chunk_bytes(self) -> int:
        return self.chunk_size << SECTOR_SHIFT

    def _chunk_write(self, chunk: int, data, **flags) -> None:
        self.cow.write(chunk * self.chunk_size, bytes(data), **flags)

    def _area_location(self, area: int) -> int:
        return NUM_SNAPSHOT_HDR_CHUNKS + (self.exceptions_per_area + 1) * area

    def _write_header(self) -> None:
        header = bytearray(self._chunk_bytes())
        DISK_HEADER.pack_into(header, 0, SNAP_MAGIC, int(self.valid), self.version,
                              self.chunk_size)
        self._chunk_write(0, header)

    def _zero_disk_area(self, area: int) -> None:
        self._chunk_write(self._area_location(area), bytes(self._chunk_bytes()))

    # -- loading ---------------------------------------------------------------------
    def _read_header(self, warnings: list) -> bool:
        """Read chunk 0; return True when there is no store yet (magic 0)."""
        supplied = self.chunk_size != 0
        if not supplied:
            self.chunk_size = max(DM_CHUNK_SIZE_DEFAULT_SECTORS,
                                  self.cow.logical_block_size >> SECTOR_SHIFT)
        try:
            raw = self.cow.read(0, self._chunk_bytes())
        except OSError as e:
            raise ExceptionStoreError(e.errno or errno.EIO,
                                      f"Failed to read snapshot metadata: {e}") from e
        magic, valid, version, chunk_size = DISK_HEADER.unpack_from(raw, 0)
        if magic == 0:
            return True
        if magic != SNAP_MAGIC:
            raise ExceptionStoreError(errno.ENXIO, "Invalid or corrupt snapshot")
        self.valid = bool(valid)
        self.version = version
        if chunk_size != self.chunk_size:
            if supplied:
                warnings.append(f"chunk size {chunk_size} in device metadata overrides "
                                f"table chunk size of {self.chunk_size}.")
                log.warning("%s", warnings[-1])
            try:
                validate_chunk_size(chunk_size, cow_block_size=self.cow.logical_block_size,
                                    origin_block_size=self.origin_block_size)
            except DMError as e:
                raise ExceptionStoreError(
                    e.errno, f"invalid on-disk chunk size {chunk_size}: {e.message}.") from e
            self.chunk_size = chunk_size
        return False

    def _skip_metadata(self) -> None:
        if self.next_free % (self.exceptions_per_area + 1) == NUM_SNAPSHOT_HDR_CHUNKS:
            self.next_free += 1

    def _read_exceptions(self, exceptions: list) -> None:
        self.current_area = 0
        while True:
            location = self._area_location(self.current_area)
            try:
                raw = self.cow.read(location * self.chunk_size, self._chunk_bytes())
            except OSError as e:
                raise ExceptionStoreError(e.errno or errno.EIO,
                                          f"Failed to read snapshot metadata: {e}") from e
            self.area = bytearray(raw)
            full = True
            for i in range(self.exceptions_per_area):
                old_chunk, new_chunk = DISK_EXCEPTION.unpack_from(self.area,
                                                                  i * DISK_EXCEPTION.size)
                if new_chunk == 0:
                    self.current_committed = i
                    full = False
                    break
                if self.next_free <= new_chunk:
                    self.next_free = new_chunk + 1
                exceptions.append((old_chunk, new_chunk))
            if not full:
                break
            self.current_area += 1
        # The last exception may have used the last data chunk of an area: never hand out
        # the next area's metadata chunk.
        self._skip_metadata()

    def read_metadata(self) -> Metadata:
        warnings: list[str] = []
        new_snapshot = self._read_header(warnings)
        self.exceptions_per_area = exceptions_per_area(self.chunk_size)
        exceptions: list[tuple[int, int]] = []
        if new_snapshot:
            self.valid = True
            self.version = SNAPSHOT_DISK_VERSION
            try:
                self._write_header()
            except OSError as e:
                raise ExceptionStoreError(e.errno or errno.EIO,
                                          f"Failed to read snapshot metadata: write_header "
                                          f"failed: {e}") from e
            self.current_area = 0
            self.area = bytearray(self._chunk_bytes())
            try:
                self._zero_disk_area(0)
            except OSError as e:
                raise ExceptionStoreError(e.errno or errno.EIO,
                                          f"Failed to read snapshot metadata: "
                                          f"zero_disk_area(0) failed: {e}") from e
            return Metadata(True, exceptions, warnings)
        if self.version != SNAPSHOT_DISK_VERSION:
            raise ExceptionStoreError(errno.EINVAL, f"unable to handle snapshot disk "
                                                    f"version {self.version}")
        if not self.valid:
            # dm-snap loads it anyway, as an invalid snapshot whose I/O all fails.
            warnings.append("Snapshot is marked invalid.")
            log.warning("%s", warnings[-1])
            return Metadata(False, exceptions, warnings)
        self._read_exceptions(exceptions)
        return Metadata(True, exceptions, warnings)

    # -- allocation and commit -------------------------------------------------------
    def _prepare(self) -> int:
        if self._cow_size() < (self.next_free + 1) * self.chunk_size:
            raise ExceptionStoreFull()
        new_chunk = self.next_free
        self.next_free += 1
        self._skip_metadata()
        return new_chunk

    def _commit(self, old_chunk: int, new_chunk: int, valid: bool) -> list[Completion]:
        if not valid:
            self.valid = False
        DISK_EXCEPTION.pack_into(self.area, self.current_committed * DISK_EXCEPTION.size,
                                 old_chunk, new_chunk)
        self.current_committed += 1
        self._callbacks.append((old_chunk, new_chunk))
        full = self.current_committed == self.exceptions_per_area
        # Other exceptions in flight will commit soon: write once for all of them, unless
        # the area is full and must go out before its successor is used.
        if self.in_flight and not full:
            return []
        self._write_area(full)
        settled = [Completion(o, n, self.valid) for o, n in self._callbacks]
        self._callbacks.clear()
        return settled

    def _write_area(self, full: bool) -> None:
        """Write the current metadata area (PREFLUSH|FUA: the chunks it points at are
        durable first); a full one gets its successor zeroed first and is then left behind,
        as persistent_commit_exception does."""
        if full:
            try:
                self._zero_disk_area(self.current_area + 1)
            except OSError:
                log.exception("zeroing metadata area %d failed", self.current_area + 1)
                self.valid = False
        if self.valid:
            try:
                self._chunk_write(self._area_location(self.current_area), self.area,
                                  preflush=True, fua=True)
            except OSError:
                log.exception("writing metadata area %d failed", self.current_area)
                self.valid = False
        if full:
            self.current_committed = 0
            self.current_area += 1
            self.area = bytearray(self._chunk_bytes())

    # -- batches: the same bytes and writes as one call per exception, without the per-call
    # bookkeeping of copies finishing out of order (nothing else is in flight meanwhile)

    def prepare_batch(self, old_chunks: list[int]) -> list[int]:
        if self._in_flight or not self.valid:
            return super().prepare_batch(old_chunks)
        out = []
        room = self._cow_size() // self.chunk_size     # chunks the COW device holds
        span = self.exceptions_per_area + 1
        nxt = self.next_free
        for _ in old_chunks:
            if room < nxt + 1:
                break
            out.append(nxt)
            nxt += 1
            if nxt % span == NUM_SNAPSHOT_HDR_CHUNKS:
                nxt += 1                                # the next area's metadata chunk
        self.next_free = nxt
        self._batch = (list(old_chunks[:len(out)]), out)
        return out

    def commit_batch(self, done: list[tuple[int, int, bool]]) -> list[Completion]:
        batch = self._batch
        if batch is None or [d[0] for d in done] != batch[0] or [d[1] for d in done] != batch[1]:
            return super().commit_batch(done)
        self._batch = None
        if not all(ok for _, _, ok in done):
            self.valid = False
        E = self.exceptions_per_area
        i = 0
        while i < len(done):
            # as many entries as the current area still takes, packed at once
            n = min(len(done) - i, E - self.current_committed)
            flat = [x for old, new, _ in done[i:i + n] for x in (old, new)]
            struct.pack_into(f"<{2 * n}Q", self.area,
                             self.current_committed * DISK_EXCEPTION.size, *flat)
            self.current_committed += n
            i += n
            full = self.current_committed == E
            if not full and i < len(done):
                continue
            self._write_area(full)
        return [Completion(old, new, self.valid) for old, new, _ in done]

    def drop_snapshot(self) -> None:
        """Rewrite the header with valid=0 (a plain write, as persistent_drop_snapshot)."""
        self.valid = False
        try:
            self._write_header()
        except OSError:
            log.warning("write header failed")

    # -- merging (snapshot-merge consumes the newest exceptions first) -----------------
    def _read_area(self, area: int) -> None:
        location = self._area_location(area)
        self.area = bytearray(self.cow.read(location * self.chunk_size, self._chunk_bytes()))
        self.current_area = area

    def _entry(self, index: int) -> tuple[int, int]:
        return DISK_EXCEPTION.unpack_from(self.area, index * DISK_EXCEPTION.size)

    def prepare_merge(self) -> tuple[int, int, int]:
        if not self.current_committed:
            # the current area is used up: step back to the previous (full) one
            if not self.current_area:
                return 0, 0, 0
            self._read_area(self.current_area - 1)
            self.current_committed = self.exceptions_per_area
        last_old, last_new = self._entry(self.current_committed - 1)
        nr = 1
        while nr < self.current_committed:
            old, new = self._entry(self.current_committed - 1 - nr)
            if old != last_old - nr or new != last_new - nr:
                break
            nr += 1
        return nr, last_old, last_new

    def commit_merge(self, nr_merged: int) -> None:
        if nr_merged > self.current_committed:
            raise ValueError(f"cannot merge {nr_merged} of {self.current_committed} exceptions")
        for i in range(nr_merged):
            DISK_EXCEPTION.pack_into(self.area, (self.current_committed - 1 - i)
                                     * DISK_EXCEPTION.size, 0, 0)
        # Durable before the merged origin chunks may be overwritten by new data.
        self._chunk_write(self._area_location(self.current_area), self.area,
                          preflush=True, fua=True)
        self.current_committed -= nr_merged
        # Only usage() still reads next_free during a merge: keep it meaningful.
        self.next_free = self._area_location(self.current_area) + self.current_committed + 1

    # -- reporting -------------------------------------------------------------------
    def usage(self) -> Usage:
        # Header + (current_area + 1) metadata chunks, see persistent_usage().
        metadata = (self.current_area + 1 + NUM_SNAPSHOT_HDR_CHUNKS) * self.chunk_size
        return Usage(self.next_free * self.chunk_size, self._cow_size(), metadata)

    def table_text(self) -> str:
        return f"{self.type_name} {self.chunk_size}"
