"""Free-space and inode-number allocation over the on-device bitmaps.

The bitmaps are kept whole in memory (one bit per 4 KiB block is 32 KiB per GiB) and the
blocks of them that changed are reported to the running transaction.

Blocks freed by a transaction are not handed out again until the journal no longer holds
any transaction older than the free (the filesystem calls ``release_pending`` after it has
checkpointed and reset the journal). Otherwise a replay could write an old metadata image
over a block that meanwhile became file data, or a crash could leave a file pointing at
another file's new data: the same rule ext4/jbd2 follow.
"""
import errno

from . import format as fmt
from .errors import FsError

BITS_PER_BLOCK = fmt.BITMAP_BITS      # bits in one on-device bitmap block
# Room for a file to grow: a run of free blocks this long, byte-aligned in the bitmap.
ROOM_BYTES = b"\0\0"
ROOM_BLOCKS = 8 * len(ROOM_BYTES)


class Bitmap:
    """A bitmap of `nbits` bits stored in consecutive device blocks, 1 = in use."""

    def __init__(self, data: bytearray, nbits: int, first_free: int = 0):
        self.data = data
        self.nbits = nbits
        self.dirty_blocks: set[int] = set()      # indices of bitmap blocks changed
        self.hint = first_free

    def test(self, bit: int) -> bool:
        return bool(self.data[bit >> 3] & (1 << (bit & 7)))

    def set_run(self, bit: int, n: int, value: bool) -> None:
        if n <= 0:
            return
        data = self.data
        end = bit + n
        b = bit
        while b < end and (b & 7):                  # leading partial byte
            if value:
                data[b >> 3] |= 1 << (b & 7)
            else:
                data[b >> 3] &= ~(1 << (b & 7)) & 0xFF
            b += 1
        full = (end - b) >> 3                       # whole bytes in one slice assignment
        if full:
            data[b >> 3:(b >> 3) + full] = (b"\xff" if value else b"\0") * full
            b += full * 8
        while b < end:                              # trailing partial byte
            if value:
                data[b >> 3] |= 1 << (b & 7)
            else:
                data[b >> 3] &= ~(1 << (b & 7)) & 0xFF
            b += 1
        if self.dirty_blocks is None:
            return
        for blk in range(bit // BITS_PER_BLOCK, (bit + n - 1) // BITS_PER_BLOCK + 1):
            self.dirty_blocks.add(blk)

    def count_free(self, start: int = 0) -> int:
        full_bytes = self.nbits >> 3
        used = int.from_bytes(self.data[:full_bytes], "little").bit_count()
        for b in range(full_bytes * 8, self.nbits):
            used += self.test(b)
        return self.nbits - used

    def find_free(self, start: int, limit: int) -> int:
        """First clear bit in [start, limit) or -1, skipping full bytes quickly."""
        data = self.data
        b = start
        while b < limit and (b & 7):
            if not data[b >> 3] & (1 << (b & 7)):
                return b
            b += 1
        byte = b >> 3
        end_byte = (limit + 7) >> 3
        while byte < end_byte:
            # find() on a bytes slice scans in C; 0xff means 8 used blocks
            if data[byte] == 0xFF:
                nxt = _first_not_ff(data, byte, end_byte)
                if nxt < 0:
                    return -1
                byte = nxt
            v = data[byte]
            for k in range(8):
                if not v & (1 << k):
                    bit = byte * 8 + k
                    return bit if bit < limit else -1
            byte += 1
        return -1

    def run_length(self, bit: int, limit: int) -> int:
        """Number of clear bits from bit on (at most limit - bit)."""
        data = self.data
        b = bit
        while b < limit and (b & 7):
            if data[b >> 3] & (1 << (b & 7)):
                return b - bit
            b += 1
        if b < limit:
            byte = b >> 3
            end = min(len(data), (limit + 7) >> 3)
            chunk = data[byte:end]
            zeros = len(chunk) - len(chunk.lstrip(b"\0"))
            b += zeros * 8
            while b < limit and not data[b >> 3] & (1 << (b & 7)):
                b += 1
        return min(b, limit) - bit


def _first_not_ff(data: bytearray, start: int, end: int) -> int:
    step = 4096
    pos = start
    while pos < end:
        chunk = data[pos:min(end, pos + step)]
        stripped = chunk.lstrip(b"\xff")
        if stripped:
            return pos + len(chunk) - len(stripped)
        pos += step
    return -1


class BlockAllocator:
    """Hands out runs of free device blocks in the data area.

    ``bitmap`` is what goes to the device; ``busy`` is what the allocator searches: in use
    on the device or freed but not yet reusable (see the module docstring)."""

    def __init__(self, bitmap: Bitmap, data_start: int, total_blocks: int, free: int):
        self.bitmap = bitmap
        self.busy = Bitmap(bytearray(bitmap.data), bitmap.nbits)
        self.busy.dirty_blocks = None
        self.data_start = data_start
        self.total = total_blocks
        self.free = free                    # free on disk (what the superblock records)
        self.pending_count = 0              # freed but not reusable yet
        self.cursor = data_start
        self.reuse_epoch = 0                # bumped whenever freed blocks become reusable
        # Reserved for writes whose data is being written without the filesystem lock:
        # taken in ``busy`` (nobody else gets them) but not in ``bitmap`` until claimed,
        # so no commit can make them reachable before their data is on the device.
        self.reserved = 0
        self.reserved_runs: dict[int, int] = {}

    @property
    def available(self) -> int:
        return self.free - self.pending_count - self.reserved

    def reserve(self, want: int, goal: int = 0) -> list[tuple[int, int]]:
        """Like alloc, but the runs stay out of the on-device bitmap until ``claim``."""
        runs = self.alloc(want, goal, _reserve=True)
        for b, n in runs:
            self.reserved_runs[b] = n
        self.reserved += want
        return runs

    def claim(self, b: int, n: int) -> None:
        """A reserved run becomes allocated (its data is written)."""
        del self.reserved_runs[b]
        self.reserved -= n
        self.bitmap.set_run(b, n, True)
        self.free -= n

    def unreserve(self, b: int, n: int) -> None:
        del self.reserved_runs[b]
        self.reserved -= n
        self.busy.set_run(b, n, False)

    def hold(self, n: int) -> None:
        """Keep n blocks available for a write's extent chain until it claims its runs."""
        self.reserved += n

    def unhold(self, n: int) -> None:
        self.reserved -= n

    def alloc(self, want: int, goal: int = 0, _reserve: bool = False) -> list[tuple[int, int]]:
        """Allocate `want` blocks as few runs as possible, near `goal`; all or nothing."""
        if want > self.available:
            raise FsError(errno.ENOSPC, "no space left on device")
        runs = []
        got = 0
        busy = self.busy
        has_goal = self.data_start <= goal < self.total
        if has_goal and not busy.test(goal):
            pos = goal                      # the file goes on contiguously
        else:
            # Somewhere with room for the file to grow: the first free block after the goal
            # (or the cursor) would often be a one-block hole between another file's blocks,
            # and every later append there would start a new extent (what mballoc's
            # preallocation avoids in ext4).
            pos = goal if has_goal else self.cursor
            roomy = self._room(pos)
            if roomy >= 0:
                pos = roomy
        wrapped = False
        while got < want:
            b = busy.find_free(pos, self.total)
            if b < 0:
                if wrapped:
                    break
                wrapped = True
                pos = self.data_start
                continue
            # the scan stops at the blocks still wanted: never to the end of the device
            n = busy.run_length(b, min(self.total, b + want - got))
            runs.append((b, n))
            busy.set_run(b, n, True)
            got += n
            pos = b + n
        if got < want:                      # cannot happen while counts are right
            for b, n in runs:
                busy.set_run(b, n, False)
            raise FsError(errno.ENOSPC, "no space left on device (bitmap full)")
        if not _reserve:
            for b, n in runs:
                self.bitmap.set_run(b, n, True)
            self.free -= want
        self.cursor = pos
        return runs

    def _room(self, start: int) -> int:
        """The first block at or after start (wrapping once) of a run of at least ROOM_BLOCKS
        free ones, found as ROOM_BYTES zero bytes of the bitmap (a scan in C); -1: none."""
        if self.busy.run_length(start, min(self.total, start + ROOM_BLOCKS)) == ROOM_BLOCKS:
            return start
        data, lo, hi = self.busy.data, self.data_start >> 3, self.total >> 3
        at = max(lo, start >> 3)
        i = data.find(ROOM_BYTES, at, hi)
        if i < 0:
            i = data.find(ROOM_BYTES, lo, min(hi, at + len(ROOM_BYTES)))
        return -1 if i < 0 else max(self.data_start, i << 3)

    def free_run(self, b: int, n: int) -> None:
        if n <= 0:
            return
        self.bitmap.set_run(b, n, False)
        self.free += n
        self.pending_count += n

    def release_pending(self) -> None:
        if self.pending_count:
            self.busy.data[:] = self.bitmap.data
            for b, n in self.reserved_runs.items():
                self.busy.set_run(b, n, True)
            self.reuse_epoch += 1
        self.pending_count = 0


class InodeAllocator:
    def __init__(self, bitmap: Bitmap, total: int, free: int):
        self.bitmap = bitmap
        self.total = total
        self.free = free
        self.cursor = 1

    def alloc(self) -> int:
        if self.free <= 0:
            raise FsError(errno.ENOSPC, "no free inodes")
        b = self.bitmap.find_free(self.cursor, self.total)
        if b < 0:
            b = self.bitmap.find_free(1, self.total)
        if b < 0:
            raise FsError(errno.ENOSPC, "no free inodes (bitmap full)")
        self.bitmap.set_run(b, 1, True)
        self.free -= 1
        self.cursor = b + 1
        return b

    def release(self, ino: int) -> None:
        self.bitmap.set_run(ino, 1, False)
        self.free += 1
