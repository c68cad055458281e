"""The on-device structures encode and decode exactly, and damage is detected."""
import pytest

from daxfs import format as fmt
from daxfs.errors import CorruptError
from daxfs.inode import Inode


def make_sb(**kw):
    g = fmt.default_geometry(16384)
    args = dict(uuid=b"u" * 16, label="lab", total_blocks=16384, free_blocks=100,
                total_inodes=g.total_inodes, free_inodes=10, journal_start=2,
                journal_blocks=g.journal_blocks, fc_start=g.fc_start, fc_blocks=g.fc_blocks,
                bbitmap_start=g.bbitmap_start,
                bbitmap_blocks=g.bbitmap_blocks, ibitmap_start=g.ibitmap_start,
                ibitmap_blocks=g.ibitmap_blocks, itable_start=g.itable_start,
                itable_blocks=g.itable_blocks, data_start=g.data_start)
    args.update(kw)
    return fmt.Superblock(**args)


def test_superblock_roundtrip_and_layout():
    sb = make_sb()
    raw = sb.pack()
    assert len(raw) == fmt.BLOCK_SIZE
    assert raw[:8] == b"DAXFS\0SB"
    assert int.from_bytes(raw[8:12], "little") == fmt.VERSION == 2
    assert int.from_bytes(raw[16:24], "little") == 0          # its own block number
    assert raw[24:40] == b"u" * 16                             # the filesystem's uuid
    assert int.from_bytes(raw[48:52], "little") == 4096
    assert raw[72:75] == b"lab"
    assert not any(raw[512:])                                  # one sector, written atomically
    back = fmt.Superblock.unpack(raw)
    assert back == sb
    # a backup names its own place: the primary's image is no backup, and the other way
    with pytest.raises(CorruptError, match="says it is block 0"):
        fmt.Superblock.unpack(raw, 1)
    assert fmt.Superblock.unpack(sb.pack(1), 1) == sb


@pytest.mark.parametrize("offset", [8, 12, 20, 30, 50, 120, 200, 300, 400, 511])
def test_superblock_damage_detected(offset):
    raw = bytearray(make_sb().pack())
    raw[offset] ^= 0x40
    with pytest.raises(CorruptError):
        fmt.Superblock.unpack(raw)


def test_superblock_bad_geometry_refused():
    raw = make_sb(itable_blocks=1).pack()
    with pytest.raises(CorruptError, match="inode table|misplaced"):
        fmt.Superblock.unpack(raw)


def test_inode_roundtrip_inline_extents():
    i = Inode(5)
    i.mode, i.uid, i.gid, i.nlink, i.size = 0o100644, 1000, 100, 1, 12345
    i.mtime_ns, i.flags, i.generation = 1_700_000_000_123_456_789, fmt.IFLAG_DAX, 7
    for k in range(3):
        i.add_extent(k * 10, 2, 1000 + k * 100)
    raw = i.pack()
    assert len(raw) == 256
    j = Inode.unpack(5, raw)
    assert (j.mode, j.uid, j.size, j.mtime_ns, j.flags, j.generation) == \
        (0o100644, 1000, 12345, 1_700_000_000_123_456_789, fmt.IFLAG_DAX, 7)
    assert list(j.extents()) == [(0, 2, 1000), (10, 2, 1100), (20, 2, 1200)]
    with pytest.raises(CorruptError, match="checksum"):
        Inode.unpack(5, bytes(raw[:40]) + bytes([raw[40] ^ 1]) + bytes(raw[41:]))
    with pytest.raises(CorruptError, match="another filesystem"):
        Inode.unpack(5, i.pack(b"v" * 16), b"u" * 16)
    with pytest.raises(CorruptError, match="holds inode 5"):
        Inode.unpack(6, raw)


def test_extent_merge_map_and_truncate():
    i = Inode(2)
    i.add_extent(0, 4, 100)
    i.add_extent(4, 4, 104)            # contiguous both ways: merges
    assert list(i.extents()) == [(0, 8, 100)]
    i.add_extent(100, 1, 500)          # sparse
    assert i.map(3) == (103, 5)
    assert i.map(50) == (0, 50)        # hole up to the next extent
    assert i.map(101) == (0, 0)        # past the last extent
    freed = i.truncate_extents(5)
    assert freed == [(500, 1), (105, 3)]
    assert list(i.extents()) == [(0, 5, 100)]


def test_extent_and_xattr_blocks_roundtrip():
    u = b"u" * 16
    ext = [(k * 3, 1, 9000 + k) for k in range(fmt.EXTENTS_PER_BLOCK)]
    raw = fmt.seal(fmt.pack_extent_block(ext, 77, 5), 1234, u)
    assert fmt.unpack_extent_block(raw, 1234, u, 5) == (ext, 77)
    with pytest.raises(CorruptError, match="belongs to inode 5"):
        fmt.unpack_extent_block(raw, 1234, u, 6)
    with pytest.raises(CorruptError, match="says it is block 1234"):
        fmt.unpack_extent_block(raw, 1235, u)
    xa = {b"user.a": b"1", b"trusted.b": b"x" * 100, b"security.selinux": b""}
    raw = fmt.seal(fmt.pack_xattrs(xa), 99, u)
    assert fmt.unpack_xattrs(raw, 99, u) == xa
    bad = bytearray(raw)
    bad[60] ^= 1
    with pytest.raises(CorruptError, match="checksum"):
        fmt.unpack_xattrs(bad, 99, u)
    with pytest.raises(CorruptError, match="a xattr block"):
        fmt.unpack_extent_block(raw, 99, u)


@pytest.mark.parametrize("ns", [0, -1, 1, 10**9 - 1, -(10**9) - 1, 2**63, -(2**63),
                                16_363_000_000 * 10**9 + 5,        # 2488, past 2**63 ns
                                -11_644_473_600 * 10**9,            # 1601
                                fmt.TIME_MAX_NS, fmt.TIME_MIN_NS])
def test_timestamps_hold_every_timespec64(ns):
    i = Inode(3)
    i.mode = 0o100644
    i.atime_ns = i.mtime_ns = i.ctime_ns = i.crtime_ns = ns
    j = Inode.unpack(3, i.pack())
    assert (j.atime_ns, j.mtime_ns, j.ctime_ns, j.crtime_ns) == (ns,) * 4


def test_timestamps_beyond_the_range_are_clamped():
    i = Inode(3)
    i.mode = 0o100644
    i.mtime_ns = fmt.TIME_MAX_NS + 10**9
    i.atime_ns = fmt.TIME_MIN_NS - 1
    j = Inode.unpack(3, i.pack())
    assert (j.mtime_ns, j.atime_ns) == (fmt.TIME_MAX_NS, fmt.TIME_MIN_NS)
