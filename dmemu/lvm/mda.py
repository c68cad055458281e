"""The metadata area (MDA): a header and a circular buffer of text metadata.

From lvm2 lib/format_text/layout.h and format-text.c. The caller does the I/O; this module
only packs headers and decides where a new copy of the metadata goes.
"""
import struct
from dataclasses import dataclass

from .label import calc_crc

MDA_HEADER_SIZE = 512
FMTT_MAGIC = b" LVM2 x[5A%r0N*>"
FMTT_VERSION = 1
MDA_START = 4096                 # the first MDA sits right after the label's 4 KiB
PE_START_SECTORS = 2048          # default pe_start: 1 MiB, so the MDA is 1 MiB - 4 KiB
RAW_LOCN_IGNORED = 0x1

_HDR = struct.Struct("<I16sIQQ")
_RLOCN = struct.Struct("<QQII")


@dataclass
class RawLocn:
    """raw_locn: where the committed metadata text lies.

    offset u64    from the start of the MDA (never inside the 512-byte header)
    size u64      bytes of text including its terminating NUL; may wrap past the end of
                  the area, continuing right after the header
    checksum u32  calc_crc over those bytes (the wrapped part continuing the first part)
    flags u32     RAW_LOCN_IGNORED: this MDA is not used
    """
    offset: int = 0
    size: int = 0
    checksum: int = 0
    flags: int = 0


@dataclass
class MdaHeader:
    """mda_header, the first 512 bytes of the MDA.

    checksum u32  calc_crc over bytes 4..511
    magic[16]     " LVM2 x[5A%r0N*>"
    version u32   1
    start u64     absolute byte offset of this header on the device
    size u64      bytes of the whole area, header included
    raw_locn[]    zero-terminated; [0] is the committed copy (offset 0 = no metadata yet)
    Invariant: the header is rewritten (with FUA) only after the text it points to is durable.
    """
    start: int
    size: int
    locn: RawLocn

    def pack(self) -> bytes:
        buf = bytearray(MDA_HEADER_SIZE)
        _HDR.pack_into(buf, 0, 0, FMTT_MAGIC, FMTT_VERSION, self.start, self.size)
        if self.locn.offset:
            _RLOCN.pack_into(buf, _HDR.size, self.locn.offset, self.locn.size,
                             self.locn.checksum, self.locn.flags)
        struct.pack_into("<I", buf, 0, calc_crc(bytes(buf[4:])))
        return bytes(buf)

    @classmethod
    def unpack(cls, buf: bytes, start: int) -> "MdaHeader | None":
        if len(buf) < MDA_HEADER_SIZE:
            return None
        crc, magic, version, hstart, size = _HDR.unpack_from(buf, 0)
        if magic != FMTT_MAGIC or version != FMTT_VERSION or hstart != start:
            return None
        if crc != calc_crc(bytes(buf[4:MDA_HEADER_SIZE])):
            return None
        return cls(hstart, size, RawLocn(*_RLOCN.unpack_from(buf, _HDR.size)))


def text_pieces(hdr: MdaHeader, locn: RawLocn) -> list[tuple[int, int]]:
    """(absolute offset, length) of the stretches holding the text ``locn`` points at."""
    first = min(locn.size, hdr.size - locn.offset)
    pieces = [(hdr.start + locn.offset, first)]
    if first < locn.size:
        pieces.append((hdr.start + MDA_HEADER_SIZE, locn.size - first))
    return pieces


def place_text(hdr: MdaHeader, text: bytes) -> tuple[RawLocn, list[tuple[int, bytes]]]:
    """Where a new copy goes: right after the committed one (512-aligned), wrapping to just
    after the header, so the old copy stays intact until the header points elsewhere.

    Returns the new raw_locn and the (absolute offset, bytes) writes to make first.
    """
    usable = hdr.size - MDA_HEADER_SIZE
    if len(text) > usable // 2:
        # Old and new copy must both fit, or a crash mid-write could leave neither.
        raise ValueError(f"metadata too large for the metadata area ({len(text)} bytes, "
                         f"area holds {usable // 2})")
    old = hdr.locn
    if old.offset:
        end = old.offset + old.size
        if end > hdr.size:
            end = MDA_HEADER_SIZE + (end - hdr.size)
        offset = -(-end // 512) * 512
        if offset >= hdr.size:
            offset = MDA_HEADER_SIZE
    else:
        offset = MDA_HEADER_SIZE
    locn = RawLocn(offset, len(text), calc_crc(text), 0)
    writes, pos = [], 0
    for start, n in text_pieces(hdr, locn):
        writes.append((start, text[pos:pos + n]))
        pos += n
    return locn, writes
