"""Reading an LV through its extents when no device-mapper device is up, and a COW's
exception list in the kernel's persistent format.

lvconvert --merge reads the COW header to refuse an invalidated snapshot while it is
inactive; lvreduce and lvcreate -W read an LV's first bytes for a filesystem signature.
The merge itself is the kernel's (the snapshot-merge target, commands/merge.py).

The COW is read in the kernel's persistent format (dmemu.dm.persistent): header chunk,
then metadata areas of E = chunk_bytes/16 (old_chunk, new_chunk) entries, each followed
by the E data chunks it describes.
"""
from ..dm.persistent import (DISK_EXCEPTION, DISK_HEADER, SNAP_MAGIC, area_location,
                             exceptions_per_area)
from .errors import LvmError
from .vg import LV, VG

SECTOR = 512


class LvIO:
    """Reads and writes of an inactive LV, through its segments onto its PVs."""

    def __init__(self, k, vg: VG, lv: LV):
        self.k, self.vg, self.lv = k, vg, lv
        self.devs: dict[str, object] = {}

    async def _dev(self, pvkey: str):
        pv = self.vg.pvs[pvkey]
        if pvkey not in self.devs:
            self.devs[pvkey] = await self.k.open_device(pv.device)
        return self.devs[pvkey], pv

    def _pieces(self, sector: int, nr: int):
        es = self.vg.extent_size
        for s in self.lv.segments:
            start, end = s.start_extent * es, (s.start_extent + s.extent_count) * es
            a, b = max(sector, start), min(sector + nr, end)
            if a < b:
                pvkey, pe = s.stripes[0]
                yield pvkey, pe * es + (a - start), a - sector, b - a

    async def read(self, sector: int, nr: int) -> bytes:
        buf = bytearray(nr * SECTOR)
        for pvkey, off, at, n in self._pieces(sector, nr):
            dev, pv = await self._dev(pvkey)
            buf[at * SECTOR:(at + n) * SECTOR] = await dev.read(pv.pe_start + off, n * SECTOR)
        return bytes(buf)

    async def write(self, sector: int, data: bytes) -> None:
        for pvkey, off, at, n in self._pieces(sector, len(data) // SECTOR):
            dev, pv = await self._dev(pvkey)
            await dev.write(pv.pe_start + off, data[at * SECTOR:(at + n) * SECTOR])

    async def flush_and_close(self) -> None:
        for dev in self.devs.values():
            await dev.flush()
            await dev.close()
        self.devs = {}


async def read_cow(cow: LvIO, table_chunk: int) -> tuple[bool, int, list[tuple[int, int]]]:
    """(valid, chunk size in sectors, [(old_chunk, new_chunk)]) of a persistent COW."""
    magic, valid, version, chunk = DISK_HEADER.unpack((await cow.read(0, 1))[:DISK_HEADER.size])
    if magic == 0:
        return True, table_chunk, []          # never activated: nothing was copied
    if magic != SNAP_MAGIC or version != 1:
        raise LvmError("Snapshot metadata on the COW is not a persistent exception store.")
    e = exceptions_per_area(chunk)
    out, area = [], 0
    while True:
        raw = await cow.read(area_location(chunk, area) * chunk, chunk)
        n = 0
        while n < e:
            old, new = DISK_EXCEPTION.unpack_from(raw, n * DISK_EXCEPTION.size)
            if new == 0:
                break
            out.append((old, new))
            n += 1
        if n < e:
            return bool(valid), chunk, out
        area += 1
