"""Directories: records in 4 KiB blocks on the device, a hash index in memory.

The on-device form (format.DIRENT_FMT) is a chain of records per block, ext2-style, each
record carrying the crc32 hash of its name. When a directory is first used its blocks are
read once and indexed in a dict keyed by name, so every later lookup, insert and remove is
O(1) and a 100,000-entry directory never needs a scan. Records never move while in use: a
record's position (block * 4096 + offset) is its readdir cookie, so listing a directory is
a single O(n) pass that can resume anywhere and is not disturbed by concurrent changes.
"""
import stat

from . import format as fmt
from .errors import CorruptError

BS = fmt.BLOCK_SIZE
HDR = fmt.DIRENT_HDR
START = fmt.DIR_START                    # records follow the block's header
ROOM = fmt.dirent_size(fmt.NAME_MAX)     # a block with this much slack takes any name
_pack = fmt.DIRENT_FMT.pack_into
_unpack = fmt.DIRENT_FMT.unpack_from

DT_UNKNOWN, DT_FIFO, DT_CHR, DT_DIR, DT_BLK, DT_REG, DT_LNK, DT_SOCK = 0, 1, 2, 4, 6, 8, 10, 12


def dtype(mode: int) -> int:
    return {stat.S_IFIFO: DT_FIFO, stat.S_IFCHR: DT_CHR, stat.S_IFDIR: DT_DIR,
            stat.S_IFBLK: DT_BLK, stat.S_IFREG: DT_REG, stat.S_IFLNK: DT_LNK,
            stat.S_IFSOCK: DT_SOCK}.get(stat.S_IFMT(mode), DT_UNKNOWN)


def empty_block() -> bytearray:
    b = fmt.header("directory")
    _pack(b, START, 0, 0, BS - START, 0, 0)
    return b


def parse_block(buf, where: str):
    """Yield (offset, ino, hash, rec_len, ftype, name) for every record, validating it
    (the block's header is verified by whoever read it)."""
    off = START
    while off < BS:
        if off + HDR > BS:
            raise CorruptError(f"{where}: record header at {off} crosses the block end")
        ino, h, rec_len, ftype, nlen = _unpack(buf, off)
        if rec_len < HDR or rec_len & 7 or off + rec_len > BS:
            raise CorruptError(f"{where}: bad record length {rec_len} at offset {off}")
        if ino and fmt.dirent_size(nlen) > rec_len:
            raise CorruptError(f"{where}: name of {nlen} bytes overflows its record at {off}")
        name = bytes(buf[off + HDR:off + HDR + nlen]) if ino else b""
        yield off, ino, h, rec_len, ftype, name
        off += rec_len


class Directory:
    __slots__ = ("blocks", "index", "dirty", "roomy", "_slack", "_last", "errors", "bad",
                 "skipped")

    def __init__(self, blocks: list[bytearray], where: str = "directory",
                 bad: set | None = None):
        """``bad``: indices of blocks that failed verification. Damage never makes the
        whole directory unreadable: a bad block, or a block whose records do not chain,
        contributes nothing, a bad record (an illegal or duplicate name, a wrong hash) is
        left out, and each is listed in ``errors`` for the filesystem to log (it then goes
        read-only, so nothing is ever added to a damaged directory)."""
        self.blocks = blocks
        # name -> record position; the record itself holds ino and type (saves memory)
        self.index: dict[bytes, int] = {}
        self.dirty: set[int] = set()        # block indices changed since the last commit
        self._slack = [0] * len(blocks)     # free bytes per block (maybe not contiguous)
        self._last = [START] * len(blocks)  # offset of the last record of each block
        self.roomy: set[int] = set()        # blocks that may fit a maximal record
        self.errors: list[CorruptError] = []
        self.bad: set[int] = set(bad or ())       # blocks not read for entries
        self.skipped: set[int] = set()            # positions of records left out
        for bi, buf in enumerate(blocks):
            if bi in self.bad:
                continue
            try:
                recs = list(parse_block(buf, f"{where} block {bi}"))
            except CorruptError as e:
                self.errors.append(e)
                self.bad.add(bi)
                continue
            slack = 0
            for off, ino, h, rec_len, ftype, name in recs:
                self._last[bi] = off
                if ino:
                    why = None
                    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
                        why = "invalid name"
                    elif h != fmt.name_hash(name):
                        why = "hash mismatch for"
                    elif name in self.index:
                        why = "duplicate entry"
                    if why:
                        self.errors.append(CorruptError(f"{where}: {why} {name!r}"))
                        self.skipped.add(bi * BS + off)
                        continue
                    self.index[name] = bi * BS + off
                    slack += rec_len - fmt.dirent_size(len(name))
                else:
                    slack += rec_len
            self._slack[bi] = slack
            if slack >= ROOM:
                self.roomy.add(bi)

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, name: bytes):
        """(ino, ftype, pos) of the entry, or None."""
        pos = self.index.get(name)
        if pos is None:
            return None
        bi, off = divmod(pos, BS)
        rec = _unpack(self.blocks[bi], off)
        return rec[0], rec[3], pos

    def add(self, name: bytes, ino: int, ftype: int) -> bool:
        """Insert a record; False if no block has room (the caller adds a block and retries).
        Only blocks with room for the longest possible record are candidates, and at most a
        few are tried, so an insert is O(1) whatever the directory's size."""
        need = fmt.dirent_size(len(name))
        for _ in range(4):
            if not self.roomy:
                return False
            bi = next(iter(self.roomy))
            if self._insert_in(bi, name, ino, ftype, need):
                if self._slack[bi] < ROOM:
                    self.roomy.discard(bi)
                return True
            self.roomy.discard(bi)      # fragmented: back when a removal frees space here
        return False

    def _insert_in(self, bi: int, name: bytes, ino: int, ftype: int, need: int) -> bool:
        buf = self.blocks[bi]
        off = self._last[bi]                # try the tail first: appends are the usual case
        if not self._try_at(bi, off, name, ino, ftype, need):
            off = START
            while off < BS:
                rec_len = _unpack(buf, off)[2]
                if self._try_at(bi, off, name, ino, ftype, need):
                    return True
                off += rec_len
            return False
        return True

    def _try_at(self, bi: int, off: int, name: bytes, ino: int, ftype: int, need: int) -> bool:
        buf = self.blocks[bi]
        rino, rhash, rec_len, rtype, nlen = _unpack(buf, off)
        used = fmt.dirent_size(nlen) if rino else 0
        if rec_len - used >= need:
            if rino:                        # split: the new record takes the tail
                _pack(buf, off, rino, rhash, used, rtype, nlen)
                new_off, new_len = off + used, rec_len - used
            else:
                new_off, new_len = off, rec_len
            _pack(buf, new_off, ino, fmt.name_hash(name), new_len, ftype, len(name))
            buf[new_off + HDR:new_off + HDR + len(name)] = name
            self.index[name] = bi * BS + new_off
            self._slack[bi] -= need
            self.dirty.add(bi)
            if new_off + new_len == BS:
                self._last[bi] = new_off
            return True
        return False

    def grow(self) -> int:
        self.blocks.append(empty_block())
        bi = len(self.blocks) - 1
        self._slack.append(BS - START)
        self._last.append(START)
        self.roomy.add(bi)
        self.dirty.add(bi)
        return bi

    def remove(self, name: bytes) -> None:
        pos = self.index.pop(name)
        bi, off = divmod(pos, BS)
        buf = self.blocks[bi]
        _, _, rec_len, _, nlen = _unpack(buf, off)
        if off == START:
            _pack(buf, START, 0, 0, rec_len, 0, 0)
            buf[START + HDR:START + HDR + nlen] = bytes(nlen)
        else:                                   # merge into the previous record
            prev = START
            while True:
                plen = _unpack(buf, prev)[2]
                if prev + plen == off:
                    break
                prev += plen
            p = _unpack(buf, prev)
            _pack(buf, prev, p[0], p[1], p[2] + rec_len, p[3], p[4])
            if self._last[bi] == off:
                self._last[bi] = prev
            buf[off:off + rec_len] = bytes(rec_len)
        self._slack[bi] += fmt.dirent_size(nlen)
        if self._slack[bi] >= ROOM:
            self.roomy.add(bi)
        self.dirty.add(bi)

    def set_ino(self, name: bytes, ino: int, ftype: int) -> None:
        """Point an existing entry at another inode in place (rename over a target)."""
        pos = self.index[name]
        bi, off = divmod(pos, BS)
        buf = self.blocks[bi]
        r = _unpack(buf, off)
        _pack(buf, off, ino, r[1], r[2], ftype, r[4])
        self.dirty.add(bi)

    def entries_from(self, cookie: int):
        """Yield (name, ino, next_cookie) for every entry a listing that was last handed
        next_cookie == cookie has not returned yet (0 = from the start). A cookie is the
        record's position + 1, so resuming means: positions >= cookie."""
        start = cookie
        bi = start // BS
        nblocks = len(self.blocks)
        while bi < nblocks:
            if bi in self.bad:
                bi += 1
                continue
            # a snapshot: the caller may await between entries while records change
            buf = bytes(self.blocks[bi])
            base = bi * BS
            off = START
            while off < BS:
                ino, _, rec_len, _, nlen = _unpack(buf, off)
                pos = base + off
                if ino and pos >= start and not (self.skipped and pos in self.skipped):
                    yield bytes(buf[off + HDR:off + HDR + nlen]), ino, pos + 1
                off += rec_len
            bi += 1
