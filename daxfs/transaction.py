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
        inode.dirty = inode.fc_dirty = inode.fc_meta = True
        self.dirty_inodes[inode.ino] = inode
        self.data_meta_dirty = True

    @staticmethod
    def _fc_ineligible(inode: Inode) -> None:
        """The inode changed in a way a fast-commit record cannot carry (its names, link
        count, parent, xattrs, orphan list, or it is new): its next fsync commits in full."""
        inode.fc_ineligible = True

    def _dirty_times(self, inode: Inode) -> None:
        """Only timestamps changed: fdatasync need not commit for this (as on Linux)."""
        inode.dirty = inode.fc_dirty = True
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
        except Exception as e:
            # the running transaction cannot reach the device (or could not be encoded):
            # what is on it stays consistent (the journal makes commits atomic), but the
            # cached state no longer matches it, so stop writing (ext4's errors=remount-ro)
            # and keep serving reads; never let it take the daemon down
            if isinstance(e, OSError):
                log.error("%s: commit failed (%s); the filesystem is now read-only",
                          self.dev.name, e)
            else:
                log.exception("%s: commit failed; the filesystem is now read-only",
                              self.dev.name)
            self.read_only = True
            raise FsError(errno.EIO, f"commit failed: {getattr(e, 'strerror', None) or e}") \
                from None
        finally:
            self.committing = False

    async def _commit_locked(self) -> bool:
        images: dict[int, bytes] = {}
        sb = self.sb
        uuid = sb.uuid
        lsn = self.journal.seq
        for inode in self.dirty_inodes.values():
            if inode.extents_dirty:
                n = len(inode.ext_lblk)
                if n > fmt.INLINE_EXTENTS:
                    per = fmt.EXTENTS_PER_BLOCK
                    for k, blk in enumerate(inode.chain):
                        part = [(inode.ext_lblk[i], inode.ext_len[i], inode.ext_pblk[i])
                                for i in range(k * per, min(n, (k + 1) * per))]
                        nxt = inode.chain[k + 1] if k + 1 < len(inode.chain) else 0
                        images[blk] = fmt.seal(fmt.pack_extent_block(part, nxt, inode.ino),
                                               blk, uuid, lsn)
                inode.extents_dirty = False
            inode.dirty = inode.fc_dirty = inode.fc_meta = inode.fc_ineligible = False
            inode.fc_ranges = None
            bi, off = fmt.inode_location(inode.ino)
            blk = sb.itable_start + bi
            buf = await self._itable_block(blk)
            buf[off:off + fmt.INODE_SIZE] = inode.pack(uuid) if inode.mode else \
                _free_slot(inode.ino, inode.generation, uuid)
            images[blk] = bytes(buf)
        for inode in self.dirty_dirs:
            d = inode.dir
            if inode.mode and d is not None:
                for bi in d.dirty:
                    pblk, _ = inode.map(bi)
                    images[pblk] = fmt.seal(d.blocks[bi], pblk, uuid, lsn)
                d.dirty.clear()
        for inode in self.dirty_xattrs:
            if inode.mode and inode.xattr_block:
                blk = inode.xattr_block
                images[blk] = fmt.seal(fmt.pack_xattrs(inode.xattrs), blk, uuid, lsn)
        for bmap, start, kind in ((self.balloc.bitmap, sb.bbitmap_start, "block bitmap"),
                                  (self.ialloc.bitmap, sb.ibitmap_start, "inode bitmap")):
            for i in bmap.dirty_blocks:
                images[start + i] = fmt.seal(fmt.pack_bitmap_block(bmap.data, i, kind),
                                             start + i, uuid, lsn)
            bmap.dirty_blocks.clear()
        sb.free_blocks, sb.free_inodes = self.balloc.free, self.ialloc.free
        images[0] = sb.pack(0, lsn)
        if self.geometry_dirty:
            # a resize: the first backup carries the geometry too, in the same transaction
            images[1] = sb.pack(1, lsn)
            self.geometry_dirty = False
        self.dirty_inodes.clear()
        self.dirty_dirs.clear()
        self.dirty_xattrs.clear()
        self.sb_dirty = False
        self.data_meta_dirty = False
        if not self.journal.fits(len(images)):
            await self.journal.reset()
            self.balloc.release_pending()
        await self.journal.commit(images)
        # every fast-commit record is now stale (their lsn is this commit's sequence)
        self.fc.reset()
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
        """Make the file's data and the metadata needed to reach it durable: one fast-commit
        record when the file's changes fit one (fastcommit.py), else a full commit of the
        running transaction (a group commit: it carries every change since the last one)."""
        if self.read_only:
            return
        self._alive()
        inode = self.handle(fh).inode
        async with self.lock:
            await self._sync_inode(inode, datasync)

    async def _sync_inode(self, inode: Inode, datasync: bool) -> None:
        """fdatasync skips the metadata when only timestamps changed (Linux does the same);
        the data itself is made durable by the device flush either way."""
        if not inode.fc_dirty or (datasync and not inode.fc_meta):
            await self.dev.flush()
            return
        if not inode.fc_ineligible and inode.is_reg and inode.mode and \
                await self.fc.append(inode, self.journal.seq):
            inode.fc_dirty = inode.fc_meta = False
            inode.fc_ranges = None
            return
        await self._sync_locked(datasync=False)

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
