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
                                 True, "marked free in the inode bitmap; keeping it"),
    "nlink_too_high": (lambda dev, w: rewrite_inode(dev, w["sb"], w["file_ino"], nlink=5),
                       True, "link count 5, should be 2"),
    "dir_nlink_wrong": (lambda dev, w: rewrite_inode(dev, w["sb"], R, nlink=7),
                        True, "link count 7"),
    "inode_checksum": (lambda dev, w: _flip(dev, inode_off(w["sb"], w["frag_ino"]) + 17),
                       True, "checksum"),
    "dir_entry_to_free_inode": (lambda dev, w: _set_entry_ino(dev, w["root_block"], b"sym", 999),
                                True, "which is not in use"),
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
                            True, "a directory has one name"),
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
    assert await fs.listdir(R) == [b"lost+found", b"d"]
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


# ---------------------------------------------------------------------------------------
# Repairs that keep data: lost+found, renames, clones (e2fsck's passes 1B-1D, 2, 3, 4)

async def repaired(dev):
    """fsck -y, then fsck -n must be clean: one pass repairs everything."""
    code, msgs = await fsck(dev, repair=True)
    assert code == EXIT_FIXED, msgs
    code2, msgs2 = await fsck(dev)
    assert code2 == EXIT_OK, (msgs, msgs2)
    return msgs


async def read_path(dev, path: bytes) -> bytes:
    fs = await Filesystem.mount(dev, read_only=True)
    ino = R
    for part in path.split(b"/"):
        ino = (await fs.lookup(ino, part)).ino
    inode = await fs.getattr(ino)
    fh = await fs.open(ino, os.O_RDONLY)
    data = await fs.read(fh, 0, inode.size)
    await fs.release(fh)
    return data


def write_dir_block(dev, sb, pblk, records):
    """A directory block holding exactly these (name, ino, ftype) records, sealed: damage
    the checksum cannot see (as a buggy writer would leave)."""
    from daxfs.fsck_dirs import Entry, pack_directory
    ents = [Entry(n, i, t, fmt.name_hash(n)) for n, i, t in records]
    poke(dev, pblk * BS, fmt.seal(pack_directory(ents, 1)[0], pblk, sb.uuid))


async def test_mkfs_makes_lost_and_found():
    dev = await make_dev(8 * MiB)
    fs = await Filesystem.mount(dev, read_only=True)
    assert await fs.listdir(R) == [b"lost+found"]
    lf = await fs.lookup(R, b"lost+found")
    assert lf.ino == 2 and lf.is_dir and lf.mode & 0o777 == 0o700 and lf.size == 4 * BS
    assert (await fs.getattr(R)).nlink == 3
    assert await fsck(dev) == (EXIT_OK, [])


async def test_a_cleared_inode_bitmap_bit_is_a_bitmap_error_not_a_dead_inode():
    dev, w = await populated()
    _clear_bit(dev, w["sb"].ibitmap_start, w["file_ino"])
    msgs = await repaired(dev)
    assert any("inode bitmap" in m for m in msgs)
    assert await read_path(dev, b"dir/file") == b"F" * 20000
    assert await read_path(dev, b"hard") == b"F" * 20000


async def test_an_unattached_file_goes_to_lost_and_found_with_its_data():
    dev, w = await populated()
    _set_entry_ino(dev, w["root_block"], b"frag", 0)
    msgs = await repaired(dev)
    ino = w["frag_ino"]
    assert any(f"/lost+found as #{ino}" in m for m in msgs), msgs
    data = await read_path(dev, b"lost+found/#%d" % ino)
    assert len(data) == 19 * 8192 + 1 and data[::8192] == b"g" * 20


async def test_an_unattached_directory_is_reconnected_with_its_children():
    dev, w = await populated()
    _set_entry_ino(dev, w["root_block"], b"dir", 0)
    await repaired(dev)
    d = w["dir_ino"]
    assert await read_path(dev, b"lost+found/#%d/file" % d) == b"F" * 20000
    fs = await Filesystem.mount(dev, read_only=True)
    lf = await fs.lookup(R, b"lost+found")
    sub = await fs.lookup(lf.ino, b"#%d" % d)
    assert sub.parent == lf.ino and lf.nlink == 3 and (await fs.getattr(R)).nlink == 3


async def test_a_zeroed_root_directory_block_loses_no_file():
    dev, w = await populated()
    poke(dev, w["root_block"] * BS, bytes(BS))
    msgs = await repaired(dev)
    fs = await Filesystem.mount(dev, read_only=True)
    names = await fs.listdir(R)
    assert b"lost+found" in names, (names, msgs)
    lf = await fs.lookup(R, b"lost+found")
    found = set(await fs.listdir(lf.ino))
    assert {b"#%d" % w["dir_ino"], b"#%d" % w["frag_ino"]} <= found, found
    assert await read_path(dev, b"lost+found/#%d/file" % w["dir_ino"]) == b"F" * 20000


async def test_a_bit_flip_in_a_directory_block_keeps_the_other_names():
    """A directory block that fails its checksum is not thrown away: every record that
    still proves itself (its inode in use and of its type, its name's hash) is kept."""
    dev, w = await populated()
    off = _find_entry(dev, w["root_block"], b"sym")
    _flip(dev, off + fmt.DIRENT_HDR)            # a letter of 'sym': its hash no longer fits
    msgs = await repaired(dev)
    assert any("kept the" in m for m in msgs), msgs
    assert await read_path(dev, b"dir/file") == b"F" * 20000
    assert await read_path(dev, b"frag")
    fs = await Filesystem.mount(dev, read_only=True)
    names = await fs.listdir(R)
    assert b"sym" not in names and {b"dir", b"hard", b"frag", b"lost+found"} <= set(names)
    lf = await fs.lookup(R, b"lost+found")
    assert len(await fs.listdir(lf.ino)) == 1       # the symlink, by number


async def test_duplicate_and_illegal_names_are_renamed_and_the_directory_stays_listable():
    from daxfs.directory import DT_LNK, DT_REG
    dev, w = await populated()
    sb = w["sb"]
    fs = await Filesystem.mount(dev, read_only=True)
    sym = (await fs.lookup(R, b"sym")).ino
    frag = w["frag_ino"]
    write_dir_block(dev, sb, w["dir_block"], [
        (b"file", w["file_ino"], DT_REG), (b"file", frag, DT_REG), (b"a/b", sym, DT_LNK),
        (b"..", w["file_ino"], DT_REG), (b"n\0l", frag, DT_REG)])
    # unrepaired, the directory still lists (the bad records left out, the error logged)
    fs = await Filesystem.mount(dev, read_only=True)
    assert await fs.listdir(w["dir_ino"]) == [b"file"]
    msgs = await repaired(dev)
    assert sum("renamed to" in m for m in msgs) == 4, msgs
    fs = await Filesystem.mount(dev, read_only=True)
    names = sorted(await fs.listdir(w["dir_ino"]))
    assert names == [b"..~0", b"a.b", b"file", b"file~0", b"n.l"], names
    assert (await fs.lookup(w["dir_ino"], b"file~0")).ino == frag
    assert (await fs.getattr(w["file_ino"])).nlink == 3     # file, ..~0 and /hard


async def test_cross_linked_blocks_are_cloned_and_both_files_keep_their_data():
    dev, w = await populated()
    sb = w["sb"]
    fs = await Filesystem.mount(dev, read_only=True)
    a = await fs.lookup(w["dir_ino"], b"file")
    src = a.ext_pblk[0]
    # frag's first block now also names file's first block (checksum kept valid)
    frag = await fs.getattr(w["frag_ino"])
    chain = list(frag.chain)
    exts = list(frag.extents())
    exts[0] = (exts[0][0], 1, src)
    buf = bytes(dev.view[chain[0] * BS:(chain[0] + 1) * BS])
    _, nxt = fmt.unpack_extent_block(buf, chain[0], sb.uuid, w["frag_ino"])
    poke(dev, chain[0] * BS, fmt.seal(fmt.pack_extent_block(exts[:fmt.EXTENTS_PER_BLOCK],
                                                            nxt, w["frag_ino"]),
                                      chain[0], sb.uuid))
    code, msgs = await fsck(dev)
    assert code == EXIT_UNCORRECTED and any("also claimed by inode" in m for m in msgs), msgs
    msgs = await repaired(dev)
    assert any(f"inode {w['frag_ino']}: 1 block(s) also claimed by inode {a.ino}; cloned 1"
               in m for m in msgs), msgs
    assert await read_path(dev, b"dir/file") == b"F" * 20000
    assert (await read_path(dev, b"frag"))[:BS] == b"F" * BS      # its own copy
    fs = await Filesystem.mount(dev, read_only=True)
    frag = await fs.getattr(w["frag_ino"])
    assert frag.ext_pblk[0] != src


async def test_cross_linked_blocks_are_cut_when_no_block_is_free():
    dev = await make_dev(4 * MiB)
    fs = await Filesystem.mount(dev)
    fh, a = await fs.create(R, b"a", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"A" * 4 * BS)
    await fs.release(fh)
    fh, b = await fs.create(R, b"b", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"B" * 4 * BS)
    await fs.release(fh)
    fh, fill = await fs.create(R, b"fill", 0o644, os.O_RDWR)
    off = 0
    while fs.balloc.available:
        try:
            off += await fs.write(fh, off, b"x" * min(64 * BS, fs.balloc.available * BS))
        except FsError:
            break
    await fs.release(fh)
    for i in range(64):                     # the last few blocks, one file each
        try:
            fh, _ = await fs.create(R, b"last%d" % i, 0o644, os.O_RDWR)
            await fs.write(fh, 0, b"y" * BS)
            await fs.release(fh)
        except FsError:
            break
    left = fs.balloc.free
    sb = fs.sb
    await fs.unmount()
    assert left < 4         # operations keep a few blocks in reserve
    # b's one extent now runs over a's blocks, its own and fill's first ones: more blocks
    # claimed twice than there are free ones (its own four among them)
    assert b.ext_pblk[0] == a.ext_pblk[0] + 4 and fill.ext_pblk[0] == b.ext_pblk[0] + 4
    rewrite_inode(dev, sb, b.ino, ext_pblk=[a.ext_pblk[0]], ext_len=[16], size=16 * BS)
    msgs = await repaired(dev)
    # the lower inode number keeps a block, the later claimant gets a copy or a hole
    assert any(f"inode {b.ino}: 4 block(s) also claimed by inode {a.ino}; cloned {left}, "
               f"cut {4 - left} (no free block to clone into)" in m for m in msgs), msgs
    assert any(f"inode {fill.ino}: 8 block(s) also claimed by inode {b.ino}; cut 8 (no "
               "free block to clone into)" in m for m in msgs), msgs
    assert await read_path(dev, b"a") == b"A" * 4 * BS
    data = await read_path(dev, b"b")
    assert data[:4 * BS] == b"A" * left * BS + bytes((4 - left) * BS)


async def test_blocks_beyond_the_size_are_cut():
    dev, w = await populated()
    rewrite_inode(dev, w["sb"], w["file_ino"], size=5000)
    msgs = await repaired(dev)
    assert any("beyond its size 5000" in m for m in msgs), msgs
    assert await read_path(dev, b"dir/file") == b"F" * 5000


async def test_a_new_journal_header_never_replays_old_transactions():
    """The journal of a cleanly unmounted filesystem still holds its old transactions: a
    header written again from sequence 1 would replay them over newer blocks."""
    dev = await make_dev(8 * MiB)
    fs = await Filesystem.mount(dev)
    for i in range(5):
        fh, _ = await fs.create(R, b"f%d" % i, 0o644, os.O_RDWR)
        await fs.write(fh, 0, b"%d" % i * 100)
        await fs.release(fh)
        await fs.sync()
    await fs.unlink(R, b"f0")
    sb = fs.sb
    await fs.unmount()
    poke(dev, sb.journal_start * BS, bytes(BS))
    msgs = await repaired(dev)
    assert not any("replay" in m for m in msgs), msgs
    fs = await Filesystem.mount(dev, read_only=True)
    assert await fs.listdir(R) == [b"lost+found", b"f1", b"f2", b"f3", b"f4"]


async def test_superblock_from_the_last_backup_when_the_first_two_are_gone():
    dev, w = await populated()
    poke(dev, 0, bytes(BS))
    poke(dev, BS, bytes(BS))
    msgs = await repaired(dev)
    assert any("using the backup at block" in m for m in msgs), msgs
    assert await read_path(dev, b"dir/file") == b"F" * 20000


async def test_a_damaged_root_inode_is_made_again_and_nothing_is_lost():
    dev, w = await populated()
    poke(dev, inode_off(w["sb"], R), bytes(fmt.INODE_SIZE))
    msgs = await repaired(dev)
    assert any("making a new root" in m for m in msgs), msgs
    fs = await Filesystem.mount(dev, read_only=True)
    assert b"lost+found" in await fs.listdir(R)
    # the root's old entries are gone with it; what they named is in lost+found
    assert await read_path(dev, b"lost+found/#%d/file" % w["dir_ino"]) == b"F" * 20000


async def test_a_listing_goes_on_past_a_damaged_child():
    """A child inode that fails verification is left out of its directory's listing
    (logged, the filesystem read-only) instead of ending it."""
    dev, w = await populated()
    _flip(dev, inode_off(w["sb"], w["frag_ino"]) + 60)
    fs = await Filesystem.mount(dev, read_only=True)
    names = await fs.listdir(R)
    assert b"frag" not in names and {b"dir", b"hard", b"sym"} <= set(names)


async def test_mount_goes_read_only_on_an_inode_in_use_marked_free(caplog):
    dev, w = await populated()
    _clear_bit(dev, w["sb"].ibitmap_start, w["frag_ino"])
    fs = await Filesystem.mount(dev)
    assert fs.read_only
    assert "in use are marked free" in caplog.text


async def test_a_sealed_slot_that_does_not_decode_is_cleared_even_when_marked_free():
    """The allocator refuses a slot sealed as this filesystem's with a mode (it could be an
    inode in use), so fsck must not leave one behind, whatever the bitmap says."""
    dev, w = await populated()
    sb = w["sb"]
    fs = await Filesystem.mount(dev, read_only=True)
    ino = fs.ialloc.bitmap.find_free(1, sb.total_inodes)   # the next inode a create takes
    raw = bytearray(fmt.INODE_SIZE)
    fmt.INODE_FMT.pack_into(raw, fmt.INODE_FIXED_OFF, 0o100644, 0, 0, 1, 0, 0, 0, 0, 0,
                            2 * 10**9, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0)
    poke(dev, inode_off(sb, ino), fmt.seal_inode(raw, ino, sb.uuid))   # nsec out of range
    await repaired(dev)
    fs = await Filesystem.mount(dev)
    fh, f = await fs.create(R, b"new", 0o644, os.O_RDWR)
    await fs.release(fh)
    assert f.ino == ino and not fs.read_only
    await fs.unmount()
