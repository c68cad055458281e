"""Growing and shrinking a daxfs: the logic behind daxfs-resize, offline and online.

A resize changes three things that must change together: the superblock's total_blocks
(with free_blocks), the block bitmap (the blocks between the old and the new end become
free or in use, and the last block, which holds the second backup superblock, moves), and
the backups. They go through the journal as one transaction, so a power failure at any
point leaves either the old filesystem or the new one:

1. the new second backup is written at the new last block and flushed first. Growing, that
   block lies beyond the old filesystem; shrinking, it is a block the old bitmap says is
   free (checked): either way the old filesystem never looks at it.
2. one journal transaction holds the new bitmap blocks, the new primary and the new first
   backup (block 1); its commit is written with PREFLUSH|FUA. Before the commit is durable
   mount and fsck see the old filesystem; after it they replay the new one.
3. the images are checkpointed home as every transaction's are.

Block bitmap space is not added: the layout has the inode bitmap right after the block
bitmap, so a filesystem grows up to what its bitmap blocks cover (32,384 blocks each,
about 126 MiB; mkfs rounds up to whole blocks) and a larger grow is refused with that
limit. Shrinking never moves data: blocks in use beyond the new end refuse the shrink, as
resize2fs refuses when it cannot move them, and the message names the smallest size
possible today.
"""
import errno
import logging

from . import format as fmt
from .errors import FsError
from .journal import write_blocks

log = logging.getLogger(__name__)

MIN_DATA_BLOCKS = 16        # as mkfs: a filesystem keeps at least this much data area


def max_blocks(sb: fmt.Superblock) -> int:
    """The largest size the block bitmap of this filesystem can describe."""
    return sb.bbitmap_blocks * fmt.BITMAP_BITS


def min_blocks(fs) -> int:
    """The smallest size the filesystem can shrink to without moving anything: the blocks
    up to the last one in use, plus the new last block for the backup superblock."""
    sb = fs.sb
    bmap = fs.balloc.busy       # in use, reserved or freed-but-pending: all must stay
    last = sb.data_start - 1
    b = sb.total_blocks - 2
    while b >= sb.data_start:
        if bmap.test(b):
            last = b
            break
        b -= 1
    return max(last + 2, sb.data_start + MIN_DATA_BLOCKS + 1)


def _size(blocks: int) -> str:
    return f"{blocks * fmt.BLOCK_SIZE // 1024}K"


def check_resize(fs, new_blocks: int, dev_blocks: int) -> None:
    """Raise FsError (one line: what is in the way, what to do) unless the filesystem can
    be resized to new_blocks on a device of dev_blocks."""
    sb = fs.sb
    if new_blocks > dev_blocks:
        raise FsError(errno.EINVAL, f"the new size ({new_blocks} blocks) is larger than the "
                                    f"device ({dev_blocks} blocks); grow the device first")
    if new_blocks > max_blocks(sb):
        raise FsError(errno.ENOSPC, f"the block bitmap of this filesystem covers at most "
                                    f"{max_blocks(sb)} blocks ({_size(max_blocks(sb))}); "
                                    "to grow beyond that, copy the files to a new mkfs.daxfs")
    if new_blocks < sb.total_blocks:
        least = min_blocks(fs)
        if new_blocks < least:
            raise FsError(errno.ENOSPC, f"cannot shrink to {new_blocks} blocks: blocks up to "
                                        f"{least - 2} are in use (metadata or files); the "
                                        f"smallest size is {least} blocks "
                                        f"({_size(least)}), or delete files first")


async def resize(fs, new_blocks: int) -> int:
    """Resize a mounted-in-process Filesystem (offline: mounted by daxfs-resize itself;
    online: the FUSE mount's) to new_blocks; return the old size. The caller holds no
    lock; this takes the filesystem's."""
    async with fs.lock:
        fs._alive()
        fs._writable()
        dev_blocks = fs.dev.nr_sectors // fmt.BLOCK_SECTORS
        old = fs.sb.total_blocks
        check_resize(fs, new_blocks, dev_blocks)
        if new_blocks == old:
            return old
        # whatever else is running goes into its own transaction first, so the resize
        # transaction holds only the resize
        await fs._commit()
        balloc = fs.balloc
        if new_blocks > old:
            # the old last block (the old second backup) and everything up to the new last
            # block become free; the new last block and the bits past it stay in use
            changes = [(old - 1, new_blocks - old, False)]
        else:
            changes = [(new_blocks - 1, old - new_blocks, True)]
        for start, n, used in changes:
            balloc.bitmap.set_run(start, n, used)       # records the blocks it dirties
            balloc.busy.set_run(start, n, used)
            balloc.free += -n if used else n
        balloc.total = balloc.bitmap.nbits = balloc.busy.nbits = new_blocks
        if balloc.cursor >= new_blocks - 1:
            balloc.cursor = balloc.data_start
        # 1. the new second backup, durable before anything refers to it (the bitmap and
        # the superblock above changed in memory only)
        sb = fs.sb
        sb.total_blocks = new_blocks
        sb.free_blocks = balloc.free
        await write_blocks(fs.dev, new_blocks - 1, sb.pack(new_blocks - 1), fua=True)
        await fs.dev.flush()
        # 2. one transaction: bitmap blocks, primary and the first backup (block 1)
        fs.sb_dirty = True
        fs.geometry_dirty = True
        await fs._commit()
    log.info("%s: resized from %d to %d blocks", fs.dev.name, old, new_blocks)
    return old
