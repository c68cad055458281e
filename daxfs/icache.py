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


class InodeCache:
    async def iget(self, ino: int) -> Inode:
        inode = self.inodes.get(ino)
        if inode is not None:
            return inode
        if not 0 < ino < self.sb.total_inodes or not self.ialloc.bitmap.test(ino):
            raise FsError(errno.ENOENT, f"inode {ino} does not exist")
        blk = self.sb.itable_start + ino // fmt.INODES_PER_BLOCK
        buf = await self._itable_block(blk)
        off = (ino % fmt.INODES_PER_BLOCK) * fmt.INODE_SIZE
        raw = buf[off:off + fmt.INODE_SIZE]
        inode = Inode.unpack(ino, raw)
        n = inode.nextents_on_disk(raw)
        if n > fmt.INLINE_EXTENTS:
            await inode.load_chain(n, self.sb, self._read_meta)
        self._check_extents(inode)
        self.inodes[ino] = inode
        return inode

    def _check_extents(self, inode: Inode) -> None:
        prev_end = 0
        for lblk, ln, pblk in inode.extents():
            if ln < 1 or lblk < prev_end or lblk + ln > fmt.MAX_FILE_BLOCKS or \
                    pblk < self.sb.data_start or pblk + ln > self.sb.total_blocks:
                raise CorruptError(f"inode {inode.ino}: bad extent ({lblk}, {ln}, {pblk})")
            prev_end = lblk + ln

    async def _itable_block(self, blk: int) -> bytearray:
        """The block is re-read when it was evicted: the device holds its latest content,
        since a commit writes its images home before it ends, and no block is evicted while
        a commit is running."""
        buf = self.itable.get(blk)
        if buf is None:
            buf = bytearray(await self._read_meta(blk))
            buf = self.itable.setdefault(blk, buf)
            if len(self.itable) > ITABLE_CACHE and not self.committing:
                self.itable.popitem(last=False)
        else:
            self.itable.move_to_end(blk)
        return buf

    async def _new_inode(self, parent: Inode, mode: int, ctx: Ctx, rdev: int = 0) -> Inode:
        ino = self.ialloc.alloc()
        blk = self.sb.itable_start + ino // fmt.INODES_PER_BLOCK
        buf = await self._itable_block(blk)
        off = (ino % fmt.INODES_PER_BLOCK) * fmt.INODE_SIZE
        inode = Inode(ino)
        inode.generation = (_slot_generation(buf[off:off + fmt.INODE_SIZE]) + 1) & 0xFFFFFFFF
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

    def _orphan_remove(self, inode: Inode) -> None:
        i = self.orphans.index(inode.ino)
        if i == 0:
            self.sb.orphan_head = inode.orphan_next
            self.sb_dirty = True
        else:
            prev = self.inodes[self.orphans[i - 1]]
            prev.orphan_next = inode.orphan_next
            self._dirty(prev)
        del self.orphans[i]
        inode.orphan_next = 0
        self._dirty(inode)

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

    async def getattr(self, ino: int) -> Inode:
        return await self.iget(ino)
_GEN_OFF = struct.calcsize("<IIIIQqqqqI")     # offset of INODE_FMT's 'generation'


def _free_slot(generation: int) -> bytes:
    """A free inode slot keeps only its generation, so the next user can bump it."""
    buf = bytearray(fmt.INODE_SIZE)
    struct.pack_into("<I", buf, _GEN_OFF, generation)
    return bytes(buf)


def _slot_generation(raw) -> int:
    return struct.unpack_from("<I", raw, _GEN_OFF)[0]
