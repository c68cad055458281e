"""Directory blocks as fsck.daxfs sees them: records salvaged from damaged blocks, names
made legal and unique, and directories packed anew from the entries they keep.

fsck never edits a damaged directory block in place: it collects each directory's entries
(from a block that verifies, exactly; from one that does not, every record that still
proves itself), decides what each entry becomes, and when anything changed writes the whole
directory again from that list, as ``e2fsck -D`` rebuilds a directory.
"""
from dataclasses import dataclass

from . import format as fmt
from .directory import dtype, empty_block

BS = fmt.BLOCK_SIZE
HDR = fmt.DIRENT_HDR
START = fmt.DIR_START
CAPACITY = BS - START           # bytes of records a directory block holds


@dataclass
class Entry:
    name: bytes
    ino: int
    ftype: int
    hash: int


def salvage_records(buf, inodes: dict) -> list[Entry]:
    """The records of a directory block that failed verification and still prove
    themselves: an in-use inode of the record's type, and the name's crc32 in the record
    (a 32-bit check of every name). Records start 8-byte aligned, so every aligned offset
    is tried and a broken record length loses nothing after it."""
    out = []
    off = START
    while off + HDR <= BS:
        ino, h, _rec_len, ftype, nlen = fmt.DIRENT_FMT.unpack_from(buf, off)
        name = bytes(buf[off + HDR:off + HDR + nlen])
        target = inodes.get(ino)
        if ino and nlen and off + HDR + nlen <= BS and target is not None and \
                h == fmt.name_hash(name) and ftype == dtype(target.mode):
            out.append(Entry(name, ino, ftype, h))
            off += fmt.dirent_size(nlen)
        else:
            off += 8
    return out


def illegal(name: bytes) -> str | None:
    """Why a name may not be stored in a directory, or None."""
    if not name:
        return "is empty"
    if name in (b".", b".."):
        return "is reserved"
    if b"/" in name or b"\0" in name:
        return "contains '/' or NUL"
    return None


def legal_name(name: bytes, taken: set) -> bytes:
    """A name for an entry whose name is illegal or already taken in its directory: as
    e2fsck, '/' and NUL become '.', and a name still taken gets '~0', '~1', ... appended
    (shortened to fit NAME_MAX)."""
    base = name.replace(b"/", b".").replace(b"\0", b".") or b"#"
    if base not in taken and illegal(base) is None:
        return base
    k = 0
    while True:
        tail = b"~%d" % k
        cand = base[:fmt.NAME_MAX - len(tail)] + tail
        if cand not in taken:
            return cand
        k += 1


def blocks_needed(entries: list[Entry]) -> int:
    n, room = 0, 0
    for e in entries:
        need = fmt.dirent_size(len(e.name))
        if need > room:
            n += 1
            room = CAPACITY
        room -= need
    return n


def pack_directory(entries: list[Entry], nblocks: int) -> list[bytearray]:
    """nblocks directory blocks (unsealed) holding entries in order; blocks past the
    entries are empty."""
    blocks: list[bytearray] = []
    buf = None
    off = last = 0
    for e in entries:
        need = fmt.dirent_size(len(e.name))
        if buf is None or off + need > BS:
            if buf is not None:
                _stretch(buf, last, off)
            buf = bytearray(fmt.header("directory"))
            blocks.append(buf)
            off = START
        fmt.DIRENT_FMT.pack_into(buf, off, e.ino, fmt.name_hash(e.name), need, e.ftype,
                                 len(e.name))
        buf[off + HDR:off + HDR + len(e.name)] = e.name
        last, off = off, off + need
    if buf is not None:
        _stretch(buf, last, off)
    while len(blocks) < nblocks:
        blocks.append(empty_block())
    return blocks


def _stretch(buf: bytearray, last: int, end: int) -> None:
    """The last record of a block takes the rest of it (records chain to byte 4096)."""
    ino, h, rec_len, ftype, nlen = fmt.DIRENT_FMT.unpack_from(buf, last)
    fmt.DIRENT_FMT.pack_into(buf, last, ino, h, BS - last, ftype, nlen)
