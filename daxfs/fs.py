"""The daxfs filesystem: every POSIX operation, over a BlockDevice, without FUSE.

``Filesystem`` owns the superblock, the allocators, the inode cache, the directories and the
journal. Operations run under one trio lock (metadata changes are short and never wait on
another process), mutate cached objects and record what they dirtied; ``commit`` turns the
dirty objects into one journal transaction. The FUSE layer (operations.py) and the unit
tests call the same methods; errors are ``FsError`` with Linux's errno.

Durability rules kept here: file data is written to the device before the commit whose
metadata makes it reachable (the commit's PREFLUSH makes both durable in that order); fsync
and fdatasync commit the running transaction (a group commit: it carries every change since
the last one) or, when no metadata is dirty, flush the device cache; O_SYNC/O_DSYNC writes
do the same before returning.
"""
import bisect
import errno
import logging
import os
import stat
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass

import trio

from . import daxattr
from . import format as fmt
from .alloc import Bitmap, BlockAllocator, InodeAllocator
from .dax import DaxIO, DaxPolicy
from .directory import Directory, dtype
from .errors import CorruptError, FsError
from .inode import Inode
from .journal import Journal, read_blocks, write_blocks

log = logging.getLogger(__name__)

BS = fmt.BLOCK_SIZE
RELATIME_NS = 24 * 3600 * 10**9
OP_MAX_BLOCKS = 16          # metadata blocks one ordinary operation can dirty, at most
ITABLE_CACHE = 2048         # inode-table blocks kept (8 MiB, 32k inodes)
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
LINK_MAX = 65000
XATTR_CREATE, XATTR_REPLACE = 1, 2
# The xattrs through which DAX state is read and set, since FUSE cannot carry
# FS_IOC_FSSETXATTR nor STATX_ATTR_DAX (see daxfs/daxattr.py and docs/format.md).
DAX_XATTR = daxattr.DAX_FLAG_XATTR.encode()
DAX_STATE_XATTR = daxattr.DAX_STATE_XATTR.encode()
SYNC_XATTR = daxattr.SYNC_XATTR.encode()
MOUNT_DAX_XATTR = daxattr.MOUNT_DAX_XATTR.encode()
VIRTUAL_XATTRS = (DAX_XATTR, DAX_STATE_XATTR, SYNC_XATTR, MOUNT_DAX_XATTR)


class GateLock:
    """The filesystem lock, with a gate a freeze closes: while the device under the mount is
    suspended (a snapshot being taken), operations that change anything wait at the gate;
    reads go on."""

    def __init__(self):
        self._lock = trio.Lock()
        self._open: trio.Event | None = None

    async def __aenter__(self):
        while self._open is not None:
            await self._open.wait()
        await self._lock.acquire()

    async def __aexit__(self, *exc):
        self._lock.release()

    def close_gate(self) -> None:
        if self._open is None:
            self._open = trio.Event()

    def open_gate(self) -> None:
        gate, self._open = self._open, None
        if gate is not None:
            gate.set()


@dataclass
class Ctx:
    """Who asks: uid, gid, supplementary groups, umask (pyfuse3's RequestContext + groups)."""
    uid: int = 0
    gid: int = 0
    umask: int = 0o022
    groups: tuple = ()


ROOT = Ctx()


@dataclass
class StatFs:
    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    favail: int
    namemax: int


class Handle:
    __slots__ = ("inode", "flags")

    def __init__(self, inode: Inode, flags: int):
        self.inode = inode
        self.flags = flags


def _check_name(name: bytes) -> None:
    if len(name) > fmt.NAME_MAX:
        raise FsError(errno.ENAMETOOLONG, "file name too long")
    if not name or b"/" in name or b"\0" in name:
        raise FsError(errno.EINVAL, f"invalid file name {name!r}")


class Filesystem:
    # ----------------------------------------------------------------------------------
    # mount / unmount

    def __init__(self, dev, sb: fmt.Superblock, *, read_only: bool, track_lookups: bool):
        self.dev = dev
        self.sb = sb
        self.read_only = read_only
        self.track_lookups = track_lookups
        self.lock = GateLock()
        self.dax = DaxPolicy("never", False)    # set by the mount (dax= option, device)
        self.daxio = DaxIO(dev) if getattr(dev, "dax", False) else None
        self.dead: str | None = None          # the device went away: every call fails
        self.journal = Journal(dev, sb.journal_start, sb.journal_blocks)
        self.overlay: dict[int, bytes] = {}      # replayed images on a read-only mount
        self.inodes: dict[int, Inode] = {}
        # recently used inode-table blocks (commit patches dirty inodes into them)
        self.itable: OrderedDict[int, bytearray] = OrderedDict()
        self.committing = False
        # by number: a slot freed and reused within one transaction is written once, new
        self.dirty_inodes: dict[int, Inode] = {}
        self.dirty_dirs: set[Inode] = set()
        self.dirty_xattrs: set[Inode] = set()
        self.sb_dirty = False
        self.data_meta_dirty = False       # dirty metadata other than timestamps
        self.handles: dict[int, Handle] = {}
        self.next_fh = 1
        self.opens: dict[int, int] = {}
        self.lookups: dict[int, int] = {}
        self.orphans: list[int] = []
        self.balloc: BlockAllocator
        self.ialloc: InodeAllocator
        self.on_invalidate = None          # callback(ino) when changed behind the kernel
        self.relatime = not read_only      # False: noatime
        self.writeback_cache = False       # the FUSE mount lets the kernel cache writes
        # commit a running transaction before it outgrows a quarter of the journal
        self.commit_threshold = max(8, (sb.journal_blocks - 1) // 4)
        self._ops_to_check = 1

    @classmethod
    async def mount(cls, dev, *, read_only: bool = False, track_lookups: bool = False):
        """Open the filesystem on dev: replay the journal, load the bitmaps, free orphans."""
        read_only = read_only or getattr(dev, "read_only", False)
        if dev.nr_sectors < fmt.BLOCK_SECTORS:
            raise CorruptError("device too small to hold a daxfs")
        sb = fmt.Superblock.unpack(await read_blocks(dev, 0))
        if sb.total_blocks > dev.nr_sectors // fmt.BLOCK_SECTORS:
            raise CorruptError(f"superblock: filesystem has {sb.total_blocks} blocks but the "
                               f"device only {dev.nr_sectors // fmt.BLOCK_SECTORS}")
        fs = cls(dev, sb, read_only=read_only, track_lookups=track_lookups)
        images = await fs.journal.scan()
        if images:
            if read_only:
                for home, img in images:
                    fs.overlay[home] = img
            else:
                for home, img in images:
                    await write_blocks(dev, home, img)
            fs.sb = fmt.Superblock.unpack(await fs._read_meta(0))
            if fs.sb.total_blocks > dev.nr_sectors // fmt.BLOCK_SECTORS:
                raise CorruptError("superblock from the journal does not fit the device")
        if not read_only:
            await fs.journal.reset()
        await fs._load_bitmaps()
        root = await fs.iget(fs.sb.root_ino)
        if not root.is_dir:
            raise CorruptError("root inode is not a directory")
        await fs._load_orphans()
        if not read_only:
            async with fs.lock:
                for ino in list(fs.orphans):
                    await fs._free_inode(await fs.iget(ino))
                fs.sb.state = fmt.STATE_DIRTY
                fs.sb.mount_count += 1
                fs.sb.mount_time_ns = time.time_ns()
                fs.sb_dirty = True
                await fs._commit()
        log.info("mounted %s (%s), %d free blocks, %d free inodes", dev.name,
                 "ro" if read_only else "rw", fs.balloc.free, fs.ialloc.free)
        return fs

    async def _read_meta(self, blk: int, n: int = 1) -> bytes:
        data = await read_blocks(self.dev, blk, n)
        if self.overlay:
            buf = bytearray(data)
            for i in range(n):
                img = self.overlay.get(blk + i)
                if img is not None:
                    buf[i * BS:(i + 1) * BS] = img
            data = bytes(buf)
        return data

    async def _load_bitmaps(self) -> None:
        sb = self.sb
        bbm = bytearray(await self._read_meta(sb.bbitmap_start, sb.bbitmap_blocks))
        ibm = bytearray(await self._read_meta(sb.ibitmap_start, sb.ibitmap_blocks))
        bmap = Bitmap(bbm, sb.total_blocks)
        imap = Bitmap(ibm, sb.total_inodes)
        for b in range(sb.data_start):
            if not bmap.test(b):
                raise CorruptError(f"block bitmap: metadata block {b} marked free")
        if not imap.test(0) or not imap.test(sb.root_ino):
            raise CorruptError("inode bitmap: root inode marked free")
        # counts come from the bitmaps (the journal keeps them exact), not the superblock
        self.balloc = BlockAllocator(bmap, sb.data_start, sb.total_blocks, bmap.count_free())
        self.ialloc = InodeAllocator(imap, sb.total_inodes, imap.count_free())

    async def _load_orphans(self) -> None:
        ino = self.sb.orphan_head
        seen = set()
        while ino:
            if ino in seen or len(seen) > self.sb.total_inodes:
                raise CorruptError("orphan list: loop")
            seen.add(ino)
            inode = await self.iget(ino)
            self.orphans.append(ino)
            ino = inode.orphan_next

    async def unmount(self) -> None:
        """Free what only the kernel still referenced, commit, flush, mark clean."""
        if self.read_only:
            return
        if self.dead:
            log.warning("unmounted %s without writing: %s", self.dev.name, self.dead)
            return
        async with self.lock:
            for ino in list(self.orphans):
                await self._free_inode(await self.iget(ino))
            await self._commit()
            await self.journal.reset()
            self.sb.state = fmt.STATE_CLEAN
            self.sb.free_blocks, self.sb.free_inodes = self.balloc.free, self.ialloc.free
            # the journal is empty and durable, so the superblock can go home directly;
            # it fits in one sector, which the device writes atomically
            await write_blocks(self.dev, 0, self.sb.pack(), fua=True)
            await self.dev.flush()
        log.info("unmounted %s cleanly", self.dev.name)

    # ----------------------------------------------------------------------------------
    # DAX and the device under the mount

    def effective_dax(self, inode: Inode) -> bool:
        """S_DAX: decided when the inode comes into use, kept until its last close, so a
        flag change on an open file takes effect only afterwards (dax.rst, generic/608)."""
        if inode.s_dax is not None:
            return inode.s_dax
        return self.dax.decide(inode.is_reg, bool(inode.flags & fmt.IFLAG_DAX))

    async def freeze(self) -> None:
        """The device is being suspended: make everything durable, drop the mappings, and
        hold every change until thaw (freeze_super + the DAX mappings of the 2018 thread)."""
        async with self.lock:
            if not self.read_only and not self.dead:
                await self._commit()
                await self.dev.flush()
            self.lock.close_gate()
        if self.daxio is not None:
            self.daxio.drop()
        log.info("frozen for a suspend of %s", self.dev.name)

    def thaw(self) -> None:
        self.lock.open_gate()
        log.info("thawed")

    def device_gone(self, reason: str) -> None:
        """The device was removed or lost power under the mount: fail everything from now
        on (EIO), never hang, and let the kernel drop what it caches."""
        self.dead = reason
        self.lock.open_gate()
        if self.daxio is not None:
            self.daxio.drop()
        log.error("%s: %s; every operation fails with EIO until unmounted", self.dev.name, reason)
        if self.on_invalidate is not None:
            for ino in list(self.inodes):
                self.on_invalidate(ino)

    def _alive(self) -> None:
        if self.dead:
            raise FsError(errno.EIO, f"{self.dev.name}: {self.dead}")

    # ----------------------------------------------------------------------------------
    # inode cache

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

    async def _dir(self, inode: Inode) -> Directory:
        if inode.dir is None:
            if not inode.is_dir:
                raise FsError(errno.ENOTDIR, "not a directory")
            nblocks = inode.size // BS
            blocks = []
            lblk = 0
            while lblk < nblocks:
                pblk, run = inode.map(lblk)
                if not pblk:
                    raise CorruptError(f"directory {inode.ino}: hole at block {lblk}")
                run = min(run, nblocks - lblk)
                data = await self._read_meta(pblk, run)
                blocks.extend(bytearray(data[i * BS:(i + 1) * BS]) for i in range(run))
                lblk += run
            inode.dir = Directory(blocks, f"directory {inode.ino}")
        return inode.dir

    def _dirty(self, inode: Inode) -> None:
        inode.dirty = True
        self.dirty_inodes[inode.ino] = inode
        self.data_meta_dirty = True

    def _dirty_times(self, inode: Inode) -> None:
        """Only timestamps changed: fdatasync need not commit for this (as on Linux)."""
        inode.dirty = True
        self.dirty_inodes[inode.ino] = inode

    def _writable(self) -> None:
        if self.read_only:
            raise FsError(errno.EROFS, "read-only file system")

    # ----------------------------------------------------------------------------------
    # transactions

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

    # ----------------------------------------------------------------------------------
    # allocation helpers

    def _alloc_blocks(self, inode: Inode, lblk: int, n: int) -> None:
        """Map file blocks lblk..lblk+n-1 (a hole) to newly allocated device blocks."""
        goal = 0
        if inode.ext_lblk:
            i = max(0, min(len(inode.ext_lblk) - 1,
                           bisect.bisect_right(inode.ext_lblk, lblk) - 1))
            goal = inode.ext_pblk[i] + (lblk - inode.ext_lblk[i])
        for pblk, cnt in self.balloc.alloc(n, goal):
            inode.add_extent(lblk, cnt, pblk)
            lblk += cnt

    def _fit_chain(self, inode: Inode) -> None:
        """Give the extent chain exactly as many blocks as the extents need."""
        n = len(inode.ext_lblk)
        need = 0 if n <= fmt.INLINE_EXTENTS else -(-n // fmt.EXTENTS_PER_BLOCK)
        if len(inode.chain) == need == 0:
            inode.extents_dirty = True
            self._dirty(inode)
            return
        if not isinstance(inode.chain, list):
            inode.chain = []
        while len(inode.chain) > need:
            self.balloc.free_run(inode.chain.pop(), 1)
        if len(inode.chain) < need:
            for pblk, cnt in self.balloc.alloc(need - len(inode.chain)):
                inode.chain.extend(range(pblk, pblk + cnt))
        inode.extents_dirty = True
        self._dirty(inode)

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

    async def _dir_add(self, parent: Inode, name: bytes, inode: Inode) -> None:
        d = await self._dir(parent)
        if not d.add(name, inode.ino, dtype(inode.mode)):
            lblk = len(d.blocks)
            self._alloc_blocks(parent, lblk, 1)
            self._fit_chain(parent)
            d.grow()
            parent.size = len(d.blocks) * BS
            if not d.add(name, inode.ino, dtype(inode.mode)):
                raise FsError(errno.EIO, "directory block has no room after growing")
        self.dirty_dirs.add(parent)
        self._touch(parent, mtime=True)

    def _touch(self, inode: Inode, *, mtime: bool = False, ctime: bool = True) -> None:
        now = time.time_ns()
        if mtime:
            inode.mtime_ns = now
        if ctime or mtime:
            inode.ctime_ns = now
        self._dirty(inode)

    # ----------------------------------------------------------------------------------
    # namespace operations

    async def lookup(self, parent_ino: int, name: bytes) -> Inode:
        parent = await self.iget(parent_ino)
        d = await self._dir(parent)
        if name == b".":
            return parent
        if name == b"..":
            return await self.iget(parent.parent)
        if len(name) > fmt.NAME_MAX:
            raise FsError(errno.ENAMETOOLONG, "file name too long")
        e = d.lookup(name)
        if e is None:
            raise FsError(errno.ENOENT, "no such file or directory")
        return await self.iget(e[0])

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

    async def _create_node(self, parent_ino: int, name: bytes, mode: int, ctx: Ctx,
                           rdev: int = 0) -> Inode:
        self._writable()
        _check_name(name)
        parent = await self.iget(parent_ino)
        d = await self._dir(parent)
        if parent.nlink == 0:
            raise FsError(errno.ENOENT, "directory was removed")
        if name in (b".", b"..") or d.lookup(name) is not None:
            raise FsError(errno.EEXIST, "file exists")
        if stat.S_ISDIR(mode) and parent.nlink >= LINK_MAX:
            raise FsError(errno.EMLINK, "too many links")
        await self._reserve(4, 1)
        inode = await self._new_inode(parent, mode, ctx, rdev)
        await self._dir_add(parent, name, inode)
        if stat.S_ISDIR(mode):
            parent.nlink += 1
        return inode

    async def mknod(self, parent_ino: int, name: bytes, mode: int, rdev: int = 0,
                    ctx: Ctx = ROOT) -> Inode:
        fmtbits = stat.S_IFMT(mode) or stat.S_IFREG
        if fmtbits not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise FsError(errno.EINVAL, "mknod: bad file type")
        async with self.lock:
            inode = await self._create_node(parent_ino, name, fmtbits | (mode & 0o7777), ctx,
                                            rdev if fmtbits in (stat.S_IFCHR, stat.S_IFBLK) else 0)
            await self._maybe_commit()
            return inode

    async def mkdir(self, parent_ino: int, name: bytes, mode: int = 0o755,
                    ctx: Ctx = ROOT) -> Inode:
        async with self.lock:
            inode = await self._create_node(parent_ino, name, stat.S_IFDIR | (mode & 0o7777), ctx)
            await self._maybe_commit()
            return inode

    async def create(self, parent_ino: int, name: bytes, mode: int, flags: int,
                     ctx: Ctx = ROOT) -> tuple[int, Inode]:
        async with self.lock:
            inode = await self._create_node(parent_ino, name,
                                            stat.S_IFREG | (mode & 0o7777), ctx)
            fh = self._open_handle(inode, flags)
            await self._maybe_commit()
            return fh, inode

    async def symlink(self, parent_ino: int, name: bytes, target: bytes,
                      ctx: Ctx = ROOT) -> Inode:
        if len(target) >= fmt.PATH_MAX:
            raise FsError(errno.ENAMETOOLONG, "symlink target too long")
        if not target:
            raise FsError(errno.ENOENT, "empty symlink target")
        async with self.lock:
            await self._reserve(2 + len(target) // BS)
            inode = await self._create_node(parent_ino, name, stat.S_IFLNK | 0o777, ctx)
            # the target is stored as the link's data, written before the commit that
            # makes the link reachable
            await self._write_data(inode, 0, target)
            inode.size = len(target)
            await self._maybe_commit()
            return inode

    async def readlink(self, ino: int) -> bytes:
        inode = await self.iget(ino)
        if not inode.is_lnk:
            raise FsError(errno.EINVAL, "not a symbolic link")
        return await self._read_data(inode, 0, inode.size)

    async def link(self, ino: int, new_parent_ino: int, new_name: bytes) -> Inode:
        async with self.lock:
            self._writable()
            _check_name(new_name)
            inode = await self.iget(ino)
            if inode.is_dir:
                raise FsError(errno.EPERM, "hard link to a directory")
            if inode.nlink >= LINK_MAX:
                raise FsError(errno.EMLINK, "too many links")
            if inode.nlink == 0:
                raise FsError(errno.ENOENT, "file was removed")
            parent = await self.iget(new_parent_ino)
            d = await self._dir(parent)
            if d.lookup(new_name) is not None:
                raise FsError(errno.EEXIST, "file exists")
            await self._reserve(4)
            await self._dir_add(parent, new_name, inode)
            inode.nlink += 1
            self._touch(inode)
            await self._maybe_commit()
            return inode

    async def unlink(self, parent_ino: int, name: bytes) -> None:
        async with self.lock:
            self._writable()
            parent = await self.iget(parent_ino)
            d = await self._dir(parent)
            e = d.lookup(name)
            if e is None:
                raise FsError(errno.ENOENT, "no such file or directory")
            inode = await self.iget(e[0])
            if inode.is_dir:
                raise FsError(errno.EISDIR, "is a directory")
            d.remove(name)
            self.dirty_dirs.add(parent)
            self._touch(parent, mtime=True)
            inode.nlink -= 1
            self._touch(inode)
            await self._release_if_unused(inode)
            await self._maybe_commit()

    async def rmdir(self, parent_ino: int, name: bytes) -> None:
        async with self.lock:
            self._writable()
            if name == b".":
                raise FsError(errno.EINVAL, "cannot remove '.'")
            if name == b"..":
                raise FsError(errno.ENOTEMPTY, "cannot remove '..'")
            parent = await self.iget(parent_ino)
            d = await self._dir(parent)
            e = d.lookup(name)
            if e is None:
                raise FsError(errno.ENOENT, "no such file or directory")
            inode = await self.iget(e[0])
            if not inode.is_dir:
                raise FsError(errno.ENOTDIR, "not a directory")
            if len(await self._dir(inode)):
                raise FsError(errno.ENOTEMPTY, "directory not empty")
            d.remove(name)
            self.dirty_dirs.add(parent)
            parent.nlink -= 1
            self._touch(parent, mtime=True)
            inode.nlink = 0
            self._touch(inode)
            await self._release_if_unused(inode)
            await self._maybe_commit()

    async def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
                     flags: int = 0) -> None:
        async with self.lock:
            self._writable()
            if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or \
                    flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
                raise FsError(errno.EINVAL, "invalid rename flags")
            _check_name(new_name)
            for n in (old_name, new_name):
                if n in (b".", b".."):
                    raise FsError(errno.EBUSY if n == b"." else errno.EINVAL,
                                  "cannot rename '.' or '..'")
            p1 = await self.iget(old_parent)
            p2 = await self.iget(new_parent)
            d1 = await self._dir(p1)
            d2 = await self._dir(p2)
            e1 = d1.lookup(old_name)
            if e1 is None:
                raise FsError(errno.ENOENT, "no such file or directory")
            src = await self.iget(e1[0])
            e2 = d2.lookup(new_name)
            dst = await self.iget(e2[0]) if e2 else None
            if flags & RENAME_NOREPLACE and dst is not None:
                raise FsError(errno.EEXIST, "file exists")
            if flags & RENAME_EXCHANGE:
                if dst is None:
                    raise FsError(errno.ENOENT, "no such file or directory")
                await self._rename_exchange(p1, old_name, src, p2, new_name, dst)
                await self._maybe_commit()
                return
            if dst is not None and dst.ino == src.ino:
                return                      # POSIX: both names are links to one file
            if src.is_dir and p1.ino != p2.ino:
                await self._check_not_ancestor(src, p2)
            if dst is not None:
                if src.is_dir and not dst.is_dir:
                    raise FsError(errno.ENOTDIR, "not a directory")
                if not src.is_dir and dst.is_dir:
                    raise FsError(errno.EISDIR, "is a directory")
                if dst.is_dir and len(await self._dir(dst)):
                    raise FsError(errno.ENOTEMPTY, "directory not empty")
            elif src.is_dir and p1.ino != p2.ino and p2.nlink >= LINK_MAX:
                raise FsError(errno.EMLINK, "too many links")
            await self._reserve(4)
            if dst is not None:
                d2.set_ino(new_name, src.ino, dtype(src.mode))
                self.dirty_dirs.add(p2)
                self._touch(p2, mtime=True)
                if dst.is_dir:
                    dst.nlink = 0
                    p2.nlink -= 1
                else:
                    dst.nlink -= 1
                self._touch(dst)
            else:
                await self._dir_add(p2, new_name, src)
            d1.remove(old_name)
            self.dirty_dirs.add(p1)
            self._touch(p1, mtime=True)
            if src.is_dir and p1.ino != p2.ino:
                p1.nlink -= 1
                p2.nlink += 1
                src.parent = p2.ino
            self._touch(src)
            if dst is not None:
                await self._release_if_unused(dst)
            await self._maybe_commit()

    async def _check_not_ancestor(self, src: Inode, new_parent: Inode) -> None:
        """Moving a directory into its own subtree would disconnect it: EINVAL."""
        p = new_parent
        for _ in range(self.sb.total_inodes):
            if p.ino == src.ino:
                raise FsError(errno.EINVAL, "cannot move a directory into itself")
            if p.ino == self.sb.root_ino:
                return
            p = await self.iget(p.parent)
        raise CorruptError("directory parents form a loop")

    async def _rename_exchange(self, p1, n1, a, p2, n2, b) -> None:
        if p1.ino != p2.ino:
            if a.is_dir:
                await self._check_not_ancestor(a, p2)
            if b.is_dir:
                await self._check_not_ancestor(b, p1)
        d1, d2 = p1.dir, p2.dir
        d1.set_ino(n1, b.ino, dtype(b.mode))
        d2.set_ino(n2, a.ino, dtype(a.mode))
        self.dirty_dirs.update((p1, p2))
        if p1.ino != p2.ino:
            if a.is_dir:
                a.parent = p2.ino
                p1.nlink -= 1; p2.nlink += 1
            if b.is_dir:
                b.parent = p1.ino
                p2.nlink -= 1; p1.nlink += 1
        for i in (p1, p2):
            self._touch(i, mtime=True)
        self._touch(a); self._touch(b)

    # ----------------------------------------------------------------------------------
    # attributes

    async def setattr(self, ino: int, *, mode=None, uid=None, gid=None, size=None,
                      atime_ns=None, mtime_ns=None, ctime_ns=None, ctx: Ctx = ROOT) -> Inode:
        async with self.lock:
            self._writable()
            inode = await self.iget(ino)
            if size is not None:
                if inode.is_dir:
                    raise FsError(errno.EISDIR, "is a directory")
                if not inode.is_reg:
                    raise FsError(errno.EINVAL, "truncate of a special file")
                if size < 0:
                    raise FsError(errno.EINVAL, "negative size")
                if size > fmt.MAX_FILE_SIZE:
                    raise FsError(errno.EFBIG, "file too large")
                await self._truncate(inode, size)
            if mode is not None:
                inode.mode = stat.S_IFMT(inode.mode) | (mode & 0o7777)
            if uid is not None and uid != 0xFFFFFFFF:
                inode.uid = uid
            if gid is not None and gid != 0xFFFFFFFF:
                inode.gid = gid
            if (uid is not None or gid is not None) and not inode.is_dir and \
                    inode.mode & (stat.S_ISUID | stat.S_ISGID) and mode is None:
                # chown clears set-user-ID / set-group-ID (with group-exec), like Linux
                inode.mode &= ~stat.S_ISUID
                if inode.mode & stat.S_IXGRP:
                    inode.mode &= ~stat.S_ISGID
            if atime_ns is not None:
                inode.atime_ns = atime_ns
            if mtime_ns is not None:
                inode.mtime_ns = mtime_ns
            inode.ctime_ns = ctime_ns if ctime_ns is not None else time.time_ns()
            self._dirty(inode)
            await self._maybe_commit()
            return inode

    async def _truncate(self, inode: Inode, size: int) -> None:
        if size > inode.size:
            await self._zero_tail(inode)
        elif size < inode.size:
            freed = inode.truncate_extents(-(-size // BS))
            for pblk, n in freed:
                self.balloc.free_run(pblk, n)
            if freed:
                self._fit_chain(inode)
        inode.size = size
        self._touch(inode, mtime=True)

    async def _zero_tail(self, inode: Inode) -> None:
        """Bytes between EOF and the end of its block may hold data of an earlier, longer
        file size; zero them before the size grows over them."""
        tail = inode.size % BS
        if not tail:
            return
        pblk, _ = inode.map(inode.size // BS)
        if pblk:
            first = tail // 512 * 512
            sector = pblk * fmt.BLOCK_SECTORS + first // 512
            head = await self.dev.read(sector, 512) if tail % 512 else b""
            buf = bytearray(BS - first)
            if head:
                buf[:tail - first] = head[:tail - first]
            await self.dev.write(sector, buf)

    async def access(self, ino: int, mask: int, ctx: Ctx = ROOT) -> bool:
        inode = await self.iget(ino)
        if mask == os.F_OK:
            return True
        if mask & os.W_OK and self.read_only:
            raise FsError(errno.EROFS, "read-only file system")
        if ctx.uid == 0:
            if mask & os.X_OK and not inode.is_dir and not inode.mode & 0o111:
                raise FsError(errno.EACCES, "permission denied")
            return True
        if ctx.uid == inode.uid:
            bits = (inode.mode >> 6) & 7
        elif ctx.gid == inode.gid or inode.gid in ctx.groups:
            bits = (inode.mode >> 3) & 7
        else:
            bits = inode.mode & 7
        if mask & ~bits & 7:
            raise FsError(errno.EACCES, "permission denied")
        return True

    async def statfs(self) -> StatFs:
        sb = self.sb
        free = self.balloc.free
        return StatFs(bsize=BS, frsize=BS, blocks=sb.total_blocks, bfree=free, bavail=free,
                      files=sb.total_inodes - 1, ffree=self.ialloc.free,
                      favail=self.ialloc.free, namemax=fmt.NAME_MAX)

    # ----------------------------------------------------------------------------------
    # extended attributes

    async def _xattrs(self, inode: Inode) -> dict:
        if inode.xattrs is None:
            inode.xattrs = {}
            if inode.xattr_block:
                if not self.sb.data_start <= inode.xattr_block < self.sb.total_blocks:
                    raise CorruptError(f"inode {inode.ino}: xattr block out of range")
                inode.xattrs = fmt.unpack_xattrs(await self._read_meta(inode.xattr_block))
        return inode.xattrs

    @staticmethod
    def _check_xattr_name(inode: Inode, name: bytes) -> None:
        if not name.startswith(fmt.XATTR_PREFIXES) or name in fmt.XATTR_PREFIXES:
            raise FsError(errno.EOPNOTSUPP, "unsupported xattr namespace")
        if len(name) > 255:
            raise FsError(errno.ERANGE, "xattr name too long")

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        inode = await self.iget(ino)
        if name == DAX_XATTR:
            return b"1" if inode.flags & fmt.IFLAG_DAX else b"0"
        if name == DAX_STATE_XATTR:
            return b"1" if self.effective_dax(inode) else b"0"
        if name == SYNC_XATTR:
            return b"1" if inode.sync_mode else b"0"
        if name == MOUNT_DAX_XATTR and ino == self.sb.root_ino:
            return self.dax.mode.encode()
        self._check_xattr_name(inode, name)
        v = (await self._xattrs(inode)).get(name)
        if v is None:
            raise FsError(errno.ENODATA, "no such attribute")
        return v

    async def listxattr(self, ino: int) -> list[bytes]:
        inode = await self.iget(ino)
        return sorted(await self._xattrs(inode))

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        async with self.lock:
            self._writable()
            inode = await self.iget(ino)
            if name == DAX_XATTR:
                if value not in (b"0", b"1"):
                    raise FsError(errno.EINVAL, "the DAX flag is 0 or 1")
                if not (inode.is_reg or inode.is_dir):
                    raise FsError(errno.EINVAL, "the DAX flag applies to files and directories")
                inode.flags = (inode.flags & ~fmt.IFLAG_DAX) | (fmt.IFLAG_DAX if value == b"1" else 0)
                self._touch(inode)
                return
            if name == SYNC_XATTR:
                if value not in (b"0", b"1"):
                    raise FsError(errno.EINVAL, "the synchronous mode is 0 or 1")
                if value == b"1" and not self.effective_dax(inode):
                    # mmap(MAP_SYNC) on a file that is not DAX fails so on Linux
                    raise FsError(errno.EOPNOTSUPP, "the synchronous mode needs a DAX file")
                inode.sync_mode = value == b"1"
                return
            if name in (DAX_STATE_XATTR, MOUNT_DAX_XATTR):
                raise FsError(errno.EPERM, "read-only attribute")
            self._check_xattr_name(inode, name)
            if name.startswith(b"user.") and not (inode.is_reg or inode.is_dir):
                raise FsError(errno.EPERM, "user xattrs only on files and directories")
            if len(value) > fmt.XATTR_SPACE:
                raise FsError(errno.E2BIG, "xattr value too large")
            xa = await self._xattrs(inode)
            if flags & XATTR_CREATE and name in xa:
                raise FsError(errno.EEXIST, "attribute exists")
            if flags & XATTR_REPLACE and name not in xa:
                raise FsError(errno.ENODATA, "no such attribute")
            new = dict(xa)
            new[name] = bytes(value)
            if fmt.xattrs_size(new) > fmt.XATTR_SPACE:
                raise FsError(errno.ENOSPC, "no space left for extended attributes")
            if not inode.xattr_block:
                await self._reserve(1)
                [(blk, _)] = self.balloc.alloc(1)
                inode.xattr_block = blk
            inode.xattrs = new
            self.dirty_xattrs.add(inode)
            self._touch(inode)
            await self._maybe_commit()

    async def removexattr(self, ino: int, name: bytes) -> None:
        async with self.lock:
            self._writable()
            inode = await self.iget(ino)
            self._check_xattr_name(inode, name)
            xa = await self._xattrs(inode)
            if name not in xa:
                raise FsError(errno.ENODATA, "no such attribute")
            del xa[name]
            if not xa and inode.xattr_block:
                self.balloc.free_run(inode.xattr_block, 1)
                inode.xattr_block = 0
                self.dirty_xattrs.discard(inode)
            else:
                self.dirty_xattrs.add(inode)
            self._touch(inode)
            await self._maybe_commit()

    # ----------------------------------------------------------------------------------
    # directories

    async def opendir(self, ino: int) -> int:
        inode = await self.iget(ino)
        await self._dir(inode)
        return self._open_handle(inode, os.O_RDONLY | os.O_DIRECTORY)

    async def readdir(self, ino: int, cookie: int = 0):
        """Async iterator of (name, Inode, next_cookie), resuming after cookie."""
        inode = await self.iget(ino)
        d = await self._dir(inode)
        for name, child, nxt in d.entries_from(cookie):
            try:
                yield name, await self.iget(child), nxt
            except FsError:
                if d.lookup(name) is not None:    # still there: the entry is broken
                    raise

    async def listdir(self, ino: int) -> list[bytes]:
        return [name async for name, _, _ in self.readdir(ino)]

    # ----------------------------------------------------------------------------------
    # files

    def _open_handle(self, inode: Inode, flags: int) -> int:
        if inode.is_reg and not self.opens.get(inode.ino):
            # S_DAX is decided as the inode comes into use and kept until the last close
            inode.s_dax = self.dax.decide(True, bool(inode.flags & fmt.IFLAG_DAX))
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = Handle(inode, flags)
        self.opens[inode.ino] = self.opens.get(inode.ino, 0) + 1
        return fh

    def handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise FsError(errno.EBADF, "bad file handle")
        return h

    async def open(self, ino: int, flags: int) -> int:
        inode = await self.iget(ino)
        if inode.is_dir and flags & os.O_ACCMODE != os.O_RDONLY:
            raise FsError(errno.EISDIR, "is a directory")
        if flags & os.O_ACCMODE != os.O_RDONLY:
            self._writable()
        self._alive()
        fh = self._open_handle(inode, flags)
        if flags & os.O_TRUNC and inode.is_reg and inode.size:
            await self.setattr(ino, size=0)
        return fh

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        ino = h.inode.ino
        left = self.opens.get(ino, 0) - 1
        if left > 0:
            self.opens[ino] = left
            return
        self.opens.pop(ino, None)
        h.inode.s_dax = None        # not in use any more: the next open decides afresh
        if h.inode.nlink == 0 and not self.read_only and not self.dead:
            async with self.lock:
                await self._release_if_unused(h.inode)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        inode = self.handle(fh).inode
        if inode.is_dir:
            raise FsError(errno.EISDIR, "is a directory")
        epoch = self.balloc.reuse_epoch
        data = await self._read_data(inode, off, size)
        if self.balloc.reuse_epoch != epoch:
            # reads run without the lock: while this one waited on the device, blocks it
            # mapped may have been freed and handed to another file; read again, locked
            async with self.lock:
                data = await self._read_data(inode, off, size)
        if self.relatime and (inode.atime_ns <= inode.mtime_ns or inode.atime_ns <= inode.ctime_ns
                              or time.time_ns() - inode.atime_ns > RELATIME_NS):
            await self._touch_atime(inode)
        return data

    async def _touch_atime(self, inode: Inode) -> None:
        """relatime, as Linux's default: update atime on the first read after a change or
        once a day. The kernel caches attributes, so tell it the atime changed."""
        async with self.lock:
            if not inode.mode:
                return
            inode.atime_ns = time.time_ns()
            self._dirty_times(inode)
        if self.on_invalidate is not None:
            self.on_invalidate(inode.ino)

    async def _read_data(self, inode: Inode, off: int, size: int) -> bytes:
        """One device read per extent the range touches, of just the sectors needed (the
        usual page-aligned read is returned as read, without a copy); holes read as zeros."""
        if off < 0:
            raise FsError(errno.EINVAL, "negative offset")
        self._alive()
        # Effective-DAX files load from the pmem through direct_access mappings; others
        # read with bios. Both go straight to the device: daxfs keeps no data cache.
        io = self.daxio if self.daxio is not None and self.effective_dax(inode) else self.dev
        end = min(off + size, inode.size)
        if off >= end:
            return b""
        parts = []
        pos = off
        while pos < end:
            lblk = pos // BS
            pblk, run = inode.map(lblk)
            stop = end if run == 0 else min(end, (lblk + run) * BS)
            if pblk:
                byte = pblk * BS + (pos - lblk * BS)
                first = byte >> 9
                last = (byte + (stop - pos) + 511) >> 9
                data = await io.read(first, (last - first) << 9)
                skip = byte - (first << 9)
                if skip or len(data) != stop - pos:
                    data = data[skip:skip + stop - pos]
                parts.append(data)
            else:
                parts.append(bytes(stop - pos))
            pos = stop
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def write(self, fh: int, off: int, data) -> int:
        h = self.handle(fh)
        inode = h.inode
        if not inode.is_reg:
            raise FsError(errno.EINVAL if not inode.is_dir else errno.EISDIR, "not a file")
        # with the kernel's writeback cache, dirty pages come back through any open handle
        # and the kernel has already placed O_APPEND writes
        if not self.writeback_cache:
            if h.flags & os.O_ACCMODE == os.O_RDONLY:
                raise FsError(errno.EBADF, "file not open for writing")
            if h.flags & os.O_APPEND:
                off = inode.size
        if not data:
            return 0
        if off < 0:
            raise FsError(errno.EINVAL, "negative offset")
        if off + len(data) > fmt.MAX_FILE_SIZE:
            raise FsError(errno.EFBIG, "file too large")
        async with self.lock:
            self._writable()
            self._alive()
            n = await self._fit_to_space(inode, off, len(data))
            if n < len(data):           # a short write when the device fills up, as Linux
                data = memoryview(data)[:n]
            allocated = await self._write_data(inode, off, data)
            now = time.time_ns()
            inode.mtime_ns = inode.ctime_ns = now
            if off + len(data) > inode.size:
                inode.size = off + len(data)
                self._dirty(inode)
            elif allocated:
                self._dirty(inode)
            else:
                self._dirty_times(inode)
            if h.flags & os.O_SYNC == os.O_SYNC:         # O_SYNC includes the O_DSYNC bit
                await self._sync_locked(datasync=False)
            elif h.flags & os.O_DSYNC or inode.sync_mode:
                # The synchronous mode keeps MAP_SYNC's promise: the metadata that reaches
                # the data just written is durable when the write returns.
                await self._sync_locked(datasync=True)
            else:
                await self._maybe_commit()
        return len(data)

    async def _fit_to_space(self, inode: Inode, off: int, length: int) -> int:
        """How many bytes from off can be written with the free blocks left (ENOSPC if
        none): holes in the range need new blocks, mapped blocks do not."""
        first, last = off // BS, (off + length - 1) // BS
        need = 0
        lblk = first
        while lblk <= last:
            pblk, run = inode.map(lblk)
            n = last + 1 - lblk if run == 0 else min(run, last + 1 - lblk)
            if not pblk:
                need += n
            lblk += n
        margin = 2 + need // fmt.EXTENTS_PER_BLOCK
        if need + margin <= self.balloc.available:
            return length
        if self.balloc.pending_count:
            await self._commit()
            await self.journal.reset()
            self.balloc.release_pending()
            if need + margin <= self.balloc.available:
                return length
        budget = self.balloc.available - 2 - self.balloc.available // fmt.EXTENTS_PER_BLOCK
        if budget <= 0:
            raise FsError(errno.ENOSPC, "no space left on device")
        lblk = first
        while lblk <= last:
            pblk, run = inode.map(lblk)
            n = last + 1 - lblk if run == 0 else min(run, last + 1 - lblk)
            if not pblk:
                if n > budget:
                    lblk += budget
                    break
                budget -= n
            lblk += n
        return max(0, min(length, lblk * BS - off))

    async def _write_data(self, inode: Inode, off: int, data) -> bool:
        """Allocate what the range needs, then write it with one device write per run of
        contiguous device blocks; partial blocks at the edges are read-modify-written.
        Lock held, so no commit can reference the new blocks before their data is written."""
        data = memoryview(data)
        # Effective-DAX files store into the pmem and flush each store to the persistence
        # domain before the write returns; others write bios.
        io = self.daxio if self.daxio is not None and self.effective_dax(inode) else self.dev
        end = off + len(data)
        first, last = off // BS, (end - 1) // BS
        holes = []
        lblk = first
        while lblk <= last:
            pblk, run = inode.map(lblk)
            n = last + 1 - lblk if run == 0 else min(run, last + 1 - lblk)
            if not pblk:
                holes.append((lblk, n))
            lblk += n
        if holes:
            need = sum(n for _, n in holes)
            await self._reserve(need + 2 + need // fmt.EXTENTS_PER_BLOCK)
        if end > inode.size:
            await self._zero_tail(inode)
        new_blocks = set()
        for lblk, n in holes:
            self._alloc_blocks(inode, lblk, n)
            new_blocks.add(lblk)
            new_blocks.add(lblk + n - 1)
        if holes:
            self._fit_chain(inode)
        head, tail = off % BS, end % BS
        if head or tail:
            buf = bytearray((last - first + 1) * BS)
            if head and first not in new_blocks:
                pblk, _ = inode.map(first)
                buf[:BS] = await io.read(pblk * fmt.BLOCK_SECTORS, BS)
            if tail and (last != first or not head) and last not in new_blocks:
                pblk, _ = inode.map(last)
                buf[-BS:] = await io.read(pblk * fmt.BLOCK_SECTORS, BS)
            buf[head:head + len(data)] = data
            data = memoryview(buf)
        lblk = first
        pos = 0
        while lblk <= last:
            pblk, run = inode.map(lblk)
            n = min(run, last + 1 - lblk)
            await io.write(pblk * fmt.BLOCK_SECTORS, data[pos:pos + n * BS])
            pos += n * BS
            lblk += n
        return bool(holes)

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


_GEN_OFF = struct.calcsize("<IIIIQqqqqI")     # offset of INODE_FMT's 'generation'


def _free_slot(generation: int) -> bytes:
    """A free inode slot keeps only its generation, so the next user can bump it."""
    buf = bytearray(fmt.INODE_SIZE)
    struct.pack_into("<I", buf, _GEN_OFF, generation)
    return bytes(buf)


def _slot_generation(raw) -> int:
    return struct.unpack_from("<I", raw, _GEN_OFF)[0]
