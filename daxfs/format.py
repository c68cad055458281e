"""The daxfs on-device format: every structure, its fields and their invariants.

All integers are little-endian. The block size is 4096 bytes (the page size, which DAX
needs so that a file block can be mapped as a page). Block numbers are absolute, counted
from the start of the device. docs/format.md explains why the layout is what it is.

Layout, in blocks::

    0                      superblock
    1 .. J                 journal (J = journal_blocks; block 1 is the journal header)
    bbitmap_start ..       block bitmap, one bit per device block, 1 = in use
    ibitmap_start ..       inode bitmap, one bit per inode number, 1 = in use (bit 0 always set)
    itable_start ..        inode table, 16 inodes of 256 bytes per block, inode n at slot n
    data_start .. end      file data, directory blocks, extent blocks, xattr blocks
"""
import struct
import zlib
from dataclasses import dataclass, field

BLOCK_SIZE = 4096
BLOCK_SECTORS = BLOCK_SIZE // 512
SB_MAGIC = b"DAXFS\x00SB"
VERSION = 1
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


def crc(data) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


class _Struct:
    """Helpers shared by the structures: pack with a trailing crc32, unpack and verify."""
    FMT: struct.Struct

    @classmethod
    def _unpack_checked(cls, buf, what: str):
        from .errors import CorruptError
        n = cls.FMT.size
        if len(buf) < n + 4:
            raise CorruptError(f"{what}: truncated")
        want = struct.unpack_from("<I", buf, n)[0]
        if crc(bytes(buf[:n])) != want:
            raise CorruptError(f"{what}: checksum mismatch")
        return cls.FMT.unpack_from(buf, 0)


@dataclass
class Superblock(_Struct):
    """Block 0. Fields, in order:

    magic            8s  b"DAXFS\\0SB"
    version          u32 format version, 1
    block_size       u32 4096; any other value is refused
    feature_compat   u32 features an old implementation may ignore (none defined)
    feature_incompat u32 features an old implementation must refuse (none defined)
    feature_ro_compat u32 features an old implementation may only mount read-only (none)
    state            u32 STATE_CLEAN after a clean unmount, STATE_DIRTY while mounted rw
    uuid             16s random at mkfs (or -U)
    label            64s NUL-padded UTF-8 (-L), at most 63 bytes
    total_blocks     u64 blocks on the device covered by the filesystem
    free_blocks      u64 == number of 0 bits in the block bitmap (blocks < total_blocks)
    total_inodes     u64 inode numbers 0 .. total_inodes-1 exist; 0 is never used
    free_inodes      u64 == number of 0 bits in the inode bitmap
    journal_start    u64 first journal block (the journal header), 1
    journal_blocks   u64 journal length including its header
    bbitmap_start    u64 / bbitmap_blocks u64   block bitmap location and length
    ibitmap_start    u64 / ibitmap_blocks u64   inode bitmap location and length
    itable_start     u64 / itable_blocks u64    inode table location and length
    data_start       u64 first block the allocator may hand out
    root_ino         u64 ROOT_INO
    orphan_head      u64 first inode of the orphan list (nlink 0, still open), 0 = empty
    mkfs_time_ns     u64 / mount_time_ns u64 / mount_count u64
    crc32            u32 of all preceding bytes
    """
    FMT = struct.Struct("<8sIIIIII16s64s" + "Q" * 20)

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

    def pack(self) -> bytes:
        label = self.label.encode()
        body = self.FMT.pack(
            SB_MAGIC, self.version, self.block_size, self.feature_compat,
            self.feature_incompat, self.feature_ro_compat, self.state, self.uuid, label,
            self.total_blocks, self.free_blocks, self.total_inodes, self.free_inodes,
            self.journal_start, self.journal_blocks, self.bbitmap_start, self.bbitmap_blocks,
            self.ibitmap_start, self.ibitmap_blocks, self.itable_start, self.itable_blocks,
            self.data_start, self.root_ino, self.orphan_head, self.mkfs_time_ns,
            self.mount_time_ns, self.mount_count, 0, 0)
        body += struct.pack("<I", crc(body))
        return body + bytes(BLOCK_SIZE - len(body))

    @classmethod
    def unpack(cls, buf) -> "Superblock":
        from .errors import CorruptError
        if bytes(buf[:8]) != SB_MAGIC:
            raise CorruptError("superblock: bad magic (not a daxfs filesystem)")
        f = cls._unpack_checked(buf, "superblock")
        (_, version, bsize, fc, fi, fro, state, uuid, label, total_blocks, free_blocks,
         total_inodes, free_inodes, js, jb, bs, bb, is_, ib, ts, tb, ds, root, orphan,
         mkfs_t, mount_t, mount_c, _r1, _r2) = f
        if version != VERSION:
            raise CorruptError(f"superblock: unsupported version {version}")
        if bsize != BLOCK_SIZE:
            raise CorruptError(f"superblock: unsupported block size {bsize}")
        if fi:
            raise CorruptError(f"superblock: unknown incompatible features {fi:#x}")
        sb = cls(uuid=uuid, label=label.rstrip(b"\0").decode(errors="replace"),
                 total_blocks=total_blocks, free_blocks=free_blocks, total_inodes=total_inodes,
                 free_inodes=free_inodes, journal_start=js, journal_blocks=jb,
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
                   (self.bbitmap_start, self.bbitmap_blocks, "block bitmap"),
                   (self.ibitmap_start, self.ibitmap_blocks, "inode bitmap"),
                   (self.itable_start, self.itable_blocks, "inode table")]
        pos = 1
        for start, n, what in regions:
            if start != pos or n < 1:
                raise CorruptError(f"superblock: {what} at {start} (+{n}) is misplaced")
            pos = start + n
        if self.data_start != pos or self.data_start >= self.total_blocks:
            raise CorruptError("superblock: data area misplaced")
        if self.bbitmap_blocks * BLOCK_SIZE * 8 < self.total_blocks:
            raise CorruptError("superblock: block bitmap too small for the device")
        if self.ibitmap_blocks * BLOCK_SIZE * 8 < self.total_inodes:
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
# Inodes

INLINE_EXTENTS = 8

INODE_FMT = struct.Struct("<IIIIQqqqqIIQIIQQQQ")
"""The fixed part of an on-device inode (256 bytes in all). Fields, in order:

    mode        u32 S_IFMT type + permission bits; 0 = slot free
    uid, gid    u32
    nlink       u32 directory entries naming it (directories: 2 + subdirectories)
    size        u64 bytes (directories: 4096 * directory blocks; symlinks: target length)
    atime_ns, mtime_ns, ctime_ns, crtime_ns  i64 nanoseconds since the epoch
    flags       u32 IFLAG_* (IFLAG_DAX = FS_XFLAG_DAX; inherited from the parent at creation)
    generation  u32 bumped each time the slot is reused (FUSE/NFS file-handle generation)
    rdev        u64 device number of character/block device nodes
    nextents    u32 number of extents; <= 8 are stored inline, more in the extent chain
    _pad        u32
    extent_block u64 first block of the extent chain (0 when nextents <= 8)
    xattr_block u64 block holding the extended attributes, 0 = none
    orphan_next u64 next inode on the orphan list, 0 = end
    parent      u64 directories only: the directory containing it (root: itself)
then INLINE_EXTENTS extents of 16 bytes (EXTENT_FMT), then padding, and a crc32 of the
first 252 bytes in the last 4 bytes. An all-zero slot is a free inode and needs no crc.
"""

EXTENT_FMT = struct.Struct("<IIQ")
"""One extent: lblk u32 (first file block), len u32 (blocks, >= 1), pblk u64 (first device
block). Extents of one file are sorted by lblk and never overlap; blocks not covered are
holes that read as zeros (sparse files)."""

EXTENT_BLOCK_FMT = struct.Struct("<4sIQ")
"""Header of an extent-chain block: magic b"DXEX", count u32 (extents in this block),
next u64 (next chain block, 0 = last); then count extents (EXTENT_FMT) from byte 32;
crc32 of bytes 0..4091 in the last 4 bytes."""
EXTENT_BLOCK_MAGIC = b"DXEX"
EXTENTS_PER_BLOCK = (BLOCK_SIZE - 32 - 4) // EXTENT_FMT.size


def pack_extent_block(extents, nxt: int) -> bytes:
    buf = bytearray(BLOCK_SIZE)
    EXTENT_BLOCK_FMT.pack_into(buf, 0, EXTENT_BLOCK_MAGIC, len(extents), nxt)
    off = 32
    for lblk, n, pblk in extents:
        EXTENT_FMT.pack_into(buf, off, lblk, n, pblk)
        off += EXTENT_FMT.size
    struct.pack_into("<I", buf, BLOCK_SIZE - 4, crc(buf[:BLOCK_SIZE - 4]))
    return bytes(buf)


def unpack_extent_block(buf) -> tuple[list, int]:
    from .errors import CorruptError
    magic, count, nxt = EXTENT_BLOCK_FMT.unpack_from(buf, 0)
    if magic != EXTENT_BLOCK_MAGIC or count > EXTENTS_PER_BLOCK:
        raise CorruptError("extent block: bad magic or count")
    if struct.unpack_from("<I", buf, BLOCK_SIZE - 4)[0] != crc(buf[:BLOCK_SIZE - 4]):
        raise CorruptError("extent block: checksum mismatch")
    ext = [EXTENT_FMT.unpack_from(buf, 32 + i * EXTENT_FMT.size) for i in range(count)]
    return ext, nxt


# ---------------------------------------------------------------------------------------
# Directories

DIRENT_FMT = struct.Struct("<QIHBB")
"""A directory record inside a directory block: ino u64 (0 = unused space), hash u32
(crc32 of the name: fsck checks it, the in-memory index is keyed by it), rec_len u16
(bytes to the next record, a multiple of 8, >= 16), ftype u8 (DT_* of the target),
name_len u8, then the name (no NUL). The records of a block chain exactly from byte 0 to
byte 4096. A record never moves while it is in use, so (block index * 4096 + offset + 1)
is a stable readdir cookie."""
DIRENT_HDR = DIRENT_FMT.size


def dirent_size(name_len: int) -> int:
    return (DIRENT_HDR + name_len + 7) & ~7


def name_hash(name: bytes) -> int:
    return crc(name)


# ---------------------------------------------------------------------------------------
# Extended attributes

XATTR_HDR_FMT = struct.Struct("<4sHH")
"""Header of an xattr block: magic b"DXXA", count u16, used u16 (bytes of entries after the
header); each entry is name_len u8, pad u8, value_len u16, the full name (with its
namespace prefix, e.g. b"user.foo"), the value. crc32 of bytes 0..4091 in the last 4 bytes."""
XATTR_MAGIC = b"DXXA"
XATTR_ENTRY_FMT = struct.Struct("<BBH")
XATTR_SPACE = BLOCK_SIZE - XATTR_HDR_FMT.size - 4
XATTR_PREFIXES = (b"user.", b"trusted.", b"security.")


def pack_xattrs(xattrs: dict) -> bytes:
    from .errors import FsError
    import errno
    body = bytearray()
    for name, value in sorted(xattrs.items()):
        body += XATTR_ENTRY_FMT.pack(len(name), 0, len(value)) + name + value
    if len(body) > XATTR_SPACE:
        raise FsError(errno.ENOSPC, "no space left for extended attributes")
    buf = bytearray(BLOCK_SIZE)
    XATTR_HDR_FMT.pack_into(buf, 0, XATTR_MAGIC, len(xattrs), len(body))
    buf[XATTR_HDR_FMT.size:XATTR_HDR_FMT.size + len(body)] = body
    struct.pack_into("<I", buf, BLOCK_SIZE - 4, crc(buf[:BLOCK_SIZE - 4]))
    return bytes(buf)


def xattrs_size(xattrs: dict) -> int:
    return sum(XATTR_ENTRY_FMT.size + len(k) + len(v) for k, v in xattrs.items())


def unpack_xattrs(buf) -> dict:
    from .errors import CorruptError
    magic, count, used = XATTR_HDR_FMT.unpack_from(buf, 0)
    if magic != XATTR_MAGIC or used > XATTR_SPACE:
        raise CorruptError("xattr block: bad magic or size")
    if struct.unpack_from("<I", buf, BLOCK_SIZE - 4)[0] != crc(buf[:BLOCK_SIZE - 4]):
        raise CorruptError("xattr block: checksum mismatch")
    out = {}
    off = XATTR_HDR_FMT.size
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
        if not name.startswith(XATTR_PREFIXES):
            raise CorruptError(f"xattr block: unknown namespace in {name!r}")
    if off != end:
        raise CorruptError("xattr block: used size does not match the entries")
    return out


# ---------------------------------------------------------------------------------------
# Journal

JOURNAL_HDR_FMT = struct.Struct("<8sQQ")
"""Journal header (first journal block): magic b"DAXFSJNL", start_seq u64 (sequence number
of the first transaction to replay), start_off u64 (its offset in blocks from the journal
start, >= 1); crc32 after. Rewritten (after a flush) only when the journal wraps, at mount
and at a clean unmount, so everything before start_off is already checkpointed."""
JOURNAL_MAGIC = b"DAXFSJNL"

JDESC_FMT = struct.Struct("<4sIQ")
"""Transaction descriptor block: magic b"DXJD", count u32, seq u64, then count u64 home block
numbers from byte 16; the count block images follow it in the journal. A transaction is one
or more descriptor+images groups and a commit block."""
JDESC_MAGIC = b"DXJD"
JDESC_MAX = (BLOCK_SIZE - JDESC_FMT.size) // 8

JCOMMIT_FMT = struct.Struct("<4sIQI")
"""Commit block: magic b"DXJC", nblocks u32 (journal blocks of the transaction before the
commit), seq u64, crc u32 = crc32 of those blocks in order; then a crc32 of the first 20
bytes. It is written with PREFLUSH|FUA, so a valid commit proves the whole transaction (and
the data it references, written before) is durable."""
JCOMMIT_MAGIC = b"DXJC"


def pack_struct_block(fmt: struct.Struct, *fields) -> bytes:
    body = fmt.pack(*fields)
    body += struct.pack("<I", crc(body))
    return body + bytes(BLOCK_SIZE - len(body))


def unpack_struct_block(fmt: struct.Struct, buf, what: str):
    from .errors import CorruptError
    n = fmt.size
    if struct.unpack_from("<I", buf, n)[0] != crc(bytes(buf[:n])):
        raise CorruptError(f"{what}: checksum mismatch")
    return fmt.unpack_from(buf, 0)


@dataclass
class Geometry:
    """Where mkfs puts the regions for a device of total_blocks blocks."""
    total_blocks: int
    total_inodes: int
    journal_blocks: int
    bbitmap_blocks: int = field(init=False)
    ibitmap_blocks: int = field(init=False)
    itable_blocks: int = field(init=False)

    def __post_init__(self):
        bits = BLOCK_SIZE * 8
        self.bbitmap_blocks = (self.total_blocks + bits - 1) // bits
        self.ibitmap_blocks = (self.total_inodes + bits - 1) // bits
        self.itable_blocks = (self.total_inodes + INODES_PER_BLOCK - 1) // INODES_PER_BLOCK

    @property
    def journal_start(self): return 1

    @property
    def bbitmap_start(self): return 1 + self.journal_blocks

    @property
    def ibitmap_start(self): return self.bbitmap_start + self.bbitmap_blocks

    @property
    def itable_start(self): return self.ibitmap_start + self.ibitmap_blocks

    @property
    def data_start(self): return self.itable_start + self.itable_blocks


def default_geometry(total_blocks: int) -> Geometry:
    """One inode per 16 KiB (ext4's default ratio), a journal of 1/32 of the device bounded
    to 256..8192 blocks (1..32 MiB): large enough for a group commit, small enough for tests."""
    journal = max(256, min(8192, total_blocks // 32))
    inodes = max(64, min(total_blocks // 4, 1 << 32))
    inodes = (inodes + INODES_PER_BLOCK - 1) // INODES_PER_BLOCK * INODES_PER_BLOCK
    g = Geometry(total_blocks, inodes, journal)
    return g
