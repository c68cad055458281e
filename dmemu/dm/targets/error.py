"""error: every I/O fails (dm-error), what `dmsetup remove --force` leaves behind."""
from ..region import Remap
from ..status import error_table_text
from .base import Target


class ErrorTarget(Target):
    name = "error"
    version = (1, 7, 0)

    def __init__(self, dm, line, args):
        super().__init__(dm, line, args)
        self.dev = dm.get_device(args.dev, line) if args.dev else None
        self.offset = args.offset

    def devices(self):
        return [self.dev] if self.dev else []

    def table_text(self):
        return error_table_text(self.dev.devno if self.dev else None, self.offset)

    def remap_sync(self, offset, write):
        return Remap(0, self.len, "error")
