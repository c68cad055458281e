"""fsck detects each kind of damage, repairs what it can, and never crashes."""
import os
import random
import struct

import pytest

from daxfs import format as fmt
from daxfs.errors import FsError
from daxfs.fs import Filesystem
from daxfs.fsck import EXIT_FIXED, EXIT_OK, EXIT_OPERATIONAL, EXIT_UNCORRECTED, check

from .conftest import MiB, make_dev

R = fmt.ROOT_INO
BS = fmt.BLOCK_SIZE


async def populated():
    """An image with files, a directory, xattrs, a symlink and many extents; and a map of
    where things live."""
    dev = await make_dev(16 * MiB)
    fs = await Filesystem.mount(dev)
    d = await fs.mkdir(R, b"dir")
    fh, f = await fs.create(d.ino, b"file", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"F" * 20000)
    await fs.release(fh)
    await fs.link(f.ino, R, b"hard")
    await fs.setxattr(f.ino, b"user.k", b"value")
    await fs.symlink(R, b"sym", b"dir/file")
    fh, g = await fs.create(R, b"frag", 0o644, os.O_RDWR)
    for k in range(20):
        await fs.write(fh, k * 8192, b"g")
    await fs.release(fh)
    where = dict(sb=fs.sb, dir_ino=d.ino, file_ino=f.ino, frag_ino=g.ino,
                 dir_block=d.map(0)[0], root_block=(await fs.getattr(R)).map(0)[0],
                 xattr_block=f.xattr_block, chain=list(g.chain), file_pblk=f.ext_pblk[0])
    await fs.unmount()
    return dev, where


def poke(dev, byte_offset: int, data: bytes) -> None:
    dev.view[byte_offset:byte_offset + len(data)] = data
    dev.media[byte_offset:byte_offset + len(data)] = data


def inode_off(sb, ino):
    blk, off = fmt.inode_location(ino)
    return (sb.itable_start + blk) * BS + off


def reseal(dev, blk):
    """Stamp a changed metadata block with a valid checksum again (damage that the
    checksum cannot catch: a 'valid' but wrong block, as a bug would write)."""
    buf = bytes(dev.view[blk * BS:(blk + 1) * BS])
    _, _, _, where, uuid, lsn = fmt.HDR_FMT.unpack_from(buf, 0)
    poke(dev, blk * BS, fmt.seal(buf, where, uuid, lsn))


def rewrite_inode(dev, sb, ino, **fields):
    """Change fields of an on-device inode and fix its crc (a 'valid' but wrong inode)."""
    from daxfs.inode import Inode
    off = inode_off(sb, ino)
    raw = bytes(dev.view[off:off + fmt.INODE_SIZE])
    i = Inode.unpack(ino, raw, sb.uuid)
    n = i.nextents_on_disk(raw)
    if n > fmt.INLINE_EXTENTS:
        i.chain = [i.extent_block]
        i.ext_lblk = [0] * n; i.ext_len = [1] * n; i.ext_pblk = [0] * n
    for k, v in fields.items():
        setattr(i, k, v)
    poke(dev, off, i.pack(sb.uuid))


async def fsck(dev, repair=False):
    msgs = []
    code, _ = await check(dev, repair=repair, out=msgs.append)
    return code, msgs


async def test_clean_image_is_clean():
    dev, _ = await populated()
    assert await fsck(dev) == (EXIT_OK, [])


CORRUPTIONS = {
    # name: (how to damage, fixable by -y, message fragment)
    "bitmap_block_marked_free": (lambda dev, w: _clear_bit(dev, w["sb"].bbitmap_start, w["file_pblk"]),
                                 True, "block bitmap"),
    "bitmap_inode_marked_free": (lambda dev, w: _clear_bit(dev, w["sb"].ibitmap_start, w["frag_ino"]),
                                 True, "free inode"),
    "nlink_too_high": (lambda dev, w: rewrite_inode(dev, w["sb"], w["file_ino"], nlink=5),
                       True, "link count 5, should be 2"),
    "dir_nlink_wrong": (lambda dev, w: rewrite_inode(dev, w["sb"], R, nlink=7),
                        True, "link count 7"),
    "inode_checksum": (lambda dev, w: _flip(dev, inode_off(w["sb"], w["frag_ino"]) + 17),
                       True, "checksum"),
    "dir_entry_to_free_inode": (lambda dev, w: _set_entry_ino(dev, w["root_block"], b"sym", 999),
                                True, "names a free inode"),
    "dir_entry_bad_hash": (lambda dev, w: _set_entry_hash(dev, w["root_block"], b"hard"),
                           True, "wrong hash"),
    "dir_block_garbage": (lambda dev, w: poke(dev, w["dir_block"] * BS, os.urandom(64)),
                          True, "directory"),
    "extent_outside_device": (lambda dev, w: _bad_extent(dev, w), True, "outside the data area"),
    "xattr_block_garbage": (lambda dev, w: poke(dev, w["xattr_block"] * BS + 8, b"\xff" * 32),
                            True, "xattr"),
    "extent_chain_garbage": (lambda dev, w: poke(dev, w["chain"][0] * BS, b"junk"),
                             True, "extent block"),
    "superblock_free_count": (lambda dev, w: _sb_field(dev, free_blocks=w["sb"].free_blocks - 3),
                              True, "free counts"),
    "orphan_list_bad": (lambda dev, w: _sb_field(dev, orphan_head=w["frag_ino"] + 50),
                        True, "orphan list"),
    "journal_header_garbage": (lambda dev, w: poke(dev, w["sb"].journal_start * BS, b"x" * 64),
                               True, "journal"),
    "unattached_inode": (lambda dev, w: _set_entry_ino(dev, w["root_block"], b"frag", 0),
                         True, "no directory names it"),
    "directory_two_names": (lambda dev, w: _set_entry_ino(dev, w["root_block"], b"frag",
                                                          w["dir_ino"]),
                            False, "two names"),
    "superblock_checksum": (lambda dev, w: _flip(dev, 100), True, "primary superblock damaged"),
    "superblock_all_copies": (lambda dev, w: [_flip(dev, b * BS + 100)
                                              for b in (0, 1, w["sb"].total_blocks - 1)],
                              False, "no backup superblock"),
    "bitmap_block_checksum": (lambda dev, w: _flip(dev, w["sb"].bbitmap_start * BS + 700),
                              True, "block bitmap block"),
}


def _flip(dev, off):
    poke(dev, off, bytes([dev.view[off] ^ 0x5A]))


def _clear_bit(dev, start_blk, bit):
    blk = start_blk + bit // fmt.BITMAP_BITS
    bit %= fmt.BITMAP_BITS
    off = blk * BS + fmt.HDR_SIZE + bit // 8
    poke(dev, off, bytes([dev.view[off] & ~(1 << (bit % 8)) & 0xFF]))
    reseal(dev, blk)


def _find_entry(dev, pblk, name):
    from daxfs.directory import parse_block
    for off, ino, h, rec_len, ftype, nm in parse_block(dev.view[pblk * BS:(pblk + 1) * BS], "t"):
        if nm == name:
            return pblk * BS + off
    raise AssertionError(name)


def _set_entry_ino(dev, pblk, name, ino):
    poke(dev, _find_entry(dev, pblk, name), struct.pack("<Q", ino))
    reseal(dev, pblk)


def _set_entry_hash(dev, pblk, name):
    poke(dev, _find_entry(dev, pblk, name) + 8, b"\1\2\3\4")
    reseal(dev, pblk)


def _bad_extent(dev, w):
    sb = w["sb"]
    rewrite_inode(dev, sb, w["file_ino"], ext_pblk=[sb.total_blocks + 5])


def _sb_field(dev, **kw):
    sb = fmt.Superblock.unpack(bytes(dev.view[:BS]))
    for k, v in kw.items():
        setattr(sb, k, v)
    poke(dev, 0, sb.pack())


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
async def test_corruption_detected(name):
    damage, fixable, fragment = CORRUPTIONS[name]
    dev, where = await populated()
    damage(dev, where)
    code, msgs = await fsck(dev)
    assert code in (EXIT_UNCORRECTED, EXIT_OPERATIONAL) or (name == "journal_header_garbage"
                                                            and code == EXIT_FIXED), msgs
    assert msgs and any(fragment in m for m in msgs), msgs
    # mount either works or refuses with a typed error; never anything else
    try:
        fs = await Filesystem.mount(dev, read_only=True)
        await _walk(fs)
    except FsError:
        pass
    code, msgs = await fsck(dev, repair=True)
    if fixable:
        assert code == EXIT_FIXED, msgs
        code, msgs = await fsck(dev)
        assert code == EXIT_OK, msgs
        fs = await Filesystem.mount(dev)
        await _walk(fs)
        await fs.unmount()
        assert (await fsck(dev))[0] == EXIT_OK
    else:
        assert code == EXIT_UNCORRECTED, msgs


async def _walk(fs):
    """Touch everything: list every directory, read every file."""
    todo = [R]
    while todo:
        ino = todo.pop()
        async for name, inode, _ in fs.readdir(ino):
            if inode.is_dir:
                todo.append(inode.ino)
            elif inode.is_reg:
                fh = await fs.open(inode.ino, os.O_RDONLY)
                await fs.read(fh, 0, min(inode.size, 1 << 20))
                await fs.release(fh)
            await fs.listxattr(inode.ino)


async def test_not_a_filesystem():
    from dmemu.memdev import MemoryBlockDevice
    dev = MemoryBlockDevice(4 * MiB // 512)
    code, msgs = await fsck(dev)
    assert code == EXIT_OPERATIONAL and "no daxfs superblock" in msgs[0]


async def test_random_damage_never_crashes():
    """Flip random bytes in the metadata: fsck and mount must answer, not crash."""
    rng = random.Random(1234)
    base, where = await populated()
    sb = where["sb"]
    meta = [0, sb.journal_start, sb.bbitmap_start, sb.ibitmap_start, sb.itable_start,
            where["dir_block"], where["root_block"], where["xattr_block"]] + where["chain"]
    for trial in range(60):
        from dmemu.memdev import MemoryBlockDevice
        dev = MemoryBlockDevice(base.nr_sectors)
        dev.view[:] = base.view
        dev.media[:] = base.media
        for _ in range(rng.randint(1, 8)):
            blk = rng.choice(meta)
            off = blk * BS + rng.randrange(0 if blk else 0, 512 if blk in (0,) else BS)
            poke(dev, off, bytes([rng.randrange(256)]))
        code, msgs = await fsck(dev)
        assert code in (0, 1, 4, 8)
        try:
            fs = await Filesystem.mount(dev, read_only=True)
            await _walk(fs)
        except FsError:
            pass
        code, msgs = await fsck(dev, repair=True)
        assert code in (0, 1, 4, 8)


async def test_fsck_replays_journal_with_y():
    dev = await make_dev(8 * MiB)
    fs = await Filesystem.mount(dev)
    await fs.mkdir(R, b"d")
    await fs.sync()
    dev.power_fail()
    code, msgs = await fsck(dev)
    assert code == EXIT_OK and any("replay" in m for m in msgs)
    code, msgs = await fsck(dev, repair=True)
    assert code == EXIT_OK
    fs = await Filesystem.mount(dev)
    assert await fs.listdir(R) == [b"d"]
    await fs.unmount()


async def test_an_inode_without_a_file_type_is_named_in_the_log(caplog):
    """Such an inode once gave the application EIO (the kernel refused its attributes) with
    nothing logged; it is damage, refused by the filesystem with its number and mode."""
    import logging
    import os as _os
    import pyfuse3
    from daxfs import format as _fmt
    from daxfs.fs import Filesystem
    from daxfs.operations import Operations
    dev = await make_dev()
    fs = await Filesystem.mount(dev)
    fh, f = await fs.create(fs.sb.root_ino, b"a", 0o644, _os.O_RDWR)
    await fs.release(fh)
    ino, sb = f.ino, fs.sb
    await fs.unmount()
    # Clear the type bits and keep the checksum valid: damage that passes the checksum.
    idx, off = _fmt.inode_location(ino)
    blk = sb.itable_start + idx
    buf = bytearray(await dev.read(blk * 8, 4096))
    raw = bytearray(buf[off:off + _fmt.INODE_SIZE])
    raw[_fmt.INODE_FIXED_OFF:_fmt.INODE_FIXED_OFF + 4] = (0o644).to_bytes(4, "little")
    buf[off:off + _fmt.INODE_SIZE] = _fmt.seal_inode(raw, ino, sb.uuid)
    await dev.write(blk * 8, bytes(buf))
    fs = await Filesystem.mount(dev)
    ops = Operations(fs)
    with caplog.at_level(logging.ERROR):
        with pytest.raises(pyfuse3.FUSEError):
            await ops.getattr(ino)
    assert f"inode {ino}: mode 0o644 has no valid file type" in caplog.text
