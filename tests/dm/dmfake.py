"""A synchronous in-memory block device, the shape dmemud's core hands to dmemu.dm.

Like a disk with a volatile write cache: ``view`` is what reads return, ``media`` what
survives ``power_fail()``. A FUA write is durable at once; a preflush or flush makes every
earlier write durable. Every call is recorded in ``log`` so tests can check the flags the
stores use, and ``fail_writes``/``fail_reads`` inject EIO.
"""
import errno

SECTOR_SIZE = 512


class FakeBlockDevice:
    def __init__(self, nr_sectors: int, *, name: str = "pmem0", devno: str = "259:0",
                 logical_block_size: int = 512, dax_capable: bool = True):
        self.name = name
        self.devno = devno
        self.nr_sectors = nr_sectors
        self.logical_block_size = logical_block_size
        self.dax_capable = dax_capable
        self.view = bytearray(nr_sectors * SECTOR_SIZE)
        self.media = bytearray(nr_sectors * SECTOR_SIZE)
        self.dirty: set[int] = set()          # sectors where view may differ from media
        self.log: list[tuple] = []            # ("read"|"write"|"flush", sector, nbytes, flags)
        self.fail_writes = False
        self.fail_reads = False

    def _check(self, sector: int, nbytes: int) -> None:
        if sector < 0 or nbytes < 0 or sector * SECTOR_SIZE + nbytes > len(self.view):
            raise OSError(errno.EIO, f"{self.name}: I/O beyond end of device")

    def read(self, sector: int, nbytes: int) -> bytes:
        self.log.append(("read", sector, nbytes, frozenset()))
        self._check(sector, nbytes)
        if self.fail_reads:
            raise OSError(errno.EIO, f"{self.name}: injected read error")
        off = sector * SECTOR_SIZE
        return bytes(self.view[off:off + nbytes])

    def write(self, sector: int, data, *, fua: bool = False, preflush: bool = False) -> None:
        flags = frozenset(f for f, on in (("fua", fua), ("preflush", preflush)) if on)
        data = bytes(data)
        self.log.append(("write", sector, len(data), flags))
        self._check(sector, len(data))
        if self.fail_writes:
            raise OSError(errno.EIO, f"{self.name}: injected write error")
        if preflush:
            self._make_durable()
        off = sector * SECTOR_SIZE
        self.view[off:off + len(data)] = data
        if fua:
            self.media[off:off + len(data)] = data
        else:
            self.dirty.update(range(sector, sector + len(data) // SECTOR_SIZE))

    def _make_durable(self) -> None:
        for s in self.dirty:
            a = s * SECTOR_SIZE
            self.media[a:a + SECTOR_SIZE] = self.view[a:a + SECTOR_SIZE]
        self.dirty.clear()

    def flush(self) -> None:
        self.log.append(("flush", 0, 0, frozenset()))
        self._make_durable()

    def power_fail(self) -> None:
        """Lose every write that no flush, preflush or FUA made durable."""
        for s in self.dirty:
            a = s * SECTOR_SIZE
            self.view[a:a + SECTOR_SIZE] = self.media[a:a + SECTOR_SIZE]
        self.dirty.clear()

    def writes(self) -> list[tuple]:
        return [e for e in self.log if e[0] == "write"]

