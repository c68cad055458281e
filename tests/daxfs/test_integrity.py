"""Format version 2 in use: damaged metadata is detected at mount and at read and never
trusted (the filesystem goes read-only, the error logged), a backup superblock stands in
for a damaged primary, version-1 images are refused, fast commits are replayed."""
import logging
import os
import struct

import pytest

from daxfs import format as fmt
from daxfs.errors import CorruptError, FsError
from daxfs.fs import Filesystem
from daxfs.fsck import EXIT_FIXED, EXIT_OK, EXIT_OPERATIONAL, check

from .conftest import MiB, make_dev

R = fmt.ROOT_INO
BS = fmt.BLOCK_SIZE


def flip(dev, off):
    b = bytes([dev.view[off] ^ 0x20])
    dev.view[off:off + 1] = b
    dev.media[off:off + 1] = b


async def with_file():
    dev = await make_dev(16 * MiB)
    fs = await Filesystem.mount(dev)
    d = await fs.mkdir(R, b"d")
    fh, f = await fs.create(d.ino, b"f", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"x" * 9000)
    await fs.release(fh)
    where = dict(sb=fs.sb, dir_block=d.map(0)[0], ino=f.ino, dino=d.ino)
    await fs.unmount()
    return dev, where


async def test_version_1_image_refused_with_the_way_out():
    dev, _ = await with_file()
    v1 = bytearray(BS)
    v1[:8] = fmt.SB_MAGIC
    struct.pack_into("<II", v1, 8, 1, 4096)          # version 1's layout: version, block size
    dev.view[:BS] = v1
    dev.media[:BS] = v1
    before = bytes(dev.media)
    with pytest.raises(fmt.VersionError, match="version 1 is not supported.*mkfs.daxfs"):
        await Filesystem.mount(dev)
    msgs = []
    code, _ = await check(dev, repair=True, out=msgs.append)
    assert code == EXIT_OPERATIONAL and "version 1" in msgs[0]
    assert bytes(dev.media) == before                 # nothing written


async def test_checksum_mismatch_at_read_turns_read_only_and_logs(caplog):
    dev, w = await with_file()
    flip(dev, w["dir_block"] * BS + 200)              # a name inside the directory block
    fs = await Filesystem.mount(dev)
    assert not fs.read_only                            # the directory is not read yet
    with caplog.at_level(logging.ERROR):
        with pytest.raises(CorruptError, match="checksum mismatch"):
            await fs.lookup(w["dino"], b"f")
    assert fs.read_only
    assert "checksum mismatch" in caplog.text and "read-only" in caplog.text
    with pytest.raises(FsError) as e:
        await fs.mkdir(R, b"new")
    assert e.value.errno == 30                        # EROFS
    # what was fine stays readable
    assert (await fs.lookup(R, b"d")).ino == w["dino"]


async def test_checksum_mismatch_at_mount_is_refused_or_read_only(caplog):
    dev, w = await with_file()
    sb = w["sb"]
    flip(dev, sb.bbitmap_start * BS + 300)           # the block bitmap, read at mount
    with pytest.raises(CorruptError, match="block bitmap block .*checksum"):
        await Filesystem.mount(dev)
    dev, w = await with_file()
    bi, off = fmt.inode_location(R)
    flip(dev, (sb.itable_start + bi) * BS + off + 40)  # the root inode
    with caplog.at_level(logging.ERROR):
        with pytest.raises(CorruptError, match="inode 1: checksum"):
            await Filesystem.mount(dev)
    assert "inode 1: checksum mismatch" in caplog.text


async def test_block_from_elsewhere_is_not_trusted():
    """A directory block copied to another place verifies as a block, but not there."""
    dev, w = await with_file()
    fs = await Filesystem.mount(dev)
    root = await fs.getattr(R)
    src, dst = w["dir_block"], root.map(0)[0]
    await fs.unmount()
    dev.view[dst * BS:(dst + 1) * BS] = dev.view[src * BS:(src + 1) * BS]
    dev.media[dst * BS:(dst + 1) * BS] = dev.media[src * BS:(src + 1) * BS]
    fs = await Filesystem.mount(dev)
    with pytest.raises(CorruptError, match=f"directory block {dst}: says it is block {src}"):
        await fs.lookup(R, b"d")
    assert fs.read_only


async def test_backup_superblock_used_when_primary_damaged(caplog):
    dev, w = await with_file()
    flip(dev, 100)
    with caplog.at_level(logging.ERROR):
        fs = await Filesystem.mount(dev)
    assert fs.read_only and "using the backup at block 1" in caplog.text
    f = await fs.lookup(w["dino"], b"f")
    fh = await fs.open(f.ino, os.O_RDONLY)
    assert await fs.read(fh, 0, 9000) == b"x" * 9000
    await fs.release(fh)
    # the first backup damaged too: the one at the end of the device
    flip(dev, BS + 100)
    fs = await Filesystem.mount(dev)
    assert fs.read_only and fs.sb.uuid == w["sb"].uuid
    msgs = []
    code, _ = await check(dev, repair=True, out=msgs.append)
    assert code == EXIT_FIXED, msgs
    assert (await check(dev))[0] == EXIT_OK
    fs = await Filesystem.mount(dev)
    assert not fs.read_only
    await fs.unmount()


async def test_bitmap_that_frees_a_used_block_is_never_trusted(caplog):
    """A block bitmap that verifies but marks a file's block free (a bug, or damage with a
    valid checksum) is caught at mount: the block is never handed out again."""
    dev, w = await with_file()
    sb = w["sb"]
    fs = await Filesystem.mount(dev)
    f = await fs.iget(w["ino"])
    pblk = f.ext_pblk[0]
    await fs.unmount()
    blk = sb.bbitmap_start + pblk // fmt.BITMAP_BITS
    bit = pblk % fmt.BITMAP_BITS
    buf = bytearray(dev.view[blk * BS:(blk + 1) * BS])
    buf[fmt.HDR_SIZE + bit // 8] &= ~(1 << (bit % 8)) & 0xFF
    buf = fmt.seal(buf, blk, sb.uuid)
    dev.view[blk * BS:(blk + 1) * BS] = buf
    dev.media[blk * BS:(blk + 1) * BS] = buf
    with caplog.at_level(logging.ERROR):
        fs = await Filesystem.mount(dev)
    assert fs.read_only and f"block {pblk} of inode {w['ino']}" in caplog.text
    assert fs.balloc.busy.test(pblk)


async def test_fast_commit_replayed_after_power_failure():
    """fsync of an existing file: one record, no journal commit; after a power failure
    the record is replayed (and fsck, before the mount, replays it in memory)."""
    dev, w = await with_file()
    fs = await Filesystem.mount(dev)
    f = await fs.lookup(w["dino"], b"f")
    fh = await fs.open(f.ino, os.O_RDWR)
    commits = fs.journal.commits
    await fs.write(fh, 9000, b"y" * 20000)
    await fs.fsync(fh)
    assert fs.journal.commits == commits and fs.fc.records == 1
    dev.power_fail()
    msgs = []
    assert (await check(dev, out=msgs.append))[0] == EXIT_OK, msgs
    assert any("fast-commit area holds 1 inode record" in m for m in msgs)
    fs = await Filesystem.mount(dev)
    f = await fs.lookup(w["dino"], b"f")
    fh = await fs.open(f.ino, os.O_RDONLY)
    assert await fs.read(fh, 0, 40000) == b"x" * 9000 + b"y" * 20000
    await fs.release(fh)
    await fs.unmount()
    assert (await check(dev))[0] == EXIT_OK


async def test_any_exception_in_a_commit_turns_read_only_and_reads_go_on(caplog):
    """Not only OSError: whatever fails inside a commit turns the filesystem read-only
    with the error logged, and what was committed before stays readable."""
    dev, w = await with_file()
    fs = await Filesystem.mount(dev)
    await fs.mkdir(R, b"uncommitted")

    async def broken(images):
        raise RuntimeError("injected")
    fs.journal.commit = broken
    with caplog.at_level(logging.ERROR):
        with pytest.raises(FsError) as e:
            await fs.commit()
    assert e.value.errno == 5 and fs.read_only
    assert "commit failed" in caplog.text and "injected" in caplog.text
    f = await fs.lookup(w["dino"], b"f")
    fh = await fs.open(f.ino, os.O_RDONLY)
    assert await fs.read(fh, 0, 9000) == b"x" * 9000
    with pytest.raises(FsError) as e:
        await fs.mkdir(R, b"more")
    assert e.value.errno == 30
