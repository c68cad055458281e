"""The daxfs filesystem: every POSIX operation, over a BlockDevice, without FUSE.

``Filesystem`` is a composition of the parts a kernel filesystem has, one module each:

- ``icache.py``      the inode cache: iget, new and freed inodes, the orphan list, lookup counts
- ``namei.py``       namespace and directory operations: lookup, create, rename, readdir, ...
- ``file.py``        file data I/O: open, read, write, block mapping, truncation
- ``attr.py``        setattr and access; ``xattr.py`` extended attributes
- ``transaction.py`` the running transaction, commit to the journal, checkpoint, fsync
- ``freeze.py``      the mount's state: the lock and its freeze gate, read-only, device gone

This file holds what ties them together: the state they share (created in ``__init__``,
where each field says which part owns it), mount, unmount and statfs. Operations run under
one trio lock (metadata changes are short and never wait on another process), mutate cached
objects and record what they dirtied; ``commit`` turns the dirty objects into one journal
transaction. The FUSE layer (operations.py) and the unit tests call the same methods; errors
are ``FsError`` with Linux's errno.
"""
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from . import format as fmt
from .alloc import Bitmap, BlockAllocator, InodeAllocator
from .attr import Attributes
from .cred import ROOT, Ctx
from .dax import DaxIO, DaxPolicy
from .errors import CorruptError
from .fastcommit import FastCommitLog
from .file import RELATIME_NS, Handle, FileIO
from .freeze import Freeze, GateLock
from .icache import ITABLE_CACHE, InodeCache
from .inode import Inode
from .itable_scan import check_unmarked_inodes
from .journal import Journal, read_blocks, write_blocks
from .namei import LINK_MAX, RENAME_EXCHANGE, RENAME_NOREPLACE, Namespace
from .transaction import OP_MAX_BLOCKS, Transactions
from .xattr import XATTR_CREATE, XATTR_REPLACE, VIRTUAL_XATTRS, Xattrs

# names other modules and tests import from here
__all__ = ["Filesystem", "StatFs", "Ctx", "ROOT", "Handle", "GateLock", "RELATIME_NS",
           "ITABLE_CACHE", "LINK_MAX", "RENAME_EXCHANGE", "RENAME_NOREPLACE", "OP_MAX_BLOCKS",
           "XATTR_CREATE", "XATTR_REPLACE", "VIRTUAL_XATTRS"]

log = logging.getLogger(__name__)

BS = fmt.BLOCK_SIZE


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


class Filesystem(InodeCache, Namespace, FileIO, Attributes, Xattrs, Transactions, Freeze):
    # ----------------------------------------------------------------------------------
    # mount / unmount

    def __init__(self, dev, sb: fmt.Superblock, *, read_only: bool, track_lookups: bool):
        # -- the device and the mount (freeze.py) --
        self.dev = dev
        self.sb = sb
        self.read_only = read_only
        self.lock = GateLock()
        self.dead: str | None = None          # the device went away: every call fails
        self.on_invalidate = None          # callback(ino) when changed behind the kernel
        # -- DAX and file data (file.py) --
        self.dax = DaxPolicy("never", False)    # set by the mount (dax= option, device)
        self.daxio = DaxIO(dev) if getattr(dev, "dax", False) else None
        self.handles: dict[int, Handle] = {}
        self.next_fh = 1
        self.opens: dict[int, int] = {}
        self.relatime = not read_only      # False: noatime
        self.strictatime = False           # True: atime on every read (mount -o strictatime)
        self.writeback_cache = False       # the FUSE mount lets the kernel cache writes
        # -- the inode cache (icache.py) --
        self.track_lookups = track_lookups
        self.inodes: dict[int, Inode] = {}
        # recently used inode-table blocks (commit patches dirty inodes into them)
        self.itable: OrderedDict[int, bytearray] = OrderedDict()
        self.lookups: dict[int, int] = {}
        self.orphans: list[int] = []
        # -- allocation (alloc.py), loaded at mount --
        self.balloc: BlockAllocator
        self.ialloc: InodeAllocator
        # -- the running transaction and the journal (transaction.py, journal.py) --
        self.journal = Journal(dev, sb.journal_start, sb.journal_blocks, sb.uuid)
        self.fc = FastCommitLog(dev, sb)
        self.overlay: dict[int, bytes] = {}      # replayed images on a read-only mount
        self.committing = False
        # by number: a slot freed and reused within one transaction is written once, new
        self.dirty_inodes: dict[int, Inode] = {}
        self.dirty_dirs: set[Inode] = set()
        self.dirty_xattrs: set[Inode] = set()
        self.sb_dirty = False
        self.geometry_dirty = False        # a resize changed the size: rewrite backup 1 too
        self.data_meta_dirty = False       # dirty metadata other than timestamps
        # commit a running transaction before it outgrows a quarter of the journal
        self.commit_threshold = max(8, (sb.journal_blocks - 1) // 4)
        self._ops_to_check = 1

    @classmethod
    async def mount(cls, dev, *, read_only: bool = False, track_lookups: bool = False):
        """Open the filesystem on dev: replay the journal and the fast commits after it,
        load the bitmaps and check them against the inodes, free orphans. Metadata that
        fails verification is never trusted: the mount fails, or goes on read-only (a
        damaged primary superblock with a good backup, bitmaps that disagree with the
        inodes) with the error logged."""
        read_only = read_only or getattr(dev, "read_only", False)
        if dev.nr_sectors < 2 * fmt.BLOCK_SECTORS:
            raise CorruptError("device too small to hold a daxfs")
        sb, why = await read_superblock(dev)
        if why and await journal_rewrites_primary(dev, sb):
            # every commit journals the superblock before writing it home, and a write
            # to pmem is atomic only per 8 bytes: a power failure in that home write
            # tears the primary, and replaying the journal writes it whole again
            log.warning("%s: %s; the journal holds its last update, replaying it",
                        dev.name, why)
            why = None
        if why:
            log.error("%s: %s; mounting read-only, run fsck.daxfs -y to repair", dev.name, why)
            read_only = True
        fs = cls(dev, sb, read_only=read_only, track_lookups=track_lookups)
        images = await fs.journal.scan()
        if images:
            for home, img in images:
                fs._check_home(home, img)
            if read_only:
                for home, img in images:
                    fs.overlay[home] = img
            else:
                for home, img in images:
                    await write_blocks(dev, home, img)
            fs.sb = fmt.Superblock.unpack(await fs._read_meta(0))
            if fs.sb.total_blocks > dev.nr_sectors // fmt.BLOCK_SECTORS or fs.sb.uuid != sb.uuid:
                raise CorruptError("superblock from the journal does not fit the device")
        await fs.fc.replay(fs, read_only)
        if not read_only:
            await fs.journal.reset()
        await fs._load_bitmaps()
        await fs._crosscheck_bitmaps()
        await check_unmarked_inodes(fs)
        root = await fs.iget(fs.sb.root_ino)
        if not root.is_dir:
            raise CorruptError("root inode is not a directory")
        await fs._load_orphans()
        if not fs.read_only:
            async with fs.lock:
                for ino in list(fs.orphans):
                    await fs._free_inode(await fs.iget(ino))
                fs.sb.state = fmt.STATE_DIRTY
                fs.sb.mount_count += 1
                fs.sb.mount_time_ns = time.time_ns()
                fs.sb_dirty = True
                await fs._commit()
        log.info("mounted %s (%s), %d free blocks, %d free inodes", dev.name,
                 "ro" if fs.read_only else "rw", fs.balloc.free, fs.ialloc.free)
        return fs

    def _check_home(self, home: int, img: bytes) -> None:
        """A journal image must be a sealed block of this filesystem for its home."""
        if not 0 <= home < self.sb.total_blocks:
            raise CorruptError(f"journal: image for block {home} beyond the filesystem")
        kind = fmt.block_type(img)
        if kind is not None:
            fmt.verify(img, kind, home, self.sb.uuid)

    async def _read_meta(self, blk: int, n: int = 1, kind: str | None = None) -> bytes:
        """Metadata blocks as the device (or the replayed journal) holds them; with kind,
        each block is verified (type, place, uuid, crc32c), and one that fails turns the
        filesystem read-only (ext4's errors=remount-ro) before the error is raised."""
        data = await read_blocks(self.dev, blk, n)
        if self.overlay:
            buf = bytearray(data)
            for i in range(n):
                img = self.overlay.get(blk + i)
                if img is not None:
                    buf[i * BS:(i + 1) * BS] = img
            data = bytes(buf)
        if kind is not None:
            for i in range(n):
                try:
                    fmt.verify(data[i * BS:(i + 1) * BS], kind, blk + i, self.sb.uuid)
                except CorruptError as e:
                    self._meta_error(e)
                    raise
        return data

    async def _load_bitmaps(self) -> None:
        sb = self.sb
        raw = await self._read_meta(sb.bbitmap_start, sb.bbitmap_blocks, "block bitmap")
        bbm = fmt.unpack_bitmap(raw, sb.bbitmap_start, sb.bbitmap_blocks, "block bitmap", sb.uuid)
        raw = await self._read_meta(sb.ibitmap_start, sb.ibitmap_blocks, "inode bitmap")
        ibm = fmt.unpack_bitmap(raw, sb.ibitmap_start, sb.ibitmap_blocks, "inode bitmap", sb.uuid)
        bmap = Bitmap(bbm, sb.total_blocks)
        imap = Bitmap(ibm, sb.total_inodes)
        for b in list(range(sb.data_start)) + [sb.total_blocks - 1]:
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
            await write_blocks(self.dev, 0, self.sb.pack(lsn=self.journal.seq), fua=True)
            await self.dev.flush()
        log.info("unmounted %s cleanly", self.dev.name)

    async def statfs(self) -> StatFs:
        sb = self.sb
        free = self.balloc.free
        return StatFs(bsize=BS, frsize=BS, blocks=sb.total_blocks, bfree=free, bavail=free,
                      files=sb.total_inodes - 1, ffree=self.ialloc.free,
                      favail=self.ialloc.free, namemax=fmt.NAME_MAX)


async def journal_rewrites_primary(dev, sb: fmt.Superblock) -> bool:
    """Whether the journal (found through a backup ``sb``) replays an image of block 0."""
    try:
        images = await Journal(dev, sb.journal_start, sb.journal_blocks, sb.uuid).scan()
    except CorruptError:
        return False
    return any(home == 0 for home, _ in images)


async def read_superblock(dev) -> tuple[fmt.Superblock, str | None]:
    """The primary superblock, or a backup when the primary fails verification (with why,
    so the caller mounts read-only and says so). An image of another format version is
    refused with the way out (VersionError), never read through a backup."""
    total = dev.nr_sectors // fmt.BLOCK_SECTORS
    raw = await read_blocks(dev, 0)
    if raw[:8] != fmt.SB_MAGIC and (await read_blocks(dev, 1))[:8] != fmt.SB_MAGIC and \
            (await read_blocks(dev, total - 1))[:8] != fmt.SB_MAGIC:
        raise CorruptError("superblock: bad magic (not a daxfs filesystem)")
    try:
        sb = fmt.Superblock.unpack(raw)
        if sb.total_blocks > total:
            raise CorruptError(f"superblock: filesystem has {sb.total_blocks} blocks but the "
                               f"device only {total}")
        return sb, None
    except fmt.VersionError:
        raise
    except CorruptError as e:
        primary = e
    for blk in (1, total - 1):
        try:
            sb = fmt.Superblock.unpack(await read_blocks(dev, blk), blk)
        except fmt.VersionError:
            raise
        except CorruptError:
            continue
        if sb.total_blocks <= total and blk in sb.backup_blocks:
            return sb, f"primary superblock damaged ({primary}); using the backup at block {blk}"
    raise CorruptError(f"{primary}; no backup superblock is valid either")
