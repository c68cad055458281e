"""The Block Translation Table of a namespace in sector mode: atomic sector writes on pmem.

pmem has no sector atomicity: a power failure in the middle of a 4 KiB write leaves part of
the new sector and part of the old. The kernel's BTT (drivers/nvdimm/btt.c) puts one more
block than it exports per lane, writes every sector into a free block first, and only then
switches the sector over in a map; a crash leaves the old or the new sector, never a mix.
This is the same design, at the size dmemu needs: one arena, a handful of lanes.

Layout on the namespace's media (little-endian; every area 4 KiB aligned)::

    0          info block    magic, version, geometry, crc32 of the fields before it
    data_off   data area     internal_nlba blocks of lbasize bytes
    map_off    map           external_nlba u32: 0 = the block with the sector's own
                             number (the state after format), else MAP_SET | block
    flog_off   flog          nfree lanes of 64 bytes: two 16-byte slots
                             (lba u32, old_map u32, new_map u32, seq u32); the slot with the
                             newer seq (1 -> 2 -> 3 -> 1; 0 = empty) is the lane's last write

Invariants: the blocks the map names and the lanes' free blocks (the ``old_map`` of each
lane's newest slot) are internal_nlba distinct blocks. A write of sector ``lba`` on lane L:
the data goes into L's free block F (durable), then the lane's older slot gets
(lba, old_map=map[lba], new_map=F) in two 8-byte halves, the half with seq last, then map[lba]
becomes F. Each step is durable before the next (bio writes to pmem are durable at
completion). A crash before the seq half lands leaves the old slot newest: the sector reads
its old block and F is still free. A crash after it and before the map write is finished
at the next open, which sets map[lba] to new_map when the map still names old_map (the
kernel's log recovery; a map that moved on since was changed by a newer write, on another
lane, and stays). Tearing happens at 8-byte words, so a 4-byte map entry and each half of
a slot land whole or not at all.
"""
import errno
import struct
import zlib
from array import array

from .blockdev import SECTOR_SIZE
from .errors import DmemuError

MAGIC = b"BTT_ARENA_INFO\x00\x00"
VERSION = 1
INFO = struct.Struct("<16sIIIIIQQQ")      # magic version lbasize nfree ext int map flog data
INFO_SIZE = 4096
ALIGN = 4096
NFREE = 4               # lanes; the daemon writes one bio at a time, so a few are plenty
LANE = 64               # bytes per lane, two slots of 16 padded like the kernel's log groups
SLOT = 32
HALF = struct.Struct("<II")
MAP_SET = 1 << 31
LBASIZES = (512, 4096)


def _up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _newer(a: int, b: int) -> bool:
    """seq b follows seq a in the 1 -> 2 -> 3 -> 1 cycle."""
    return b == a % 3 + 1


def geometry(raw_size: int, lbasize: int) -> tuple[int, int, int, int, int] | None:
    """(external_nlba, internal_nlba, data_off, map_off, flog_off) for a namespace of
    raw_size bytes, or None when it is too small to hold a BTT."""
    # each exported sector costs its block and its map entry; the rest is fixed, plus
    # the rounding of the data area and the map to 4 KiB
    fixed = INFO_SIZE + _up(NFREE * LANE) + NFREE * lbasize + 2 * ALIGN
    ext = (raw_size - fixed) // (lbasize + 4)
    while ext >= 1:
        g = geometry_for(ext, lbasize)
        if g[4] + _up(NFREE * LANE) <= raw_size:
            return g
        ext -= 1
    return None


def geometry_for(ext: int, lbasize: int) -> tuple[int, int, int, int, int]:
    internal = ext + NFREE
    data_off = INFO_SIZE
    map_off = data_off + _up(internal * lbasize)
    flog_off = map_off + _up(ext * 4)
    return ext, internal, data_off, map_off, flog_off


class BttError(DmemuError):
    pass


class Btt:
    """The BTT on one namespace's media (``media.read(off, n)``, ``media.write(off, data)``)."""

    def __init__(self, media, raw_size: int, lbasize: int):
        self.media = media
        self.raw_size = raw_size
        self.lbasize = lbasize

    # -- format and open -------------------------------------------------------------------

    @classmethod
    def format(cls, media, raw_size: int, lbasize: int) -> "Btt":
        """Write a fresh BTT: identity map, each lane owning one of the spare blocks. The
        info block goes last, so a crash part-way leaves no BTT rather than half of one."""
        if lbasize not in LBASIZES:
            raise BttError(errno.EINVAL, f"sector size {lbasize} is not supported: a sector "
                                         f"namespace has 512 or 4096-byte sectors")
        g = geometry(raw_size, lbasize)
        if g is None:
            raise BttError(errno.ENOSPC, f"{raw_size} bytes cannot hold a BTT with "
                                         f"{lbasize}-byte sectors")
        ext, internal, data_off, map_off, flog_off = g
        media.write(0, bytes(INFO_SIZE))
        media.write(map_off, bytes(_up(ext * 4)))
        flog = bytearray(_up(NFREE * LANE))
        for lane in range(NFREE):
            free = ext + lane
            struct.pack_into("<IIII", flog, lane * LANE, 0, free, free, 1)
        media.write(flog_off, bytes(flog))
        head = INFO.pack(MAGIC, VERSION, lbasize, NFREE, ext, internal, map_off, flog_off,
                         data_off)
        media.write(0, head + struct.pack("<I", zlib.crc32(head)))
        return cls.open(media, raw_size)

    @classmethod
    def open(cls, media, raw_size: int) -> "Btt":
        """Read the info block, the map and the flog, and finish a write a crash cut short
        after its flog entry (roll forward). Raises BttError for metadata that is not a
        BTT or is damaged, naming what."""
        raw = media.read(0, INFO.size + 4)
        (magic, version, lbasize, nfree, ext, internal, map_off, flog_off,
         data_off) = INFO.unpack_from(raw)
        (crc,) = struct.unpack_from("<I", raw, INFO.size)
        if magic != MAGIC:
            raise BttError(errno.EINVAL, "no BTT info block")
        if crc != zlib.crc32(raw[:INFO.size]):
            raise BttError(errno.EUCLEAN, "the BTT info block fails its checksum")
        if (version != VERSION or lbasize not in LBASIZES or nfree != NFREE
                or internal != ext + nfree
                or (ext, internal, data_off, map_off, flog_off) != geometry_for(ext, lbasize)
                or flog_off + _up(nfree * LANE) > raw_size):
            raise BttError(errno.EUCLEAN, "the BTT info block describes a layout that does "
                                          "not fit the namespace")
        self = cls(media, raw_size, lbasize)
        self.external_nlba, self.internal_nlba = ext, internal
        self.data_off, self.map_off, self.flog_off = data_off, map_off, flog_off
        self.map = array("I")
        self.map.frombytes(media.read(map_off, ext * 4))
        if self.map.itemsize != 4:
            raise BttError(errno.EINVAL, "this platform has no 4-byte array type")
        self.free, self.slot, self.seq = [0] * NFREE, [0] * NFREE, [0] * NFREE
        flog = media.read(flog_off, NFREE * LANE)
        for lane in range(NFREE):
            slots = [struct.unpack_from("<IIII", flog, lane * LANE + s * SLOT) for s in (0, 1)]
            live = [s for s in (0, 1) if slots[s][3] in (1, 2, 3)]
            if not live:
                raise BttError(errno.EUCLEAN, f"BTT lane {lane} has no valid log entry")
            cur = live[0] if len(live) == 1 or not _newer(slots[live[0]][3], slots[live[1]][3]) \
                else live[1]
            if len(live) == 2 and not (_newer(slots[0][3], slots[1][3])
                                       or _newer(slots[1][3], slots[0][3])):
                raise BttError(errno.EUCLEAN, f"BTT lane {lane}: log entries out of sequence")
            lba, old, new, seq = slots[cur]
            if old >= internal or new >= internal or lba >= ext:
                raise BttError(errno.EUCLEAN, f"BTT lane {lane}: log entry out of range")
            if self.block_of(lba) == old and new != old:
                self._map_write(lba, new)            # the write was committed: finish it
            self.free[lane], self.slot[lane], self.seq[lane] = old, cur, seq
        # every sector in a block of its own, none a spare, none past the data area: a
        # damaged map entry would otherwise have writes land in another sector's block
        # (freed to the lane after the write, then overwritten) or in the map and flog
        spare = set(self.free)
        held = {self.block_of(i) for i in range(ext)}
        if len(spare) != NFREE or len(held) != ext or held & spare:
            raise BttError(errno.EUCLEAN, "the BTT map and its free blocks overlap")
        if max(held | spare) >= internal:
            raise BttError(errno.EUCLEAN, "a BTT map entry names a block past the data area")
        self.next_lane = 0
        return self

    # -- the map ---------------------------------------------------------------------------

    def block_of(self, lba: int) -> int:
        e = self.map[lba]
        return e & ~MAP_SET if e & MAP_SET else lba

    def _map_write(self, lba: int, block: int) -> None:
        self.map[lba] = block | MAP_SET
        self.media.write(self.map_off + lba * 4, struct.pack("<I", block | MAP_SET))

    # -- I/O, in 512-byte sectors as the rest of dmemu counts ----------------------------

    @property
    def nr_sectors(self) -> int:
        return self.external_nlba * self.lbasize // SECTOR_SIZE

    def _blocks(self, sector: int, nbytes: int) -> range:
        """The BTT sectors a range of 512-byte sectors touches (a 4096-byte BTT sector
        holds eight)."""
        off = sector * SECTOR_SIZE
        if sector < 0 or nbytes < 0 or off + nbytes > self.external_nlba * self.lbasize:
            raise BttError(errno.EIO, "access beyond end of device")
        return range(off // self.lbasize, -(-(off + nbytes) // self.lbasize))

    def data_range(self, block: int) -> tuple[int, int]:
        """The media's 512-byte sectors holding internal block ``block``."""
        start = (self.data_off + block * self.lbasize) // SECTOR_SIZE
        return start, self.lbasize // SECTOR_SIZE

    def read_blocks(self, sector: int, nbytes: int) -> list[tuple[int, int]]:
        """(lba, internal block) of each sector a read covers."""
        return [(lba, self.block_of(lba)) for lba in self._blocks(sector, nbytes)]

    def read(self, sector: int, nbytes: int) -> bytes:
        blocks = self.read_blocks(sector, nbytes)
        data = b"".join(self.media.read(self.data_off + b * self.lbasize, self.lbasize)
                        for _, b in blocks)
        skip = sector * SECTOR_SIZE - blocks[0][0] * self.lbasize if blocks else 0
        return data[skip:skip + nbytes]

    def write(self, sector: int, data) -> list[int]:
        """Write whole BTT sectors, each atomically; a write that covers part of a 4096-byte
        sector rewrites the whole of it with the rest as it was (as the page cache does
        above a 4K-sector disk). Returns the internal blocks written (the caller clears
        media errors there, as a write over poison does)."""
        blocks = self._blocks(sector, len(data))
        if not blocks:
            return []
        skip = sector * SECTOR_SIZE - blocks[0] * self.lbasize
        if skip or len(data) % self.lbasize:
            whole = bytearray(self.read(blocks[0] * self.lbasize // SECTOR_SIZE,
                                        len(blocks) * self.lbasize))
            whole[skip:skip + len(data)] = data
            data = whole
        data = memoryview(bytes(data))
        first = blocks[0]
        written = []
        for i, lba in enumerate(blocks):
            lane = self.next_lane
            self.next_lane = (lane + 1) % NFREE
            free = self.free[lane]
            self.media.write(self.data_off + free * self.lbasize,
                             data[(lba - first) * self.lbasize:(lba - first + 1) * self.lbasize])
            old = self.block_of(lba)
            slot = 1 - self.slot[lane]
            seq = self.seq[lane] % 3 + 1
            at = self.flog_off + lane * LANE + slot * SLOT
            self.media.write(at, HALF.pack(lba, old))
            self.media.write(at + 8, HALF.pack(free, seq))      # the commit point
            self._map_write(lba, free)
            self.free[lane], self.slot[lane], self.seq[lane] = old, slot, seq
            written.append(free)
        return written
