"""snapshot-origin: the device snapshots are taken of; writes copy chunks out first.

Reads pass straight through. A write region is handed out only once every active, valid
snapshot of the device holds a copy of the chunks in it (dmemu.dm.cow). With the module
parameter ``snapshot_dax`` on (the default), the target implements direct_access on those
terms, so an origin over pmem stays DAX-capable: the 2018 proposal that Linux never built.
"""
import errno

from ..errors import DMError
from ..region import Remap
from ..status import origin_table_text
from ..target_args import check_device_area
from .base import Target


class OriginTarget(Target):
    name = "snapshot-origin"
    version = (1, 9, 0)

    def __init__(self, dm, line, args):
        super().__init__(dm, line, args)
        self.dev = dm.get_device(args.dev, line)
        check_device_area(self.name, self.dev, 0, self.len)
        self.direct_access = dm.params["snapshot_dax"]

    def devices(self):
        return [self.dev]

    def table_text(self):
        return origin_table_text(self.dev.devno)

    def remap_sync(self, offset, write):
        if write:
            # A write dmemud carries out itself (a bio-based stack below) may only reach
            # chunks every snapshot already holds: the caller resolves the range for writing
            # first (remap), which makes the copies.
            held = self.dm.origins.held_region(self.dev, offset, self.len)
            if held is None:
                raise DMError(errno.EIO, "snapshot-origin: write to a chunk not yet copied")
            lo, hi = held
            return Remap(lo, hi - lo, "remap", self.dev, lo)
        return Remap(0, self.len, "remap", self.dev, 0)

    async def remap(self, offset, write):
        return await self.remap_range(offset, 1, write)

    async def remap_range(self, offset, nr, write):
        if not write:
            return Remap(0, self.len, "remap", self.dev, 0)
        lo, hi = await self.dm.origins.origin_write(self.dev, offset, self.len, nr)
        return Remap(lo, hi - lo, "remap", self.dev, lo)
