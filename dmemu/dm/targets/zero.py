"""zero: reads return zeroes, writes are dropped (dm-zero)."""
from ..region import Remap
from .base import Target


class ZeroTarget(Target):
    name = "zero"
    version = (1, 2, 0)
    # dm-zero has no direct_access: a table with a zero target is not DAX-capable, but a
    # table made only of zero/error targets inherits DAX from the live table, as in Linux.

    def remap_sync(self, offset, write):
        return Remap(0, self.len, "zero")
