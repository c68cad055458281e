"""Transactions and commit: what the running transaction holds, and how it reaches the device.

Operations mutate cached objects and record what they dirtied here (inodes, directory
blocks, xattr blocks, bitmap blocks, the superblock); ``_commit`` turns the dirty objects
into one journal transaction (journal.py), then writes the images home (checkpoint).

Durability rules kept here: file data is written to the device before the commit whose
metadata makes it reachable (the commit's PREFLUSH makes both durable in that order); fsync
and fdatasync commit the running transaction (a group commit: it carries every change since
the last one) or, when no metadata is dirty, flush the device cache; O_SYNC/O_DSYNC writes
do the same before returning.
"""
import errno
import logging
import time

from . import format as fmt
from .errors import FsError
from .inode import Inode
from .icache import _free_slot
from .journal import write_blocks

log = logging.getLogger(__name__)

BS = fmt.BLOCK_SIZE
OP_MAX_BLOCKS = 16          # metadata blocks one ordinary operation can dirty, at most


class Transactions:
    def _dirty(self, inode: Inode) -> None:
        inode.dirty = True
        self.dirty_inodes[inode.ino] = inode
        self.data_meta_dirty = True

    def _dirty_times(self, inode: Inode) -> None:
        """Only timestamps changed: fdatasync need not commit for this (as on Linux)."""
        inode.dirty = True
        self.dirty_inodes[inode.ino] = inode

    def _touch(self, inode: Inode, *, mtime: bool = False, ctime: bool = True) -> None:
        now = time.time_ns()
        if mtime:
            inode.mtime_ns = now
        if ctime or mtime:
            inode.ctime_ns = now
        self._dirty(inode)

    def _pending_blocks(self) -> int:
        n = len(self.dirty_inodes) + len(self.balloc.bitmap.dirty_blocks) + \
            len(self.ialloc.bitmap.dirty_blocks) + len(self.dirty_xattrs) + 1
        for inode in self.dirty_dirs:
            n += len(inode.dir.dirty)
        for inode in self.dirty_inodes.values():
            if inode.extents_dirty:
                n += len(inode.chain)
        return n

    @property
    def has_dirty(self) -> bool:
        return bool(self.dirty_inodes or self.dirty_dirs or self.dirty_xattrs or self.sb_dirty
                    or self.balloc.bitmap.dirty_blocks or self.ialloc.bitmap.dirty_blocks)

    async def _maybe_commit(self) -> None:
        """Commit once the transaction nears a quarter of the journal. Counting its blocks
        costs O(dirty objects), so it is only counted when enough operations have passed to
        possibly reach the threshold (an operation dirties at most ~OP_MAX_BLOCKS blocks)."""
        self._ops_to_check -= 1
        if self._ops_to_check > 0:
            return
        n = self._pending_blocks()
        if n >= self.commit_threshold:
            await self._commit()
            n = 0
        self._ops_to_check = max(1, (self.commit_threshold - n) // OP_MAX_BLOCKS)

    async def _commit(self) -> bool:
        """Write the running transaction to the journal, then home. Lock held."""
        if not self.has_dirty:
            return False
        self.committing = True
        try:
            return await self._commit_locked()
        except OSError as e:
            # the running transaction cannot reach the device: what is on it stays
            # consistent (the journal makes commits atomic), but the cached state no longer
            # matches it, so stop writing (ext4's errors=remount-ro)
            log.error("%s: commit failed (%s); the filesystem is now read-only", self.dev.name, e)
            self.read_only = True
            raise FsError(errno.EIO, f"commit failed: {e.strerror or e}") from None
        finally:
            self.committing = False

    async def _commit_locked(self) -> bool:
        images: dict[int, bytes] = {}
        sb = self.sb
        for inode in self.dirty_inodes.values():
            if inode.extents_dirty:
                n = len(inode.ext_lblk)
                if n > fmt.INLINE_EXTENTS:
                    per = fmt.EXTENTS_PER_BLOCK
                    for k, blk in enumerate(inode.chain):
                        part = [(inode.ext_lblk[i], inode.ext_len[i], inode.ext_pblk[i])
                                for i in range(k * per, min(n, (k + 1) * per))]
                        nxt = inode.chain[k + 1] if k + 1 < len(inode.chain) else 0
                        images[blk] = fmt.pack_extent_block(part, nxt)
                inode.extents_dirty = False
            inode.dirty = False
            blk = sb.itable_start + inode.ino // fmt.INODES_PER_BLOCK
            buf = await self._itable_block(blk)
            off = (inode.ino % fmt.INODES_PER_BLOCK) * fmt.INODE_SIZE
            buf[off:off + fmt.INODE_SIZE] = inode.pack() if inode.mode else \
                _free_slot(inode.generation)
            images[blk] = bytes(buf)
        for inode in self.dirty_dirs:
            d = inode.dir
            if inode.mode and d is not None:
                for bi in d.dirty:
                    pblk, _ = inode.map(bi)
                    images[pblk] = bytes(d.blocks[bi])
                d.dirty.clear()
        for inode in self.dirty_xattrs:
            if inode.mode and inode.xattr_block:
                images[inode.xattr_block] = fmt.pack_xattrs(inode.xattrs)
        for bmap, start in ((self.balloc.bitmap, sb.bbitmap_start),
                            (self.ialloc.bitmap, sb.ibitmap_start)):
            for i in bmap.dirty_blocks:
                images[start + i] = bytes(bmap.data[i * BS:(i + 1) * BS])
            bmap.dirty_blocks.clear()
        sb.free_blocks, sb.free_inodes = self.balloc.free, self.ialloc.free
        images[0] = sb.pack()
        self.dirty_inodes.clear()
        self.dirty_dirs.clear()
        self.dirty_xattrs.clear()
        self.sb_dirty = False
        self.data_meta_dirty = False
        if not self.journal.fits(len(images)):
            await self.journal.reset()
            self.balloc.release_pending()
        await self.journal.commit(images)
        await self._checkpoint(images)
        return True

    async def _checkpoint(self, images: dict[int, bytes]) -> None:
        """Write committed images home, merging neighbours into one write."""
        homes = sorted(images)
        i = 0
        while i < len(homes):
            j = i
            while j + 1 < len(homes) and homes[j + 1] == homes[j] + 1:
                j += 1
            await write_blocks(self.dev, homes[i], b"".join(images[h] for h in homes[i:j + 1]))
            i = j + 1

    async def commit(self) -> bool:
        """Commit the running transaction now (periodic commit, syncfs)."""
        if self.read_only:
            return False
        async with self.lock:
            return await self._commit()

    async def sync(self) -> None:
        """Everything done so far is durable on return (syncfs / sync)."""
        if self.read_only:
            return
        async with self.lock:
            if not await self._commit():
                await self.dev.flush()

    async def _reserve(self, nblocks: int, ninodes: int = 0) -> None:
        """Fail with ENOSPC before changing anything, so an operation is all or nothing.
        Blocks freed by the running transaction become usable once it is committed and
        the journal reset, so try that before giving up."""
        if self.balloc.available < nblocks and self.balloc.pending_count:
            await self._commit()
            await self.journal.reset()
            self.balloc.release_pending()
        if self.balloc.available < nblocks:
            raise FsError(errno.ENOSPC, "no space left on device")
        if self.ialloc.free < ninodes:
            raise FsError(errno.ENOSPC, "no free inodes left on device")

    async def fsync(self, fh: int, datasync: bool = False) -> None:
        """Make the file's data and the metadata needed to reach it durable. The running
        transaction is committed as a whole (group commit), so a following fsync of another
        file usually finds nothing left to do but a cache flush."""
        if self.read_only:
            return
        self._alive()
        async with self.lock:
            await self._sync_locked(datasync)

    async def _sync_locked(self, datasync: bool) -> None:
        """fdatasync skips the commit when only timestamps are dirty (Linux does the same);
        the data itself is made durable by the device flush either way."""
        if datasync and not self.data_meta_dirty:
            await self.dev.flush()
        elif not await self._commit():
            await self.dev.flush()

    async def fsyncdir(self, ino: int, datasync: bool = False) -> None:
        """A directory's entries are metadata: the same group commit covers them."""
        if self.read_only:
            return
        async with self.lock:
            await self._sync_locked(datasync=False)
