"""The LVM2 label and PV header: how a device says "I am a PV, this is my uuid and layout".

Layout from lvm2 lib/label/label.h and lib/format_text/layout.h; all integers little-endian.
We write the label in sector 1 (LVM's default) and look for it in sectors 0-3 as LVM does.
"""
import struct
import zlib
from dataclasses import dataclass, field

SECTOR = 512
LABEL_ID = b"LABELONE"
LABEL_TYPE = b"LVM2 001"
LABEL_SECTOR = 1
LABEL_SCAN_SECTORS = 4
INITIAL_CRC = 0xF597A6CF
PV_EXT_VERSION = 2
PV_EXT_USED = 0x1       # the PV belongs to a VG (so "pvcreate" on it again needs -ff)

_LABEL = struct.Struct("<8sQII8s")
_LOCN = struct.Struct("<QQ")
_EXT = struct.Struct("<II")


def calc_crc(data: bytes, crc: int = INITIAL_CRC) -> int:
    """LVM's calc_crc: reflected CRC-32 (zlib's polynomial) seeded with 0xf597a6cf and
    without zlib's pre/post inversion, so a seed for zlib is crc ^ 0xffffffff."""
    return zlib.crc32(data, crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def uuid_nodash(uuid: str) -> str:
    return uuid.replace("-", "")


def uuid_dashed(raw: str) -> str:
    """LVM shows its 32-character ids in groups 6-4-4-4-4-4-6."""
    parts, pos = [], 0
    for n in (6, 4, 4, 4, 4, 4, 6):
        parts.append(raw[pos:pos + n])
        pos += n
    return "-".join(parts)


@dataclass
class PVHeader:
    """The label sector of a PV.

    label_header (32 bytes at the start of the sector):
      id[8]      "LABELONE"
      sector u64 the sector holding this label (1): a label found elsewhere is stale
      crc u32    calc_crc over bytes 20..511 of the sector (everything after this field)
      offset u32 where the PV header starts within the sector (32)
      type[8]    "LVM2 001"
    pv_header (at offset 32):
      pv_uuid[32]       ASCII id without dashes
      device_size u64   bytes of the device when the PV was created
      data areas        {u64 offset, u64 size} ... {0, 0}; one area from pe_start, size 0
                        meaning "to the end of the device"
      metadata areas    {u64 offset, u64 size} ... {0, 0}; one MDA at 4096
      pv_header_extension  {u32 version = 2, u32 flags (PV_EXT_USED while in a VG)},
                        then bootloader areas ... {0, 0} (none)
    Invariant: everything fits in the one 512-byte sector and the crc matches.
    """
    uuid: str                                   # without dashes
    device_size: int
    data_areas: list = field(default_factory=list)      # [(offset, size)]
    metadata_areas: list = field(default_factory=list)  # [(offset, size)]
    flags: int = 0

    def pack(self) -> bytes:
        body = bytearray(self.uuid.encode().ljust(32, b"\0")[:32])
        body += struct.pack("<Q", self.device_size)
        for areas in (self.data_areas, self.metadata_areas):
            for off, size in areas:
                body += _LOCN.pack(off, size)
            body += _LOCN.pack(0, 0)
        body += _EXT.pack(PV_EXT_VERSION, self.flags)
        body += _LOCN.pack(0, 0)                # no bootloader areas
        sector = bytearray(SECTOR)
        sector[32:32 + len(body)] = body
        _LABEL.pack_into(sector, 0, LABEL_ID, LABEL_SECTOR, 0, 32, LABEL_TYPE)
        struct.pack_into("<I", sector, 16, calc_crc(bytes(sector[20:])))
        return bytes(sector)

    @classmethod
    def unpack(cls, sector: bytes, sector_nr: int) -> "PVHeader | None":
        """The PV header in ``sector`` (read from sector number ``sector_nr``), or None."""
        if len(sector) < SECTOR:
            return None
        ident, lsector, crc, offset, ltype = _LABEL.unpack_from(sector, 0)
        if ident != LABEL_ID or lsector != sector_nr or ltype != LABEL_TYPE:
            return None
        if crc != calc_crc(bytes(sector[20:SECTOR])) or not 32 <= offset < SECTOR - 40:
            return None
        pos = offset
        uuid = sector[pos:pos + 32].rstrip(b"\0").decode("ascii", "replace")
        (device_size,) = struct.unpack_from("<Q", sector, pos + 32)
        pos += 40
        lists = []
        for _ in range(2):
            areas = []
            while pos + 16 <= SECTOR:
                off, size = _LOCN.unpack_from(sector, pos)
                pos += 16
                if off == 0:
                    break
                areas.append((off, size))
            lists.append(areas)
        flags = 0
        if pos + 8 <= SECTOR:
            version, flags = _EXT.unpack_from(sector, pos)
            if version != PV_EXT_VERSION:
                flags = 0
        return cls(uuid, device_size, lists[0], lists[1], flags)
