"""Making a new daxfs on a block device (the logic behind mkfs.daxfs)."""
import errno
import logging
import os
import stat
import time
import uuid as uuidlib

from . import format as fmt
from .errors import FsError
from .directory import DT_DIR, Directory, empty_block
from .inode import Inode
from .journal import header_block, write_blocks

log = logging.getLogger(__name__)

# lost+found, where fsck.daxfs puts the inodes it finds with no name, is made by mkfs as
# mke2fs makes it: inode 2 (the first after the root), with blocks preallocated so fsck
# need not allocate to reconnect the first few hundred inodes (mke2fs gives it 16 KiB too)
LOST_FOUND = b"lost+found"
LOST_FOUND_INO = 2
LOST_FOUND_BLOCKS = 4

# Signatures of filesystems and volume labels mkfs must not overwrite without -f:
# (byte offset, magic, name), as blkid knows them.
SIGNATURES = [
    (0, fmt.SB_MAGIC, "daxfs"),
    (1024 + 56, b"\x53\xef", "ext2/ext3/ext4"),
    (0, b"XFSB", "xfs"),
    (0x10040, b"_BHRfS_M", "btrfs"),
    (512, b"LABELONE", "LVM2 physical volume"),
    (4096 - 10, b"SWAPSPACE2", "swap"),
    (0x8001, b"CD001", "iso9660"),
    (3, b"mkfs.fat", "vfat"),
]


async def detect_signature(dev) -> str | None:
    """Name of the filesystem or label already on dev, or None."""
    size = dev.nr_sectors * 512
    head = await dev.read(0, min(size, 0x10048 + 512 - (0x10048 % 512)))
    for off, magic, name in SIGNATURES:
        if head[off:off + len(magic)] == magic:
            return name
    return None


async def mkfs(dev, *, label: str = "", fs_uuid: bytes | None = None,
               total_inodes: int | None = None) -> fmt.Superblock:
    total_blocks = dev.nr_sectors // fmt.BLOCK_SECTORS
    if total_blocks < 512:
        raise FsError(errno.ENOSPC, f"device too small ({total_blocks} blocks of 4 KiB, "
                                    "need at least 512 = 2 MiB)")
    if len(label.encode()) > 63:
        raise FsError(errno.EINVAL, "label longer than 63 bytes")
    geo = fmt.default_geometry(total_blocks)
    if total_inodes:
        geo = fmt.Geometry(total_blocks, max(16, total_inodes + 1), geo.journal_blocks)
    if geo.data_start + 16 > total_blocks:
        raise FsError(errno.ENOSPC, "device too small for the metadata")
    now = time.time_ns()
    fs_uuid = fs_uuid or uuidlib.uuid4().bytes
    # the data area starts with lost+found's blocks, then the root's one block
    lf_blk = geo.data_start
    root_blk = lf_blk + LOST_FOUND_BLOCKS
    nmeta = LOST_FOUND_BLOCKS + 1
    sb = fmt.Superblock(
        uuid=fs_uuid, label=label, total_blocks=total_blocks,
        free_blocks=total_blocks - geo.data_start - 1 - nmeta, total_inodes=geo.total_inodes,
        free_inodes=geo.total_inodes - 3, journal_start=geo.journal_start,
        journal_blocks=geo.journal_blocks, fc_start=geo.fc_start, fc_blocks=geo.fc_blocks,
        bbitmap_start=geo.bbitmap_start,
        bbitmap_blocks=geo.bbitmap_blocks, ibitmap_start=geo.ibitmap_start,
        ibitmap_blocks=geo.ibitmap_blocks, itable_start=geo.itable_start,
        itable_blocks=geo.itable_blocks, data_start=geo.data_start, mkfs_time_ns=now)
    sb.validate()

    # Block bitmap: everything before the data area is in use, and so is the last block
    # (the second backup superblock); so are the bits past the end of the device in the
    # last bitmap block, so the allocator never hands them out.
    bbm = bytearray(geo.bbitmap_blocks * fmt.PAYLOAD)
    _set_bits(bbm, 0, geo.data_start + nmeta)
    _set_bits(bbm, total_blocks - 1, len(bbm) * 8 - total_blocks + 1)
    ibm = bytearray(geo.ibitmap_blocks * fmt.PAYLOAD)
    _set_bits(ibm, 0, 3)                # inode 0 never exists; 1 is the root, 2 lost+found
    _set_bits(ibm, geo.total_inodes, len(ibm) * 8 - geo.total_inodes)

    def directory(ino, mode, nlink, blk, nblocks):
        d = Inode(ino)
        d.mode = stat.S_IFDIR | mode
        d.nlink = nlink
        d.uid, d.gid = os.getuid(), os.getgid()
        d.atime_ns = d.mtime_ns = d.ctime_ns = d.crtime_ns = now
        d.parent = fmt.ROOT_INO
        d.generation = 1
        d.add_extent(0, nblocks, blk)
        d.size = nblocks * fmt.BLOCK_SIZE
        return d

    root = directory(fmt.ROOT_INO, 0o755, 3, root_blk, 1)
    lost = directory(LOST_FOUND_INO, 0o700, 2, lf_blk, LOST_FOUND_BLOCKS)
    itable0 = bytearray(fmt.BLOCK_SIZE)
    for inode in (root, lost):
        _, off = fmt.inode_location(inode.ino)
        itable0[off:off + fmt.INODE_SIZE] = inode.pack(fs_uuid)
    root_dir = Directory([empty_block()])
    root_dir.add(LOST_FOUND, LOST_FOUND_INO, DT_DIR)
    dir_blocks = b"".join(fmt.seal(empty_block(), lf_blk + i, fs_uuid)
                          for i in range(LOST_FOUND_BLOCKS))
    dir_blocks += fmt.seal(root_dir.blocks[0], root_blk, fs_uuid)

    def bitmap(data, start, n, kind):
        return b"".join(fmt.seal(fmt.pack_bitmap_block(data, i, kind), start + i, fs_uuid)
                        for i in range(n))

    # first invalidate any old superblock, so a crash mid-mkfs leaves no half-old filesystem
    await write_blocks(dev, 0, bytes(fmt.BLOCK_SIZE))
    await write_blocks(dev, geo.journal_start,
                       header_block(1, 1, geo.journal_start, fs_uuid))
    # Stale journal and fast-commit blocks of an older filesystem carry its uuid and fail
    # verification; the first descriptor and record are zeroed all the same.
    await write_blocks(dev, geo.journal_start + 1, bytes(fmt.BLOCK_SIZE))
    await write_blocks(dev, geo.fc_start, bytes(fmt.BLOCK_SIZE))
    await write_blocks(dev, geo.bbitmap_start,
                       bitmap(bbm, geo.bbitmap_start, geo.bbitmap_blocks, "block bitmap"))
    await write_blocks(dev, geo.ibitmap_start,
                       bitmap(ibm, geo.ibitmap_start, geo.ibitmap_blocks, "inode bitmap"))
    # the inode table: the root's block; other slots of a reused device may hold inodes of
    # an older filesystem, which carry its uuid and are never trusted (a slot is read only
    # when the inode bitmap says it is in use, and written whole when allocated)
    await write_blocks(dev, geo.itable_start, itable0)
    await write_blocks(dev, lf_blk, dir_blocks)
    # the backups, then the primary last, so an interrupted mkfs leaves no valid-looking
    # filesystem at block 0
    for b in sb.backup_blocks:
        await write_blocks(dev, b, sb.pack(b))
    await dev.flush()
    await write_blocks(dev, 0, sb.pack(), fua=True)
    await dev.flush()
    log.info("made daxfs: %d blocks, %d inodes, journal %d blocks", total_blocks,
             geo.total_inodes, geo.journal_blocks)
    return sb


def _set_bits(buf: bytearray, start: int, n: int) -> None:
    for b in range(start, start + n):
        buf[b >> 3] |= 1 << (b & 7)
