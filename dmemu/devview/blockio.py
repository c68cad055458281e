"""Byte-granular I/O on one open dmemu device, with the semantics of a Linux block device file.

The client API speaks in whole sectors from a sector boundary; a device file is read and
written at any byte offset. Reads simply read the covering sectors; a write that does not
cover whole sectors reads the partial end sectors first (read-modify-write, serialised per
device so two such writes cannot lose each other's bytes). As blkdev_read_iter and
blkdev_write_iter do: a read at or past the end returns nothing, a write at or past the end
fails with ENOSPC and one crossing it is cut short there. With O_DIRECT, offsets and lengths
must be multiples of the 512-byte logical block (EINVAL otherwise, as for a real device);
with O_SYNC or O_DSYNC every write is FUA, durable when it returns.
"""
import errno
import logging
import os

import trio

from ..blockdev import SECTOR_SIZE
from ..errors import DmemuError

log = logging.getLogger(__name__)


class BlockFile:
    """One open file of a device: its own dmemud handle and its open flags."""

    def __init__(self, dev, flags: int, rmw_lock: trio.Lock):
        self.dev = dev
        self.direct = bool(flags & os.O_DIRECT)
        self.sync = bool(flags & os.O_DSYNC)       # O_SYNC includes the O_DSYNC bit
        self._rmw_lock = rmw_lock

    @property
    def size(self) -> int:
        return self.dev.nr_sectors * SECTOR_SIZE

    def _check_direct(self, off: int, n: int) -> None:
        if self.direct and (off % SECTOR_SIZE or n % SECTOR_SIZE):
            raise OSError(errno.EINVAL, f"{self.dev.name}: O_DIRECT needs {SECTOR_SIZE}-byte "
                                        f"aligned offsets and sizes (offset {off}, {n} bytes)")

    async def read(self, off: int, size: int) -> bytes:
        self._check_direct(off, size)
        n = max(0, min(size, self.size - off))
        if n == 0:
            return b""
        head = off % SECTOR_SIZE
        data = await self.dev.read(off // SECTOR_SIZE, head + n)
        return data[head:] if head else data

    async def write(self, off: int, buf) -> int:
        self._check_direct(off, len(buf))
        if self.dev.read_only:
            raise OSError(errno.EBADF, f"{self.dev.name}: not open for writing")
        if off >= self.size:
            raise OSError(errno.ENOSPC, f"{self.dev.name}: write at {off} is past the end "
                                        f"({self.size} bytes)")
        n = min(len(buf), self.size - off)
        data = memoryview(buf)[:n]
        head, tail = off % SECTOR_SIZE, (off + n) % SECTOR_SIZE
        if not head and not tail:
            await self.dev.write(off // SECTOR_SIZE, data, fua=self.sync)
            return n
        async with self._rmw_lock:
            first = off // SECTOR_SIZE
            last = (off + n - 1) // SECTOR_SIZE
            block = bytearray((last - first + 1) * SECTOR_SIZE)
            if head:
                block[:SECTOR_SIZE] = await self.dev.read(first, SECTOR_SIZE)
            if tail and (last != first or not head):
                block[-SECTOR_SIZE:] = await self.dev.read(last, SECTOR_SIZE)
            block[head:head + n] = data
            await self.dev.write(first, block, fua=self.sync)
        return n

    async def fsync(self) -> None:
        await self.dev.flush()

    async def close(self) -> None:
        await self.dev.close()


def errno_of(e: BaseException) -> int:
    """The errno a file operation should fail with for an error of the layers below."""
    if isinstance(e, DmemuError):
        return errno.ENXIO if e.errno == errno.ENODEV else e.errno
    if isinstance(e, OSError) and e.errno:
        return e.errno
    return errno.EIO
