"""The daxfs on-device format, version 2: every structure, its fields and their invariants.

All integers are little-endian. The block size is 4096 bytes (the page size, which DAX
needs so that a file block can be mapped as a page). Block numbers are absolute, counted
from the start of the device. docs/format.md explains why the layout is what it is.

Every metadata block is self-describing, as ext4's metadata_csum and XFS's v5 format make
them: it starts with a 48-byte header (``HDR_FMT``) that names its type (the magic), the
format version, its own block number and the filesystem's uuid, and carries a crc32c
(Castagnoli, the checksum both use, computed in hardware) of the block. A block read from
the wrong place, from another filesystem, or damaged, fails verification instead of being
trusted. Inodes carry the same header in their first 32 bytes (XFS's v3 dinode).

Layout, in blocks::

    0                      superblock
    1                      first backup superblock
    2 .. J+1               journal (J = journal_blocks; block 2 is the journal header)
    fc_start ..            fast-commit area (fc_blocks): per-fsync records of what changed
    bbitmap_start ..       block bitmap, one bit per device block, 1 = in use
    ibitmap_start ..       inode bitmap, one bit per inode number, 1 = in use (bit 0 always set)
    itable_start ..        inode table, 16 inodes of 256 bytes per block, inode n at slot n
    data_start .. end-1    file data, directory blocks, extent blocks, xattr blocks
    total_blocks - 1       second backup superblock (marked in use in the block bitmap)
"""
import struct
import zlib
from dataclasses import dataclass, field

import crc32c as _crc32c

from .errors import CorruptError

BLOCK_SIZE = 4096
BLOCK_SECTORS = BLOCK_SIZE // 512
SECTOR_SIZE = 512
SB_MAGIC = b"DAXFS\x00SB"
VERSION = 2
ROOT_INO = 1            # FUSE's ROOT_INODE, so no translation is needed
NAME_MAX = 255
PATH_MAX = 4096

INODE_SIZE = 256
INODES_PER_BLOCK = BLOCK_SIZE // INODE_SIZE

# Inode flags (Inode.flags). DAX has the value of FS_XFLAG_DAX, the flag ext4/XFS keep for
# the same purpose, so tools that know one know the other.
IFLAG_DAX = 0x00008000

# Superblock state
STATE_CLEAN = 1         # unmounted cleanly: the journal is empty
STATE_DIRTY = 2         # mounted read-write, or crashed while mounted

# Largest file: logical block numbers are u32 (lblk + len <= 2**32).
MAX_FILE_BLOCKS = 1 << 32
MAX_FILE_SIZE = MAX_FILE_BLOCKS * BLOCK_SIZE

# Timestamps: signed 64-bit seconds and 32-bit nanoseconds, the VFS's timespec64, so every
# value a caller can hand over is stored as given. The range, for the VFS layer to clamp
# with (as Linux clamps to sb->s_time_min/s_time_max), in seconds and in nanoseconds:
TIME_MIN_SEC = -(1 << 63)
TIME_MAX_SEC = (1 << 63) - 1
TIME_MIN_NS = TIME_MIN_SEC * 10**9
TIME_MAX_NS = TIME_MAX_SEC * 10**9 + 999_999_999


def clamp_time_ns(ns: int) -> int:
    return TIME_MIN_NS if ns < TIME_MIN_NS else TIME_MAX_NS if ns > TIME_MAX_NS else ns


def crc(data) -> int:
    """crc32 (zlib) of a name: the directory hash, not a metadata checksum."""
    return zlib.crc32(data) & 0xFFFFFFFF


def crc32c(data, value: int = 0) -> int:
    return _crc32c.crc32c(data, value)


# ---------------------------------------------------------------------------------------
# The header of every metadata block

HDR_FMT = struct.Struct("<8sIIQ16sQ")
"""48 bytes at the start of every metadata block:

    magic    8s  the block's type: SB_MAGIC or b"DAXFS\0" + a two-letter tag (MAGICS)
    version  u32 VERSION; 1 here is a version-1 image (its superblock had the version at
                 the same offset), refused with a way out
    crc      u32 crc32c of the checksummed bytes with this field zero: the whole block,
                 except the superblock's first sector only (see Superblock)
    blkno    u64 the block's own number: a block written or read at the wrong place fails
    uuid     16s the filesystem's uuid: a block of an earlier filesystem on the device fails
    lsn      u64 the journal sequence number of the transaction that wrote it (0 from mkfs);
                 fast-commit records: the full commit they follow
"""
HDR_SIZE = HDR_FMT.size
PAYLOAD = BLOCK_SIZE - HDR_SIZE
_CRC_OFF = 12

MAGICS = {
    "superblock": SB_MAGIC,
    "journal header": b"DAXFS\x00JH",
    "journal descriptor": b"DAXFS\x00JD",
    "journal commit": b"DAXFS\x00JC",
    "fast commit": b"DAXFS\x00FR",
    "fast commit (whole inodes)": b"DAXFS\x00FC",
    "block bitmap": b"DAXFS\x00BB",
    "inode bitmap": b"DAXFS\x00IB",
    "directory": b"DAXFS\x00DR",
    "extent": b"DAXFS\x00EX",
    "xattr": b"DAXFS\x00XA",
}
_TYPE_OF = {v: k for k, v in MAGICS.items()}


def block_type(buf) -> str | None:
    return _TYPE_OF.get(bytes(buf[:8]))


def header(kind: str) -> bytearray:
    """A zeroed block with its type and version set; ``seal`` fills in the rest."""
    buf = bytearray(BLOCK_SIZE)
    HDR_FMT.pack_into(buf, 0, MAGICS[kind], VERSION, 0, 0, bytes(16), 0)
    return buf


def _checksum(buf, n: int) -> int:
    v = _crc32c.crc32c(bytes(buf[:_CRC_OFF]))
    v = _crc32c.crc32c(b"\0\0\0\0", v)
    return _crc32c.crc32c(bytes(buf[_CRC_OFF + 4:n]), v)


def seal(buf, blkno: int, uuid: bytes, lsn: int = 0) -> bytes:
    """Stamp a metadata block with where it lives, whose it is, and its checksum."""
    buf = bytearray(buf)
    struct.pack_into("<Q16sQ", buf, 16, blkno, uuid, lsn)
    n = SECTOR_SIZE if bytes(buf[:8]) == SB_MAGIC else BLOCK_SIZE
    struct.pack_into("<I", buf, _CRC_OFF, _checksum(buf, n))
    return bytes(buf)


def verify(buf, kind: str, blkno: int, uuid: bytes | None) -> int:
    """Check a metadata block is what it should be; return its lsn. CorruptError (or
    VersionError for a version-1 block) names the block and what is wrong."""
    if len(buf) < BLOCK_SIZE:
        raise CorruptError(f"{kind} block {blkno}: truncated")
    magic, version, csum, where, owner, lsn = HDR_FMT.unpack_from(buf, 0)
    if magic != MAGICS[kind]:
        got = _TYPE_OF.get(magic)
        raise CorruptError(f"{kind} block {blkno}: bad magic"
                           + (f" (a {got} block)" if got else ""))
    if version != VERSION:
        if kind == "superblock" and version == 1:
            raise VersionError(version)
        raise CorruptError(f"{kind} block {blkno}: format version {version}, expected {VERSION}")
    n = SECTOR_SIZE if kind == "superblock" else BLOCK_SIZE
    if _checksum(buf, n) != csum:
        raise CorruptError(f"{kind} block {blkno}: checksum mismatch")
    if where != blkno:
        raise CorruptError(f"{kind} block {blkno}: says it is block {where}")
    if uuid is not None and owner != uuid:
        raise CorruptError(f"{kind} block {blkno}: belongs to another filesystem "
                           f"(uuid {owner.hex()})")
    return lsn


class VersionError(CorruptError):
    """A daxfs image of an older format version: refused, never misread."""

    def __init__(self, version: int):
        super().__init__(
            f"daxfs format version {version} is not supported (this daxfs reads version "
            f"{VERSION} only): mount it with a daxfs that reads version {version} "
            f"(daxfs 0.1.x) and copy the files off, then mkfs.daxfs and copy them back; "
            f"nothing was written to the device")
        self.version = version


@dataclass
class Superblock:
    """Blocks 0 (primary), 1 and total_blocks-1 (backups). After the header (magic
    SB_MAGIC), from byte 48, in order:

    block_size       u32 4096; any other value is refused
    feature_compat   u32 features an old implementation may ignore (none defined)
    feature_incompat u32 features an old implementation must refuse (none defined)
    feature_ro_compat u32 features an old implementation may only mount read-only (none)
    state            u32 STATE_CLEAN after a clean unmount, STATE_DIRTY while mounted rw
    _pad             u32
    label            64s NUL-padded UTF-8 (-L), at most 63 bytes
    total_blocks     u64 blocks on the device covered by the filesystem
    free_blocks      u64 == number of 0 bits in the block bitmap (blocks < total_blocks)
    total_inodes     u64 inode numbers 0 .. total_inodes-1 exist; 0 is never used
    free_inodes      u64 == number of 0 bits in the inode bitmap
    journal_start    u64 first journal block (the journal header), 2
    journal_blocks   u64 journal length including its header
    fc_start         u64 / fc_blocks u64        fast-commit area
    bbitmap_start    u64 / bbitmap_blocks u64   block bitmap location and length
    ibitmap_start    u64 / ibitmap_blocks u64   inode bitmap location and length
    itable_start     u64 / itable_blocks u64    inode table location and length
    data_start       u64 first block the allocator may hand out
    root_ino         u64 ROOT_INO
    orphan_head      u64 first inode of the orphan list (nlink 0, still open), 0 = empty
    mkfs_time_ns     u64 / mount_time_ns u64 / mount_count u64
    time_min_sec     i64 / time_max_sec i64     the timestamp range inodes hold
    The uuid is the header's. Everything lies in the first 512-byte sector and the crc32c
    covers that sector only (the rest of the block is zero): a sector is written atomically,
    which the one superblock write outside the journal (at a clean unmount) relies on.
    """
    FMT = struct.Struct("<IIIIII64s" + "Q" * 23 + "qq")

    uuid: bytes
    label: str
    total_blocks: int
    free_blocks: int
    total_inodes: int
    free_inodes: int
    journal_start: int
    journal_blocks: int
    bbitmap_start: int
    bbitmap_blocks: int
    ibitmap_start: int
    ibitmap_blocks: int
    itable_start: int
    itable_blocks: int
    data_start: int
    fc_start: int = 0
    fc_blocks: int = 0
    root_ino: int = ROOT_INO
    orphan_head: int = 0
    mkfs_time_ns: int = 0
    mount_time_ns: int = 0
    mount_count: int = 0
    state: int = STATE_CLEAN
    feature_compat: int = 0
    feature_incompat: int = 0
    feature_ro_compat: int = 0
    version: int = VERSION
    block_size: int = BLOCK_SIZE

    @property
    def backup_blocks(self) -> tuple[int, int]:
        return (1, self.total_blocks - 1)

    def pack(self, blkno: int = 0, lsn: int = 0) -> bytes:
        buf = header("superblock")
        self.FMT.pack_into(
            buf, HDR_SIZE, self.block_size, self.feature_compat, self.feature_incompat,
            self.feature_ro_compat, self.state, 0, self.label.encode(),
            self.total_blocks, self.free_blocks, self.total_inodes, self.free_inodes,
            self.journal_start, self.journal_blocks, self.fc_start, self.fc_blocks,
            self.bbitmap_start, self.bbitmap_blocks, self.ibitmap_start, self.ibitmap_blocks,
            self.itable_start, self.itable_blocks, self.data_start, self.root_ino,
            self.orphan_head, self.mkfs_time_ns, self.mount_time_ns, self.mount_count, 0, 0, 0,
            TIME_MIN_SEC, TIME_MAX_SEC)
        return seal(buf, blkno, self.uuid, lsn)

    @classmethod
    def unpack(cls, buf, blkno: int = 0) -> "Superblock":
        from .errors import CorruptError
        if bytes(buf[:8]) != SB_MAGIC:
            raise CorruptError("superblock: bad magic (not a daxfs filesystem)")
        verify(buf, "superblock", blkno, None)
        (bsize, fc, fi, fro, state, _pad, label, total_blocks, free_blocks, total_inodes,
         free_inodes, js, jb, fcs, fcb, bs, bb, is_, ib, ts, tb, ds, root, orphan, mkfs_t,
         mount_t, mount_c, _r1, _r2, _r3, tmin, tmax) = cls.FMT.unpack_from(buf, HDR_SIZE)
        uuid = bytes(buf[24:40])
        if bsize != BLOCK_SIZE:
            raise CorruptError(f"superblock: unsupported block size {bsize}")
        if fi:
            raise CorruptError(f"superblock: unknown incompatible features {fi:#x}")
        if (tmin, tmax) != (TIME_MIN_SEC, TIME_MAX_SEC):
            raise CorruptError("superblock: unknown timestamp range")
        sb = cls(uuid=uuid, label=label.rstrip(b"\0").decode(errors="replace"),
                 total_blocks=total_blocks, free_blocks=free_blocks, total_inodes=total_inodes,
                 free_inodes=free_inodes, journal_start=js, journal_blocks=jb,
                 fc_start=fcs, fc_blocks=fcb,
                 bbitmap_start=bs, bbitmap_blocks=bb, ibitmap_start=is_, ibitmap_blocks=ib,
                 itable_start=ts, itable_blocks=tb, data_start=ds, root_ino=root,
                 orphan_head=orphan, mkfs_time_ns=mkfs_t, mount_time_ns=mount_t,
                 mount_count=mount_c, state=state, feature_compat=fc, feature_incompat=fi,
                 feature_ro_compat=fro)
        sb.validate()
        return sb

    def validate(self) -> None:
        """The regions must be in order, inside the device and not overlap."""
        from .errors import CorruptError
        regions = [(self.journal_start, self.journal_blocks, "journal"),
                   (self.fc_start, self.fc_blocks, "fast-commit area"),
                   (self.bbitmap_start, self.bbitmap_blocks, "block bitmap"),
                   (self.ibitmap_start, self.ibitmap_blocks, "inode bitmap"),
                   (self.itable_start, self.itable_blocks, "inode table")]
        pos = 2
        for start, n, what in regions:
            if start != pos or n < 1:
                raise CorruptError(f"superblock: {what} at {start} (+{n}) is misplaced")
            pos = start + n
        if self.data_start != pos or self.data_start >= self.total_blocks - 1:
            raise CorruptError("superblock: data area misplaced")
        if self.bbitmap_blocks * BITMAP_BITS < self.total_blocks:
            raise CorruptError("superblock: block bitmap too small for the device")
        if self.ibitmap_blocks * BITMAP_BITS < self.total_inodes:
            raise CorruptError("superblock: inode bitmap too small for the inode count")
        if self.itable_blocks * INODES_PER_BLOCK < self.total_inodes or self.total_inodes < 2:
            raise CorruptError("superblock: inode table too small for the inode count")
        if self.journal_blocks < 8:
            raise CorruptError("superblock: journal too small")
        if self.free_blocks > self.total_blocks or self.free_inodes > self.total_inodes:
            raise CorruptError("superblock: free counts exceed totals")
        if not (0 < self.root_ino < self.total_inodes):
            raise CorruptError("superblock: root inode out of range")
        if not (0 <= self.orphan_head < self.total_inodes):
            raise CorruptError("superblock: orphan list head out of range")


# ---------------------------------------------------------------------------------------
# Bitmaps

BITMAP_BITS = PAYLOAD * 8
"""Bits per bitmap block: a bitmap block is the header and PAYLOAD bytes of bits; bit k of
bitmap block i is bit i * BITMAP_BITS + k of the bitmap. In memory the payloads are kept
joined (alloc.Bitmap), and split again into blocks at commit."""


def unpack_bitmap(raw, start: int, nblocks: int, kind: str, uuid: bytes) -> bytearray:
    """The payloads of nblocks bitmap blocks read from block start, verified, joined."""
    out = bytearray()
    for i in range(nblocks):
        blk = raw[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE]
        verify(blk, kind, start + i, uuid)
        out += blk[HDR_SIZE:]
    return out


def pack_bitmap_block(data, i: int, kind: str) -> bytearray:
    """Bitmap block i of the joined bitmap ``data`` (unsealed)."""
    buf = header(kind)
    part = data[i * PAYLOAD:(i + 1) * PAYLOAD]
    buf[HDR_SIZE:HDR_SIZE + len(part)] = part
    return buf


# ---------------------------------------------------------------------------------------
# Inodes

INLINE_EXTENTS = 6

INODE_HDR_FMT = struct.Struct("<2sBBIQ16s")
"""The first 32 bytes of every on-device inode (its self-description, as XFS's v3 dinode):
magic b"DI", version u8 (2), _pad u8, crc32c u32 of the 256 bytes with this field zero,
ino u64 (its own number), uuid 16s (the filesystem's). A slot never written is all zeros
and reads as free."""
INODE_MAGIC = b"DI"

INODE_FMT = struct.Struct("<IIIIQqqqqIIIIIIQIIQQQQ")
"""The fixed part of an on-device inode, from byte 32 (256 bytes in all). Fields, in order:

    mode        u32 S_IFMT type + permission bits; 0 = slot free
    uid, gid    u32
    nlink       u32 directory entries naming it (directories: 2 + subdirectories)
    size        u64 bytes (directories: 4096 * directory blocks; symlinks: target length)
    atime_sec, mtime_sec, ctime_sec, crtime_sec  i64 seconds since the epoch (timespec64)
    atime_nsec, mtime_nsec, ctime_nsec, crtime_nsec  u32 nanoseconds, < 10**9
    flags       u32 IFLAG_* (IFLAG_DAX = FS_XFLAG_DAX; inherited from the parent at creation)
    generation  u32 bumped each time the slot is reused (FUSE/NFS file-handle generation)
    rdev        u64 device number of character/block device nodes
    nextents    u32 number of extents; <= INLINE_EXTENTS are stored inline, more in the chain
    _pad        u32
    extent_block u64 first block of the extent chain (0 when nextents <= INLINE_EXTENTS)
    xattr_block u64 block holding the extended attributes, 0 = none
    orphan_next u64 next inode on the orphan list, 0 = end
    parent      u64 directories only: the directory containing it (root: itself)
then INLINE_EXTENTS extents of 16 bytes (EXTENT_FMT) to the end of the 256 bytes.
"""
INODE_FIXED_OFF = INODE_HDR_FMT.size
INODE_EXTENTS_OFF = INODE_FIXED_OFF + INODE_FMT.size
INODE_GEN_OFF = INODE_FIXED_OFF + struct.calcsize("<IIIIQqqqqIIIII")
assert INODE_EXTENTS_OFF + INLINE_EXTENTS * 16 == INODE_SIZE


def inode_location(ino: int) -> tuple[int, int]:
    """(index of the inode-table block, byte offset in it) of inode ino."""
    blk, slot = divmod(ino, INODES_PER_BLOCK)
    return blk, slot * INODE_SIZE


def seal_inode(buf, ino: int, uuid: bytes) -> bytes:
    buf = bytearray(buf)
    INODE_HDR_FMT.pack_into(buf, 0, INODE_MAGIC, VERSION, 0, 0, ino, uuid)
    struct.pack_into("<I", buf, 4, crc32c(bytes(buf)))
    return bytes(buf)


def verify_inode(buf, ino: int, uuid: bytes | None) -> bool:
    """True for a sealed inode slot of ino, False for a never-written (all-zero) slot;
    CorruptError for anything else."""
    magic, version, _pad, csum, where, owner = INODE_HDR_FMT.unpack_from(buf, 0)
    if magic != INODE_MAGIC:
        if not any(buf):
            return False
        raise CorruptError(f"inode {ino}: bad magic")
    if version != VERSION:
        raise CorruptError(f"inode {ino}: format version {version}, expected {VERSION}")
    tmp = bytearray(buf[:INODE_SIZE])
    tmp[4:8] = b"\0\0\0\0"
    if crc32c(bytes(tmp)) != csum:
        raise CorruptError(f"inode {ino}: checksum mismatch")
    if where != ino:
        raise CorruptError(f"inode {ino}: slot holds inode {where}")
    if uuid is not None and owner != uuid:
        raise CorruptError(f"inode {ino}: belongs to another filesystem")
    return True


def split_time(ns: int) -> tuple[int, int]:
    """(seconds, nanoseconds) of a time in ns, clamped to the range (floor division, so a
    time before the epoch has negative seconds and nanoseconds in 0..999999999)."""
    return divmod(clamp_time_ns(ns), 10**9)


EXTENT_FMT = struct.Struct("<IIQ")
"""One extent: lblk u32 (first file block), len u32 (blocks, >= 1), pblk u64 (first device
block). Extents of one file are sorted by lblk and never overlap; blocks not covered are
holes that read as zeros (sparse files)."""

EXTENT_BLOCK_FMT = struct.Struct("<IIQ")
"""Extent-chain block, after the header (magic b"DAXFS\0EX"): count u32 (extents in this
block), owner u32 (the low 32 bits of the inode number it belongs to), next u64 (next chain
block, 0 = last); then count extents (EXTENT_FMT) from byte 64."""
EXTENTS_OFF = HDR_SIZE + EXTENT_BLOCK_FMT.size
EXTENTS_PER_BLOCK = (BLOCK_SIZE - EXTENTS_OFF) // EXTENT_FMT.size


def pack_extent_block(extents, nxt: int, owner: int = 0) -> bytearray:
    buf = header("extent")
    EXTENT_BLOCK_FMT.pack_into(buf, HDR_SIZE, len(extents), owner & 0xFFFFFFFF, nxt)
    off = EXTENTS_OFF
    for lblk, n, pblk in extents:
        EXTENT_FMT.pack_into(buf, off, lblk, n, pblk)
        off += EXTENT_FMT.size
    return buf


def unpack_extent_block(buf, blkno: int, uuid: bytes | None, owner: int | None = None):
    verify(buf, "extent", blkno, uuid)
    count, own, nxt = EXTENT_BLOCK_FMT.unpack_from(buf, HDR_SIZE)
    if count > EXTENTS_PER_BLOCK:
        raise CorruptError(f"extent block {blkno}: bad count {count}")
    if owner is not None and own != owner & 0xFFFFFFFF:
        raise CorruptError(f"extent block {blkno}: belongs to inode {own}, not {owner}")
    ext = [EXTENT_FMT.unpack_from(buf, EXTENTS_OFF + i * EXTENT_FMT.size) for i in range(count)]
    return ext, nxt


# ---------------------------------------------------------------------------------------
# Directories

DIRENT_FMT = struct.Struct("<QIHBB")
"""A directory record inside a directory block (after the block's header, magic
b"DAXFS\0DR"): ino u64 (0 = unused space), hash u32 (crc32 of the name: fsck checks it,
the in-memory index is keyed by it), rec_len u16 (bytes to the next record, a multiple of 8,
>= 16), ftype u8 (DT_* of the target), name_len u8, then the name (no NUL). The records of
a block chain exactly from byte DIR_START (48) to byte 4096. A record never moves while it
is in use, so (block index * 4096 + offset + 1) is a stable readdir cookie."""
DIRENT_HDR = DIRENT_FMT.size
DIR_START = HDR_SIZE


def dirent_size(name_len: int) -> int:
    return (DIRENT_HDR + name_len + 7) & ~7


def name_hash(name: bytes) -> int:
    return crc(name)


# ---------------------------------------------------------------------------------------
# Extended attributes

XATTR_HDR_FMT = struct.Struct("<HH")
"""xattr block, after the header (magic b"DAXFS\0XA"): count u16, used u16 (bytes of
entries after these 4); each entry is name_len u8, pad u8, value_len u16, the full name
(with its namespace prefix, e.g. b"user.foo"), the value."""
XATTR_START = HDR_SIZE + XATTR_HDR_FMT.size
XATTR_ENTRY_FMT = struct.Struct("<BBH")
XATTR_SPACE = BLOCK_SIZE - XATTR_START
XATTR_PREFIXES = (b"user.", b"trusted.", b"security.")
# The only system. attributes stored: POSIX ACLs (the VFS hands no other system. name to a
# filesystem that has no handler for it).
XATTR_SYSTEM_NAMES = (b"system.posix_acl_access", b"system.posix_acl_default")


def pack_xattrs(xattrs: dict) -> bytearray:
    from .errors import FsError
    import errno
    body = bytearray()
    for name, value in sorted(xattrs.items()):
        body += XATTR_ENTRY_FMT.pack(len(name), 0, len(value)) + name + value
    if len(body) > XATTR_SPACE:
        raise FsError(errno.ENOSPC, "no space left for extended attributes")
    buf = header("xattr")
    XATTR_HDR_FMT.pack_into(buf, HDR_SIZE, len(xattrs), len(body))
    buf[XATTR_START:XATTR_START + len(body)] = body
    return buf


def xattrs_size(xattrs: dict) -> int:
    return sum(XATTR_ENTRY_FMT.size + len(k) + len(v) for k, v in xattrs.items())


def unpack_xattrs(buf, blkno: int, uuid: bytes | None) -> dict:
    verify(buf, "xattr", blkno, uuid)
    count, used = XATTR_HDR_FMT.unpack_from(buf, HDR_SIZE)
    if used > XATTR_SPACE:
        raise CorruptError(f"xattr block {blkno}: bad size")
    out = {}
    off = XATTR_START
    end = off + used
    for _ in range(count):
        if off + XATTR_ENTRY_FMT.size > end:
            raise CorruptError("xattr block: entry runs past the end")
        nlen, _pad, vlen = XATTR_ENTRY_FMT.unpack_from(buf, off)
        off += XATTR_ENTRY_FMT.size
        if off + nlen + vlen > end or nlen == 0:
            raise CorruptError("xattr block: entry runs past the end")
        name = bytes(buf[off:off + nlen])
        out[name] = bytes(buf[off + nlen:off + nlen + vlen])
        off += nlen + vlen
        if not name.startswith(XATTR_PREFIXES) and name not in XATTR_SYSTEM_NAMES:
            raise CorruptError(f"xattr block: unknown namespace in {name!r}")
    if off != end:
        raise CorruptError("xattr block: used size does not match the entries")
    return out


# ---------------------------------------------------------------------------------------
# Journal

JOURNAL_HDR_FMT = struct.Struct("<QQ")
"""Journal header (first journal block, magic b"DAXFS\0JH"): start_seq u64 (sequence
number of the first transaction to replay), start_off u64 (its offset in blocks from the
journal start, >= 1). Rewritten (after a flush) only when the journal wraps, at mount and
at a clean unmount, so everything before start_off is already checkpointed."""

JDESC_FMT = struct.Struct("<IIQ")
"""Transaction descriptor block (magic b"DAXFS\0JD", lsn = seq): count u32, _pad u32,
seq u64, then count u64 home block numbers from byte JDESC_HOMES (64); the count block
images follow it in the journal, each a sealed metadata block naming its home as blkno. A
transaction is one or more descriptor+images groups and a commit block."""
JDESC_HOMES = HDR_SIZE + JDESC_FMT.size
JDESC_MAX = (BLOCK_SIZE - JDESC_HOMES) // 8

JCOMMIT_FMT = struct.Struct("<IIQ")
"""Commit block (magic b"DAXFS\0JC", lsn = seq): nblocks u32 (journal blocks of the
transaction before the commit), tx_crc u32 = crc32c of those blocks in order, seq u64.
It is written with PREFLUSH|FUA, so a valid commit proves the whole transaction (and the
data it references, written before) is durable."""


def pack_fields(kind: str, fmt: struct.Struct, *fields) -> bytearray:
    buf = header(kind)
    fmt.pack_into(buf, HDR_SIZE, *fields)
    return buf


def unpack_fields(kind: str, fmt: struct.Struct, buf, blkno: int, uuid: bytes | None):
    verify(buf, kind, blkno, uuid)
    return fmt.unpack_from(buf, HDR_SIZE)


# ---------------------------------------------------------------------------------------
# Fast commits

FC_FMT = struct.Struct("<QII")
"""A fast-commit record: one block of the fast-commit area (magic b"DAXFS\0FR"; lsn =
the sequence number the next full journal commit will have, so a full commit makes every
earlier record stale). After the header: fc_seq u64 (1, 2, ... within one lsn; records are
written from the start of the area in order), count u32 (inode entries), used u32 (bytes
of entries); then the entries from byte FC_START (64). An entry is what one fsync of an
inode changed since the inode's previous record (or the last full commit):

    ino u64, nranges u32, flags u32 (0), the inode's 256 bytes (sealed, as in the table),
    then nranges ranges (EXTENT_FMT: lblk u32, len u32, pblk u64): file blocks lblk ..
    lblk+len-1 are now mapped to pblk.. (pblk 0: they are a hole)

so its size follows what changed, not the size of the file's extent list. Replay (mount,
fsck) applies the entries of every valid record in order, on top of what the journal
holds: the inode's fields come from the entry, its extents are the ones it had with each
range punched and mapped again, the block bitmap follows, and the extent chains of the
inodes replayed are laid out anew. fsync writes one record with PREFLUSH|FUA.

Records with magic b"DAXFS\0FC" (FC_WHOLE) were written before ranges: an entry there is
an inode's whole state (ino u64, nchain u32, nextents u32, the inode, nchain chain block
numbers, nextents extents when not inline). Replay still reads them, as if their entry
were one range over the whole file; nothing writes them any more."""
FC_WHOLE = "fast commit (whole inodes)"
FC_START = HDR_SIZE + FC_FMT.size
FC_ENTRY_FMT = struct.Struct("<QII")
FC_SPACE = BLOCK_SIZE - FC_START


# mkfs sizes the block bitmap for a filesystem this many times larger than the device
# (a 64 MiB filesystem spends 8 more blocks, 32 KiB, and can grow to 1 GiB online), up to
# 2^32 blocks (16 TiB)
GROW_FACTOR = 16
MAX_GROW_BLOCKS = 1 << 32


@dataclass
class Geometry:
    """Where mkfs puts the regions for a device of total_blocks blocks."""
    total_blocks: int
    total_inodes: int
    journal_blocks: int
    bbitmap_blocks: int = field(init=False)
    ibitmap_blocks: int = field(init=False)
    itable_blocks: int = field(init=False)
    fc_blocks: int = field(init=False)

    def __post_init__(self):
        # room for daxfs-resize to grow the filesystem GROW_FACTOR-fold without moving
        # anything (ext4 reserves descriptor blocks for growth the same way): bits past the
        # end are set, and a grow clears them
        room = min(self.total_blocks * GROW_FACTOR, MAX_GROW_BLOCKS)
        self.bbitmap_blocks = (max(room, self.total_blocks) + BITMAP_BITS - 1) // BITMAP_BITS
        self.ibitmap_blocks = (self.total_inodes + BITMAP_BITS - 1) // BITMAP_BITS
        self.itable_blocks = (self.total_inodes + INODES_PER_BLOCK - 1) // INODES_PER_BLOCK
        self.fc_blocks = max(16, min(1024, self.journal_blocks // 4))

    @property
    def journal_start(self): return 2

    @property
    def fc_start(self): return self.journal_start + self.journal_blocks

    @property
    def bbitmap_start(self): return self.fc_start + self.fc_blocks

    @property
    def ibitmap_start(self): return self.bbitmap_start + self.bbitmap_blocks

    @property
    def itable_start(self): return self.ibitmap_start + self.ibitmap_blocks

    @property
    def data_start(self): return self.itable_start + self.itable_blocks


def default_geometry(total_blocks: int) -> Geometry:
    """One inode per 16 KiB (ext4's default ratio), a journal of 1/32 of the device bounded
    to 256..8192 blocks (1..32 MiB): large enough for a group commit, small enough for tests;
    a fast-commit area of a quarter of that (16..1024 blocks: as many fsyncs between two
    full commits)."""
    journal = max(256, min(8192, total_blocks // 32))
    inodes = max(64, min(total_blocks // 4, 1 << 32))
    inodes = (inodes + INODES_PER_BLOCK - 1) // INODES_PER_BLOCK * INODES_PER_BLOCK
    g = Geometry(total_blocks, inodes, journal)
    return g
