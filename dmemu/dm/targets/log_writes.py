"""log-writes: record every write to a device, in order, on a log device (dm-log-writes).

Table: ``log-writes <dev> <log dev>``. Reads pass through to ``dev``. Writes, flushes and
discards are carried out on ``dev`` *and* appended to the log with their flags, so that a
replay can rebuild the device as it was at any flush or FUA point (or at a mark sent with
``dmsetup message DEV 0 mark NAME``): the crash-consistency tooling replays the log to every
such point. Writes come to dmemud as bios (a ``bio`` segment: no client maps them), since
each must be logged in completion order.

The log is Linux's format (dm-log-writes.c), little-endian, in units of the log device's
sector (512 bytes here):

- sector 0, super: ``u64 magic 0x6a736677736872, u64 version 1, u64 nr_entries,
  u32 sectorsize``; rewritten after every entry so the count on disk is always complete;
- from sector 1, entries: a header sector ``u64 sector, u64 nr_sectors, u64 flags,
  u64 data_len`` then ``data_len`` bytes of data padded to whole sectors. Flags: FLUSH 1,
  FUA 2, DISCARD 4, MARK 8 (data = the mark's name), METADATA 16.

Not DAX-capable: a store through a mapping would bypass the log (Linux logs DAX writes made
with write(), not mmap stores), so a filesystem on it does its I/O with bios.
"""
import errno
import struct

from ..errors import DMError
from ..region import Remap
from ..target_args import check_device_area
from .base import Target

WRITE_LOG_MAGIC = 0x6A736677736872
WRITE_LOG_VERSION = 1
SUPER = struct.Struct("<QQQI")
ENTRY = struct.Struct("<QQQQ")
LOG_FLUSH_FLAG, LOG_FUA_FLAG, LOG_DISCARD_FLAG, LOG_MARK_FLAG, LOG_METADATA_FLAG = 1, 2, 4, 8, 16
SECTOR = 512
MAX_MARK = 63    # dm-log-writes: marks are at most MAX_MARK_SIZE-1 bytes


def reach(dm, dev, nr: int) -> list:
    """The base ranges [(base, start, end)] that sectors [0, nr) of ``dev`` can write to.

    Read-side resolution gives where each sector lives; a device whose writes go elsewhere
    as well (a snapshot's COW store) counts every base it stands on whole, so the answer
    never misses a range the device could write.
    """
    if not hasattr(dev, "live"):
        return [(dev, 0, nr)]
    out, pos = [], 0
    while pos < nr:
        try:
            r = dev.region_sync(pos, False)
        except Exception:       # no table, a bio-based target: fall back to whole devices
            break
        for sg in r.segs:
            lo, hi = max(sg.start, 0), min(sg.end, nr)
            if sg.base is not None and lo < hi:
                out.append((sg.base, sg.base_sector + lo - sg.start, sg.base_sector + hi - sg.start))
        pos = r.end
    reached = {id(b) for b, _, _ in out}
    out += [(b, 0, b.nr_sectors) for b in dm.base_devices(dev) if id(b) not in reached]
    return out


def overlap(dm, a, a_nr: int, b, b_nr: int) -> str:
    """Where the first nr sectors of devices ``a`` and ``b`` share media, or ''."""
    for da, sa, ea in reach(dm, a, a_nr):
        for db, sb, eb in reach(dm, b, b_nr):
            if da is db and sa < eb and sb < ea:
                return f"both reach {da.name} sectors {max(sa, sb)}-{min(ea, eb) - 1}"
    return ""


class LogWritesTarget(Target):
    name = "log-writes"
    version = (1, 1, 0)

    def __init__(self, dm, line, args):
        super().__init__(dm, line, args)
        self.dev = dm.get_device(args.dev, line)
        self.log = dm.get_device(args.log, line)
        check_device_area(self.name, self.dev, 0, self.len)
        if self.log.nr_sectors < 2:
            raise DMError(errno.EINVAL, "log-writes: log device is too small")
        clash = overlap(dm, self.dev, self.len, self.log, self.log.nr_sectors)
        if clash:
            raise DMError(errno.EINVAL, f"log-writes: the log device {args.log} and the data device "
                                        f"{args.dev} overlap ({clash}): the log would overwrite "
                                        f"the data it records; use separate devices")
        self.entries = 0
        self.next_sector = 1
        self.full = False
        self._write_super()

    def devices(self):
        return [self.dev, self.log]

    def table_text(self):
        return f"{self.dev.devno} {self.log.devno}"

    def status_text(self):
        return f"{self.entries} {self.next_sector - 1}"

    # -- the log ---------------------------------------------------------------------------

    def _write_super(self) -> None:
        sb = bytearray(SECTOR)
        SUPER.pack_into(sb, 0, WRITE_LOG_MAGIC, WRITE_LOG_VERSION, self.entries, SECTOR)
        self.log.write(0, sb, fua=True)

    def _append(self, sector: int, nr_sectors: int, flags: int, data: bytes = b"") -> None:
        if self.full:
            return
        nsec = 1 + -(-len(data) // SECTOR)
        if self.next_sector + nsec > self.log.nr_sectors:
            # As the kernel: stop logging, keep the device working, say so once.
            self.full = True
            self.dm.kernel_log("log-writes", f"log device full after {self.entries} entries; logging stopped")
            return
        buf = bytearray(nsec * SECTOR)
        ENTRY.pack_into(buf, 0, sector, nr_sectors, flags, len(data))
        buf[SECTOR:SECTOR + len(data)] = data
        self.log.write(self.next_sector, buf)
        self.next_sector += nsec
        self.entries += 1
        self._write_super()

    # -- bios ------------------------------------------------------------------------------

    def remap_sync(self, offset, write):
        if write:
            return Remap(0, self.len, "bio")
        return Remap(0, self.len, "remap", self.dev, 0)

    def submit_write(self, offset: int, data: bytes, fua: bool, preflush: bool) -> None:
        if preflush:
            self.submit_flush()
        self.dev.write(offset, data, fua=fua)
        self._append(offset, len(data) // SECTOR, LOG_FUA_FLAG if fua else 0, bytes(data))

    def submit_discard(self, offset: int, nr: int) -> None:
        self.dev.write(offset, bytes(nr * SECTOR))
        self._append(offset, nr, LOG_DISCARD_FLAG)

    def submit_flush(self) -> None:
        self.dev.flush()
        self._append(0, 0, LOG_FLUSH_FLAG)
        self.log.flush()

    def message(self, words):
        if len(words) == 2 and words[0] == "mark":
            name = words[1].encode()
            if len(name) > MAX_MARK:
                raise DMError(errno.EINVAL, f"log-writes: mark is longer than {MAX_MARK} bytes")
            self._append(0, 0, LOG_MARK_FLAG, name)
            self.log.flush()
            return ""
        raise DMError(errno.EINVAL, "log-writes: Invalid message: use 'mark NAME'")
