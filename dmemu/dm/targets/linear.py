"""linear: sectors [0, len) of the target are sectors [offset, offset+len) of a device."""
from ..region import Remap
from ..status import linear_table_text
from ..target_args import check_device_area
from .base import Target


class LinearTarget(Target):
    name = "linear"
    version = (1, 5, 0)
    direct_access = True

    def __init__(self, dm, line, args):
        super().__init__(dm, line, args)
        self.dev = dm.get_device(args.dev, line)
        self.offset = args.offset
        check_device_area(self.name, self.dev, self.offset, self.len)

    def devices(self):
        return [self.dev]

    def table_text(self):
        return linear_table_text(self.dev.devno, self.offset)

    def remap_sync(self, offset, write):
        return Remap(0, self.len, "remap", self.dev, self.offset)
