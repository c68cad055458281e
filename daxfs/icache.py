"""The inode cache: inodes loaded from the inode table, created, freed, and remembered.

Inodes are decoded once (with their extent chain) and kept by number while they are in use;
the inode-table blocks they live in are kept in a bounded LRU, so a commit can patch a dirty
inode into its block without reading it again. An inode with no name left lives on the
orphan list until nothing (an open handle, a kernel lookup reference) uses it any more, as
ext4's orphan list does, so a crash frees it at the next mount.
"""
import errno
import stat
import struct
import time

from . import format as fmt
from .cred import Ctx
from .directory import Directory
from .errors import CorruptError, FsError
from .inode import Inode

ITABLE_CACHE = 2048         # inode-table blocks kept (8 MiB, 32k inodes)
# Decoded inodes kept (about 1 KiB each in Python): beyond this, the least recently used
# that nothing pins are evicted. A kernel lookup reference does not pin an inode: its count
# stays in ``lookups`` and the inode is read again from the table on its next use (its
# number is the FUSE nodeid), so the kernel's dentry cache of a 100,000-file directory does
# not become the daemon's memory.
INODE_CACHE = 32768


class InodeCache:
    _shrink_at = INODE_CACHE    # cache size at which the next eviction pass runs

    def cached_inode(self, ino: int) -> Inode | None:
        """iget's cache hit, without a coroutine: None when ino is not cached."""
        inode = self.inodes.pop(ino, None)
        if inode is not None:
            self.inodes[ino] = inode        # most recently used last
        return inode

    async def iget(self, ino: int) -> Inode:
        inode = self.cached_inode(ino)
        if inode is not None:
            if len(self.inodes) > self._shrink_at and self.track_lookups:
                self._shrink()              # grown by creates, which add without iget
            return inode
        if not 0 < ino < self.sb.total_inodes or not self.ialloc.bitmap.test(ino):
            raise FsError(errno.ENOENT, f"inode {ino} does not exist")
        # an evicted inode an operation still changed is the one to keep, not a re-read
        inode = self.dirty_inodes.get(ino) or await self._read_inode(ino)
        inode = self.inodes.setdefault(ino, inode)      # another task may have read it too
        if len(self.inodes) > self._shrink_at and self.track_lookups:
            self._shrink()
        return inode

    def _evictable(self, inode: Inode) -> bool:
        """Nothing pins it: no open handle, nothing uncommitted (a commit writes a dirty
        inode, after which it may go), not an orphan, no in-core state (the synchronous
        mode, a held inode lock) that re-reading would lose. Kernel lookup references do
        not pin it (see INODE_CACHE)."""
        ino = inode.ino
        return not (inode.dirty or self.opens.get(ino)
                    or ino == self.sb.root_ino or ino in self.orphans or inode.sync_mode
                    or (inode.ilock is not None and inode.ilock.locked())
                    or inode in self.dirty_dirs or inode in self.dirty_xattrs
                    or inode.ino in self.dirty_inodes) and self.track_lookups

    def _shrink(self) -> None:
        """Evict the least recently used inodes nothing pins, down to 7/8 of the bound.
        Inodes an operation in progress holds were used last, so they are never reached.
        When too much is pinned to get there, the next pass waits until the cache has grown
        by another eighth, so iget stays O(1) amortised."""
        want = len(self.inodes) - INODE_CACHE + INODE_CACHE // 8
        gone = []
        for ino, inode in self.inodes.items():
            if len(gone) >= want:
                break
            if self._evictable(inode):
                gone.append(ino)
        for ino in gone:
            del self.inodes[ino]
        self._shrink_at = max(INODE_CACHE, len(self.inodes) + INODE_CACHE // 8)

    async def _read_inode(self, ino: int) -> Inode:
        """Decode and verify an inode and its extent chain; damage turns the filesystem
        read-only (never trusted) and raises EUCLEAN."""
        bi, off = fmt.inode_location(ino)
        buf = await self._itable_block(self.sb.itable_start + bi)
        raw = buf[off:off + fmt.INODE_SIZE]
        try:
            inode = Inode.unpack(ino, raw, self.sb.uuid)
            n = inode.nextents_on_disk(raw)
            if n > fmt.INLINE_EXTENTS:
                await inode.load_chain(n, self.sb, self._read_meta)
            self._check_extents(inode)
        except CorruptError as e:
            self._meta_error(e)
            raise
        return inode

    def _check_extents(self, inode: Inode) -> None:
        prev_end = 0
        last = self.sb.total_blocks - 1         # the second backup superblock
        for lblk, ln, pblk in inode.extents():
            if ln < 1 or lblk < prev_end or lblk + ln > fmt.MAX_FILE_BLOCKS or \
                    pblk < self.sb.data_start or pblk + ln > last:
                raise CorruptError(f"inode {inode.ino}: bad extent ({lblk}, {ln}, {pblk})")
            prev_end = lblk + ln

    async def _crosscheck_bitmaps(self) -> None:
        """Allocation must never hand out a block an inode holds: read every inode in use
        (only the inode-table blocks that hold them) and check that the block bitmap marks
        each block they hold as used. A block held but marked free is damage: it is made
        unallocatable, and the filesystem goes read-only with the error logged."""
        sb = self.sb
        imap, bmap = self.ialloc.bitmap, self.balloc.bitmap
        bad = []
        data = imap.data
        for byte_i in range((sb.total_inodes + 7) // 8):
            v = data[byte_i]
            if not v:
                continue
            for k in range(8):
                ino = byte_i * 8 + k
                if not v & (1 << k) or ino == 0 or ino >= sb.total_inodes:
                    continue
                try:
                    inode = self.inodes.get(ino) or await self._read_inode(ino)
                except CorruptError:
                    # logged, and the filesystem is read-only now (_read_inode): nothing
                    # will be allocated, so the blocks it may hold are safe; the mount goes
                    # on so that the rest can be read and the damage named on access
                    continue
                runs = [(pblk, ln) for _, ln, pblk in inode.extents()]
                runs += [(b, 1) for b in inode.chain]
                if inode.xattr_block:
                    runs.append((inode.xattr_block, 1))
                for pblk, ln in runs:
                    if pblk + ln > sb.total_blocks:
                        bad.append((ino, pblk))
                        continue
                    if bmap.find_free(pblk, pblk + ln) >= 0:     # some bit clear in the run
                        for b in range(pblk, pblk + ln):
                            if not bmap.test(b):
                                bad.append((ino, b))
                                self.balloc.busy.set_run(b, 1, True)
        if bad:
            ino, b = bad[0]
            self._meta_error(CorruptError(
                f"block bitmap: {len(bad)} block(s) held by inodes are marked free (block "
                f"{b} of inode {ino}, ...)"))

    async def _itable_block(self, blk: int) -> bytearray:
        """The block is re-read when it was evicted: the device holds its latest content,
        since a commit writes its images home before it ends, and no block is evicted while
        a commit is running."""
        buf = self.itable.get(blk)
        if buf is None:
            buf = bytearray(await self._read_meta(blk))     # inodes verify one by one
            buf = self.itable.setdefault(blk, buf)
            if len(self.itable) > ITABLE_CACHE and not self.committing:
                self.itable.popitem(last=False)
        else:
            self.itable.move_to_end(blk)
        return buf

    async def _new_inode(self, parent: Inode, mode: int, ctx: Ctx, rdev: int = 0) -> Inode:
        ino = self.ialloc.alloc()
        bi, off = fmt.inode_location(ino)
        buf = await self._itable_block(self.sb.itable_start + bi)
        raw = buf[off:off + fmt.INODE_SIZE]
        freed = self.dirty_inodes.get(ino)
        if freed is not None and not freed.mode:
            generation = freed.generation       # freed in this transaction: slot not yet
        else:
            try:
                ours = fmt.verify_inode(raw, ino, self.sb.uuid)
            except CorruptError:
                ours = False            # a slot of an older filesystem, or damaged: unused
            if ours and struct.unpack_from("<I", raw, fmt.INODE_FIXED_OFF)[0]:
                # the inode bitmap called a slot free that holds an inode in use: never hand
                # it out (the allocator's cross-check of the bitmap against the table)
                self._meta_error(CorruptError(f"inode bitmap: inode {ino} marked free but "
                                              "in use"))
                raise FsError(errno.EROFS, "read-only file system (metadata damaged)")
            generation = _slot_generation(raw) if ours else 0
        inode = Inode(ino)
        inode.generation = (generation + 1) & 0xFFFFFFFF
        inode.mode = mode
        inode.uid = ctx.uid
        inode.gid = ctx.gid
        if parent.mode & stat.S_ISGID:          # BSD group semantics of a setgid directory
            inode.gid = parent.gid
            if stat.S_ISDIR(mode):
                inode.mode |= stat.S_ISGID
        inode.nlink = 2 if stat.S_ISDIR(mode) else 1
        inode.rdev = rdev
        inode.flags = parent.flags & fmt.IFLAG_DAX   # the DAX flag is inherited
        now = time.time_ns()
        inode.atime_ns = inode.mtime_ns = inode.ctime_ns = inode.crtime_ns = now
        if stat.S_ISDIR(mode):
            inode.parent = parent.ino
            inode.dir = Directory([], f"directory {ino}")
        self.inodes[ino] = inode
        self._dirty(inode)
        self._fc_ineligible(inode)
        self.sb_dirty = True
        return inode

    async def _free_inode(self, inode: Inode) -> None:
        """Release an inode and everything it owns (lock held)."""
        if inode.ino in self.orphans:
            self._orphan_remove(inode)
        for lblk, ln, pblk in inode.extents():
            self.balloc.free_run(pblk, ln)
        for blk in inode.chain:
            self.balloc.free_run(blk, 1)
        if inode.xattr_block:
            self.balloc.free_run(inode.xattr_block, 1)
        self.ialloc.release(inode.ino)
        inode.mode = 0
        inode.ext_lblk = inode.ext_len = inode.ext_pblk = inode.chain = ()
        inode.xattr_block = 0
        inode.dir = None
        self._dirty(inode)
        self._fc_ineligible(inode)
        self.dirty_dirs.discard(inode)
        self.dirty_xattrs.discard(inode)
        self.inodes.pop(inode.ino, None)
        self.lookups.pop(inode.ino, None)
        self.sb_dirty = True

    def _orphan_add(self, inode: Inode) -> None:
        inode.orphan_next = self.sb.orphan_head
        self.sb.orphan_head = inode.ino
        self.orphans.insert(0, inode.ino)
        self.sb_dirty = True
        self._dirty(inode)
        self._fc_ineligible(inode)

    def _orphan_remove(self, inode: Inode) -> None:
        i = self.orphans.index(inode.ino)
        if i == 0:
            self.sb.orphan_head = inode.orphan_next
            self.sb_dirty = True
        else:
            prev = self.inodes[self.orphans[i - 1]]
            prev.orphan_next = inode.orphan_next
            self._dirty(prev)
            self._fc_ineligible(prev)
        del self.orphans[i]
        inode.orphan_next = 0
        self._dirty(inode)
        self._fc_ineligible(inode)

    async def _release_if_unused(self, inode: Inode) -> None:
        """An inode with no name left is freed when nothing uses it; until then it stays on
        the orphan list, so a crash frees it at the next mount."""
        if inode.nlink > 0 or not inode.mode:
            return
        busy = self.opens.get(inode.ino, 0) or (self.track_lookups and
                                                self.lookups.get(inode.ino, 0))
        if busy:
            if inode.ino not in self.orphans:
                self._orphan_add(inode)
        else:
            await self._free_inode(inode)

    def remember(self, ino: int) -> None:
        """The kernel now holds one more reference (lookup count) to ino."""
        if self.track_lookups:
            self.lookups[ino] = self.lookups.get(ino, 0) + 1

    async def forget(self, items) -> None:
        """The kernel dropped references: items is [(ino, nlookup), ...]."""
        async with self.lock:
            for ino, n in items:
                left = self.lookups.get(ino, 0) - n
                if left > 0:
                    self.lookups[ino] = left
                    continue
                self.lookups.pop(ino, None)
                inode = self.inodes.get(ino)
                if inode is not None and not self.read_only:
                    await self._release_if_unused(inode)
                if inode is not None and self._evictable(inode):
                    del self.inodes[ino]     # the kernel forgot it: so does the cache

    async def getattr(self, ino: int) -> Inode:
        return await self.iget(ino)
_GEN_OFF = struct.calcsize("<IIIIQqqqqI")     # offset of INODE_FMT's 'generation'


def _free_slot(ino: int, generation: int, uuid: bytes) -> bytes:
    """A free inode slot keeps only its generation, so the next user can bump it; it is
    sealed like any inode, so it verifies as this filesystem's free slot."""
    buf = bytearray(fmt.INODE_SIZE)
    struct.pack_into("<I", buf, fmt.INODE_GEN_OFF, generation)
    return fmt.seal_inode(buf, ino, uuid)


def _slot_generation(raw) -> int:
    return struct.unpack_from("<I", raw, fmt.INODE_GEN_OFF)[0]
