"""An in-memory block device with a volatile write cache, for unit tests.

It keeps two copies of the device: ``view`` (what reads return: cache over media) and
``media`` (what survives a power failure). A write lands in the view and marks its
4 KiB blocks dirty; FUA copies the written range to the media; a flush copies every
dirty block. ``power_fail()`` drops everything not yet durable, exactly as dmemud does
for a plain disk, so filesystem crash tests can run without a daemon.
"""
import errno

from .blockdev import PAGE_SIZE, SECTOR_SIZE


class MemoryBlockDevice:
    def __init__(self, nr_sectors: int, *, name: str = "mem0", dax: bool = False,
                 read_only: bool = False):
        self.name = name
        self.nr_sectors = nr_sectors
        self.dax = dax
        self.read_only = read_only
        size = nr_sectors * SECTOR_SIZE
        self.view = bytearray(size)
        self.media = bytearray(size)
        self.dirty: set[int] = set()      # 4 KiB block numbers where view may differ from media
        self.log: list[tuple] = []        # ("write", sector, bytes, fua) / ("flush",): what reached the device
        self.record = False

    def _check(self, sector: int, nbytes: int) -> None:
        if sector < 0 or nbytes < 0 or (sector * SECTOR_SIZE + nbytes) > len(self.view):
            raise OSError(errno.EIO, f"{self.name}: I/O beyond end of device "
                                     f"(sector {sector}, {nbytes} bytes)")

    async def read(self, sector: int, nbytes: int) -> bytes:
        self._check(sector, nbytes)
        off = sector * SECTOR_SIZE
        return bytes(self.view[off:off + nbytes])

    async def write(self, sector: int, data, *, fua: bool = False, preflush: bool = False) -> None:
        if self.read_only:
            raise OSError(errno.EROFS, f"{self.name}: device is read-only")
        data = bytes(data)
        self._check(sector, len(data))
        if preflush:
            await self.flush()
        off = sector * SECTOR_SIZE
        self.view[off:off + len(data)] = data
        if self.record:
            self.log.append(("write", sector, data, fua))
        if fua:
            self.media[off:off + len(data)] = data
        for blk in range(off // PAGE_SIZE, (off + len(data) + PAGE_SIZE - 1) // PAGE_SIZE):
            self.dirty.add(blk)

    async def flush(self) -> None:
        for blk in self.dirty:
            a = blk * PAGE_SIZE
            self.media[a:a + PAGE_SIZE] = self.view[a:a + PAGE_SIZE]
        self.dirty.clear()
        if self.record:
            self.log.append(("flush",))

    async def discard(self, sector: int, nr_sectors: int) -> None:
        await self.write(sector, bytes(nr_sectors * SECTOR_SIZE))

    def power_fail(self) -> None:
        """Lose every write that no flush or FUA made durable."""
        for blk in self.dirty:
            a = blk * PAGE_SIZE
            self.view[a:a + PAGE_SIZE] = self.media[a:a + PAGE_SIZE]
        self.dirty.clear()
