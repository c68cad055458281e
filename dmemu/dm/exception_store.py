"""The one interface every snapshot exception store offers (dm-exception-store.h).

An *exception* says that origin chunk ``old_chunk`` has been copied to COW chunk
``new_chunk``; a *chunk* is ``chunk_size`` sectors, a power of two. The snapshot target
asks the store for room before it copies a chunk (``prepare_exception``), tells it when
the copy finished (``commit_exception``) and only then treats the exception as complete.

Kernel behaviour kept here on purpose:

* Completion order. dm-snap hands finished copies to the store strictly in the order the
  chunks were allocated (``exception_start_sequence`` / ``out_of_order_tree``), so a
  crash can only leak chunks that were never committed. ``commit_exception`` accepts
  copies finishing in any order and holds back the later ones itself; it returns the
  exceptions whose commit is now settled, each with its success flag (the kernel's
  callbacks).
* Batching. The persistent store writes its metadata area only when no other exception
  is in flight or the area is full, so several commits may settle at once.

Units: chunk numbers and sectors, as in the kernel.
"""
import abc
import errno
import logging
from collections import OrderedDict
from typing import NamedTuple

from .errors import DMError, ExceptionStoreError, ExceptionStoreFull

log = logging.getLogger(__name__)

SECTOR_SIZE = 512
SECTOR_SHIFT = 9
# dm-exception-store.c: DM_CHUNK_SIZE_DEFAULT_SECTORS, used when a P store is loaded with
# chunk size 0 and there is no header yet to take it from (16 KiB).
DM_CHUNK_SIZE_DEFAULT_SECTORS = 32
# dm_exception_store_set_chunk_size(): chunk_size > INT_MAX >> SECTOR_SHIFT is refused.
MAX_CHUNK_SIZE = (2**31 - 1) >> SECTOR_SHIFT


class Usage(NamedTuple):
    """What ``dmsetup status`` prints for a snapshot: ``allocated/total metadata``."""
    sectors_allocated: int
    total_sectors: int
    metadata_sectors: int


class Completion(NamedTuple):
    """One settled commit: the kernel calls the pending exception's callback with this."""
    old_chunk: int
    new_chunk: int
    success: bool


class Metadata(NamedTuple):
    """The result of ``read_metadata``.

    valid: False when the store was invalidated earlier (header valid=0); the snapshot
           then loads as Invalid and every I/O to it fails.
    exceptions: (old_chunk, new_chunk) pairs in on-disk order.
    warnings: kernel log lines to repeat (e.g. the chunk-size override).
    """
    valid: bool
    exceptions: list
    warnings: list


def _is_power_of_2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def validate_chunk_size(chunk_size: int, *, cow_block_size: int = SECTOR_SIZE,
                        origin_block_size: int = SECTOR_SIZE) -> None:
    """Check a non-zero chunk size the way dm_exception_store_set_chunk_size() does.

    Block sizes are the devices' logical block sizes in bytes. Raises DMError(EINVAL)
    with the kernel's ``ti->error`` text.
    """
    if not _is_power_of_2(chunk_size):
        raise DMError(errno.EINVAL, "Chunk size is not a power of 2")
    if chunk_size % (cow_block_size >> SECTOR_SHIFT) or \
            chunk_size % (origin_block_size >> SECTOR_SHIFT):
        raise DMError(errno.EINVAL, "Chunk size is not a multiple of device blocksize")
    if chunk_size > MAX_CHUNK_SIZE:
        raise DMError(errno.EINVAL, "Chunk size is too high")


class ExceptionStore(abc.ABC):
    """A snapshot's record of which origin chunks live where on the COW device.

    Construct with the COW device and the table's chunk size (0 allowed only for a
    persistent store: take it from the header), then call ``read_metadata()`` once before
    anything else; after it ``chunk_size`` is the size in effect.
    """

    #: the store-type letters `dmsetup table` shows ("P", "PO", "N")
    type_name: str = "?"

    def __init__(self, cow, chunk_size: int, *, origin_block_size: int = SECTOR_SIZE):
        self.cow = cow
        self.origin_block_size = origin_block_size
        self.chunk_size = chunk_size
        self.valid = True
        # Allocated but not settled, in allocation order: new_chunk -> (old_chunk, copy_ok)
        # once the copy finished, or None while it is still running.
        self._in_flight: "OrderedDict[int, tuple | None]" = OrderedDict()
        self._old_of: dict[int, int] = {}

    # chunk arithmetic (dm-snap.h), valid once chunk_size is known
    @property
    def chunk_shift(self) -> int:
        return self.chunk_size.bit_length() - 1

    @property
    def chunk_mask(self) -> int:
        return self.chunk_size - 1

    def sector_to_chunk(self, sector: int) -> int:
        return sector >> self.chunk_shift

    def chunk_to_sector(self, chunk: int) -> int:
        return chunk << self.chunk_shift

    def _cow_size(self) -> int:
        return self.cow.nr_sectors

    @abc.abstractmethod
    def read_metadata(self) -> Metadata:
        """Load (or create) the store; raise ExceptionStoreError when it cannot be used."""

    def prepare_exception(self, old_chunk: int) -> int:
        """Allocate a COW chunk for a copy of origin chunk ``old_chunk``; return its number.

        Raises ExceptionStoreFull (ENOSPC) when the COW device has no room: the snapshot
        layer then invalidates the snapshot (or reports Overflow for PO).
        """
        if not self.valid:
            raise ExceptionStoreError(errno.EIO, "snapshot is invalid")
        new_chunk = self._prepare()
        self._in_flight[new_chunk] = None
        self._old_of[new_chunk] = old_chunk
        return new_chunk

    def commit_exception(self, old_chunk: int, new_chunk: int, *,
                         valid: bool = True) -> list[Completion]:
        """The copy of ``old_chunk`` into ``new_chunk`` finished (``valid``: it succeeded).

        Returns the commits settled by this call, in allocation order: possibly none (an
        earlier allocation is still copying, or the store batches), possibly several.
        A Completion with success False means the snapshot must be invalidated.
        """
        if self._in_flight.get(new_chunk, False) is not None or \
                self._old_of.get(new_chunk) != old_chunk:
            raise ValueError(f"chunk {new_chunk} was not prepared for origin chunk "
                             f"{old_chunk}, or is already committed")
        self._in_flight[new_chunk] = (old_chunk, valid)
        settled: list[Completion] = []
        while self._in_flight:
            head, done = next(iter(self._in_flight.items()))
            if done is None:
                break
            del self._in_flight[head]
            del self._old_of[head]
            settled.extend(self._commit(done[0], head, done[1]))
        return settled

    # A batch: the snapshot target allocates chunks for several origin chunks, copies them
    # all, then commits them all, with nothing else in between (dm-snap's kcopyd jobs of
    # one bio finishing together). Stores may do it faster than one call per exception;
    # the outcome must be the same as those calls in order.
    def prepare_batch(self, old_chunks: list[int]) -> list[int]:
        """prepare_exception for each of ``old_chunks`` in order, stopping at the first
        that does not fit: returns the COW chunks allocated (fewer when the store filled)."""
        out = []
        for old in old_chunks:
            try:
                out.append(self.prepare_exception(old))
            except ExceptionStoreFull:
                break
        return out

    def commit_batch(self, done: list[tuple[int, int, bool]]) -> list[Completion]:
        """commit_exception for each (old_chunk, new_chunk, copy_ok), in allocation order."""
        settled = []
        for old, new, ok in done:
            settled.extend(self.commit_exception(old, new, valid=ok))
        return settled

    @property
    def in_flight(self) -> int:
        """Exceptions prepared and not yet settled (the kernel's pending_count, roughly)."""
        return len(self._in_flight)

    @abc.abstractmethod
    def _prepare(self) -> int:
        """Hand out the next free COW chunk or raise ExceptionStoreFull."""

    @abc.abstractmethod
    def _commit(self, old_chunk: int, new_chunk: int, valid: bool) -> list[Completion]:
        """Record one exception, in allocation order; return the commits it settles."""

    def drop_snapshot(self) -> None:
        """Invalidate the store for good (the snapshot stays Invalid across reloads)."""
        self.valid = False

    # snapshot-merge: only stores that keep their exceptions in order can be merged back
    # into the origin, newest first.
    def prepare_merge(self) -> tuple[int, int, int]:
        """Return ``(nr_consecutive, last_old_chunk, last_new_chunk)`` for the newest run
        of exceptions with consecutive old and new chunks; ``nr_consecutive`` 0 = done."""
        raise DMError(errno.EINVAL, "Snapshot exception store does not support snapshot-merge.")

    def commit_merge(self, nr_merged: int) -> None:
        """Forget the newest ``nr_merged`` exceptions: their chunks are back on the origin."""
        raise DMError(errno.EINVAL, "Snapshot exception store does not support snapshot-merge.")

    @abc.abstractmethod
    def usage(self) -> Usage:
        """Linux's numbers for the status line."""

    @abc.abstractmethod
    def table_text(self) -> str:
        """The store part of `dmsetup table`: ``P 8``, ``PO 8`` or ``N 8``."""


def create_exception_store(store_type: str, chunk_size: int, cow, *,
                           origin_block_size: int = SECTOR_SIZE) -> ExceptionStore:
    """Build the store a snapshot table asks for: ``P``, ``PO`` or ``N`` (as parsed by
    dmemu.dm.target_args.parse_snapshot_args)."""
    from .persistent import PersistentStore
    from .transient import TransientStore
    if store_type in ("P", "PO"):
        return PersistentStore(cow, chunk_size, overflow=store_type == "PO",
                               origin_block_size=origin_block_size)
    if store_type == "N":
        return TransientStore(cow, chunk_size, origin_block_size=origin_block_size)
    raise DMError(errno.EINVAL, "Exception store type is not P or N")
