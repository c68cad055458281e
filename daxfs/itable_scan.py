"""The inode table read slot by slot (fsck's pass 1 and the mount), and at mount: inodes in
use that the inode bitmap calls free.

The block-bitmap cross-check (icache.py) reads every inode the inode bitmap marks in use.
An inode whose bitmap bit is wrongly clear escapes it, and with it the blocks it holds: were
their block-bitmap bits clear too, the allocator could hand them to a new file. So the rest
of the inode table is scanned as well. Only slots the bitmap calls free and whose mode is
not zero are decoded (a freed slot is sealed with mode 0, a slot never written is zero), so
on an undamaged filesystem this costs one read of the table. An inode found in use there is
damage: its blocks are made unallocatable and the filesystem goes read-only with the error
logged, as for any metadata that fails verification; fsck.daxfs keeps the inode and mends
the bitmap.
"""
from . import format as fmt
from .errors import CorruptError
from .inode import Inode

BS = fmt.BLOCK_SIZE
CHUNK = 64                      # inode-table blocks per read
_ZERO = bytes(BS)
_MODE = slice(fmt.INODE_FIXED_OFF, fmt.INODE_FIXED_OFF + 4)
_FREE_MODE = bytes(4)


async def check_unmarked_inodes(fs) -> None:
    sb = fs.sb
    imap = fs.ialloc.bitmap
    found = []
    async for ino, raw in inode_slots(fs._read_meta, sb):
        if imap.test(ino) or raw[_MODE] == _FREE_MODE:
            continue
        try:
            inode = Inode.unpack(ino, raw, sb.uuid)
        except CorruptError:
            continue                    # not an inode of this filesystem: never read
        found.append(ino)
        for _, ln, pblk in inode.extents():
            if sb.data_start <= pblk and pblk + ln < sb.total_blocks:
                fs.balloc.busy.set_run(pblk, ln, True)
        if inode.xattr_block and inode.xattr_block < sb.total_blocks:
            fs.balloc.busy.set_run(inode.xattr_block, 1, True)
        if inode.extent_block and inode.extent_block < sb.total_blocks:
            # its chain is not followed: with the filesystem read-only from here on
            # nothing is allocated, so the blocks the chain maps are safe as well
            fs.balloc.busy.set_run(inode.extent_block, 1, True)
    if found:
        fs._meta_error(CorruptError(
            f"inode bitmap: {len(found)} inode(s) in use are marked free (inode "
            f"{found[0]}, ...)"))


async def inode_slots(read, sb):
    """(ino, slot bytes) of every inode number of the table, in order, read CHUNK blocks
    at a time with ``read(blk, n)``; blocks never written (all zero, most of a young
    table) are skipped whole."""
    for first in range(0, sb.itable_blocks, CHUNK):
        n = min(CHUNK, sb.itable_blocks - first)
        data = await read(sb.itable_start + first, n)
        for bi in range(n):
            blk = data[bi * BS:(bi + 1) * BS]
            if blk == _ZERO:
                continue
            base = (first + bi) * fmt.INODES_PER_BLOCK
            for slot in range(fmt.INODES_PER_BLOCK):
                ino = base + slot
                if 0 < ino < sb.total_inodes:
                    yield ino, blk[slot * fmt.INODE_SIZE:(slot + 1) * fmt.INODE_SIZE]
