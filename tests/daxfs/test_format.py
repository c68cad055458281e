"""The on-device structures encode and decode exactly, and damage is detected."""
import pytest

from daxfs import format as fmt
from daxfs.errors import CorruptError
from daxfs.inode import Inode


def make_sb(**kw):
    g = fmt.default_geometry(16384)
    args = dict(uuid=b"u" * 16, label="lab", total_blocks=16384, free_blocks=100,
                total_inodes=g.total_inodes, free_inodes=10, journal_start=1,
                journal_blocks=g.journal_blocks, bbitmap_start=g.bbitmap_start,
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
    assert int.from_bytes(raw[8:12], "little") == fmt.VERSION
    assert int.from_bytes(raw[12:16], "little") == 4096
    assert raw[32:48] == b"u" * 16 and raw[48:51] == b"lab"
    back = fmt.Superblock.unpack(raw)
    assert back == sb


@pytest.mark.parametrize("offset", [8, 12, 40, 120, 200, 271])
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
    bad = bytearray(raw)
    bad[16] ^= 1
    with pytest.raises(CorruptError):
        Inode.unpack(5, bad)


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
    ext = [(k * 3, 1, 9000 + k) for k in range(fmt.EXTENTS_PER_BLOCK)]
    raw = fmt.pack_extent_block(ext, 77)
    assert fmt.unpack_extent_block(raw) == (ext, 77)
    xa = {b"user.a": b"1", b"trusted.b": b"x" * 100, b"security.selinux": b""}
    raw = fmt.pack_xattrs(xa)
    assert fmt.unpack_xattrs(raw) == xa
    bad = bytearray(raw)
    bad[20] ^= 1
    with pytest.raises(CorruptError):
        fmt.unpack_xattrs(bad)
