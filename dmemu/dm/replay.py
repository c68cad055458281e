"""Reading a log-writes log and replaying it onto a device, up to any entry or mark.

The log format is in dmemu.dm.targets.log_writes. Replaying entries 0..N onto a copy of
the device's initial contents rebuilds the device exactly as it was when entry N completed;
at a FLUSH or FUA entry that is a state a power failure could have left behind.
"""
import errno
from dataclasses import dataclass

from ..errors import DmemuError
from .targets.log_writes import (ENTRY, LOG_DISCARD_FLAG, LOG_FLUSH_FLAG, LOG_FUA_FLAG,
                                 LOG_MARK_FLAG, SECTOR, SUPER, WRITE_LOG_MAGIC, WRITE_LOG_VERSION)

FLAG_NAMES = ((LOG_FLUSH_FLAG, "FLUSH"), (LOG_FUA_FLAG, "FUA"), (LOG_DISCARD_FLAG, "DISCARD"),
              (LOG_MARK_FLAG, "MARK"))


@dataclass
class Entry:
    index: int
    sector: int
    nr_sectors: int
    flags: int
    data_len: int
    log_sector: int       # where the entry's data starts on the log device

    @property
    def flag_text(self) -> str:
        return "|".join(n for f, n in FLAG_NAMES if self.flags & f) or "WRITE"


async def read_log(log) -> list[Entry]:
    sb = await log.read(0, SECTOR)
    magic, version, nr_entries, sectorsize = SUPER.unpack_from(sb)
    if magic != WRITE_LOG_MAGIC:
        raise DmemuError(errno.EINVAL, f"{log.name}: not a log-writes log (bad magic)")
    if version != WRITE_LOG_VERSION or sectorsize != SECTOR:
        raise DmemuError(errno.EINVAL, f"{log.name}: unsupported log version {version} "
                                       f"or sector size {sectorsize}")
    entries, pos = [], 1
    for i in range(nr_entries):
        hdr = await log.read(pos, SECTOR)
        sector, nr, flags, data_len = ENTRY.unpack_from(hdr)
        entries.append(Entry(i, sector, nr, flags, data_len, pos + 1))
        pos += 1 + -(-data_len // SECTOR)
    return entries


async def mark_name(log, e: Entry) -> str:
    return (await log.read(e.log_sector, SECTOR))[:e.data_len].decode(errors="replace")


async def apply(log, dev, e: Entry) -> None:
    if e.flags & LOG_MARK_FLAG or e.flags & LOG_FLUSH_FLAG and not e.data_len:
        return
    if e.flags & LOG_DISCARD_FLAG:
        await dev.write(e.sector, bytes(e.nr_sectors * SECTOR))
        return
    if e.data_len:
        data = await log.read(e.log_sector, e.data_len)
        await dev.write(e.sector, data)


def is_point(e: Entry, kind: str) -> bool:
    """Whether a crash right after ``e`` is a state to check ('flush' or 'fua' points)."""
    if kind == "fua":
        return bool(e.flags & (LOG_FUA_FLAG | LOG_FLUSH_FLAG))
    return bool(e.flags & LOG_FLUSH_FLAG)
