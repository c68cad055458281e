"""Checking and repairing a daxfs image in one pass: the logic behind fsck.daxfs.

The checker reads every structure itself rather than through ``Filesystem``, so a damaged
image is described instead of refused. It replays the journal and the fast commits (in
memory with -n, onto the device with -y, as e2fsck does), then works in e2fsck's passes:

1.  every slot of the inode table is read: an inode that decodes and verifies is in use,
    whatever the inode bitmap says (a cleared bit is a bitmap error, never a dead inode);
    its extents are checked, the illegal ones cut, and so are blocks mapped beyond the size
    (nothing there can be read). Passes 1 to 1D are in fsck_inodes.py.
1B-1D. blocks claimed twice: the inode with the lower number keeps the block, every later
    claimant gets a copy of it (cloned, as e2fsck's pass 1D); with no free block left, the
    later claimant's extent is cut there instead. Each message says which.
2.  directories: blocks that verify are read exactly; from one that does not, every record
    that still proves itself is kept (fsck_dirs.salvage_records). Entries naming no inode
    go; illegal, duplicate, '.' and '..' names are renamed; a directory with anything
    changed is written again whole.
3.  connectivity: the root and lost+found exist (made again if need be); a directory has one
    name; everything in use that no directory reaches goes into lost+found as ``#INO``, with
    its data. Inodes with no links and no name (deleted while open) are freed, as a mount
    frees the orphan list.
4.  link counts and parent pointers follow the directories. Passes 2 to 4 are in
    fsck_names.py.
5.  the bitmaps and free counts are rebuilt from what the inodes hold.

Everything is computed in memory and written at the end (with -y), so a second ``-n`` finds
nothing. Exit codes are e2fsck's: 0 clean, 1 errors fixed, 4 errors left uncorrected, 8
operational error.
"""
import logging
import re

from . import fastcommit
from . import format as fmt
from .alloc import Bitmap
from .errors import CorruptError
from .fsck_inodes import PARSE_ERRORS, InodePasses
from .fsck_names import NamePasses
from .journal import Journal, header_block, read_blocks, write_blocks

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FIXED, EXIT_UNCORRECTED, EXIT_OPERATIONAL = 0, 1, 4, 8
BS = fmt.BLOCK_SIZE
_ERRNO = re.compile(r"\[Errno \d+\] ")


class Checker(InodePasses, NamePasses):
    def __init__(self, dev, *, repair: bool = False, out=None):
        self.dev = dev
        self.repair = repair and not getattr(dev, "read_only", False)
        self.out = out or (lambda msg: None)
        self.errors: list[str] = []          # found and not fixed
        self.fixed: list[str] = []
        self.overlay: dict[int, bytes] = {}  # replayed images not written (-n)
        self.writes: dict[int, bytes] = {}   # repaired blocks to write back
        self.journal: Journal | None = None
        self.sb_dirty = False                # the superblock is written back
        self.bad_bitmap = False              # a bitmap block failed verification
        self.keep_orphans: set[int] = set()  # -n: orphans a mount would free, left alone

    # -- reporting -----------------------------------------------------------------------
    def problem(self, msg: str, fixable: bool = False) -> bool:
        """Record a problem; True when the caller should repair it. With -n a fixable
        problem is still counted as an error: nothing is changed."""
        msg = _ERRNO.sub("", msg)       # the reason, not how Python prints an OSError
        if fixable and self.repair:
            self.fixed.append(msg)
            self.out(f"{msg}: fixed")
            return True
        self.errors.append(msg)
        self.out(msg)
        return False

    def fix(self, msg: str) -> None:
        """A repair decided in memory; with -n it stays a finding (the changed state is
        still followed, so later passes see what -y would leave)."""
        self.problem(msg, fixable=True)

    async def read(self, blk: int, n: int = 1) -> bytes:
        data = bytearray(await read_blocks(self.dev, blk, n))
        for i in range(n):
            img = self.writes.get(blk + i, self.overlay.get(blk + i))
            if img is not None:
                data[i * BS:(i + 1) * BS] = img
        return bytes(data)

    # -- driver --------------------------------------------------------------------------
    async def run(self) -> int:
        total = self.dev.nr_sectors // fmt.BLOCK_SECTORS
        if total < 2:
            self.out("device too small to hold a daxfs")
            return EXIT_OPERATIONAL
        raw = await read_blocks(self.dev, 0)
        if raw[:8] != fmt.SB_MAGIC and (await read_blocks(self.dev, 1))[:8] != fmt.SB_MAGIC \
                and (await read_blocks(self.dev, total - 1))[:8] != fmt.SB_MAGIC:
            self.out("no daxfs superblock found (bad magic); is this the right device?")
            return EXIT_OPERATIONAL
        from .fs import journal_rewrites_primary, read_superblock
        try:
            self.sb, why = await read_superblock(self.dev)
        except fmt.VersionError as e:
            self.out(str(e).replace("mount it with", "check it with"))
            return EXIT_OPERATIONAL
        except CorruptError as e:
            self.problem(f"{e}; cannot check further")
            return EXIT_UNCORRECTED
        if why and await journal_rewrites_primary(self.dev, self.sb):
            # a home write of the superblock torn by the crash: the replay rewrites it
            self.out(f"{why}; the journal holds its last update")
        elif why and self.problem(f"{why}; restoring the primary from it", fixable=True):
            await write_blocks(self.dev, 0, self.sb.pack(0), fua=True)
        await self.check_journal()
        try:
            self.sb = fmt.Superblock.unpack(await self.read(0))
        except CorruptError as e:
            self.problem(f"{e} (after journal replay); cannot check further")
            return EXIT_UNCORRECTED
        # after the replay: a resize journals the first backup with the new size
        await self._check_backups()
        await self.check_fast_commits()
        await self.load_bitmaps()
        await self.pass1_inodes()
        self.pass1b_claims()
        await self.pass1d_clone()
        await self.check_xattrs()
        await self.pass2_directories()
        self.check_orphans()
        self.pass3_connectivity()
        self.pass4_links()
        self.rebuild_directories()
        self.rebuild_chains()
        self.pass5_bitmaps()
        self.check_counts()
        await self.stage_inodes()
        if self.writes and self.repair:
            await self.write_back()
        if self.errors:
            return EXIT_UNCORRECTED
        return EXIT_FIXED if self.fixed else EXIT_OK

    async def write_back(self) -> None:
        for blk in sorted(self.writes):
            await write_blocks(self.dev, blk, self.writes[blk])
        await self.dev.flush()

    # -- superblock, journal, fast commits ------------------------------------------------
    async def _check_backups(self) -> None:
        sb = self.sb
        for blk in sb.backup_blocks:
            try:
                b = fmt.Superblock.unpack(await self.read(blk), blk)
                same = (b.uuid, b.total_blocks, b.total_inodes, b.data_start) == \
                    (sb.uuid, sb.total_blocks, sb.total_inodes, sb.data_start)
                why = None if same else "does not match the primary"
            except CorruptError as e:
                why = str(e)
            if why and self.problem(f"backup superblock at block {blk}: {why}", fixable=True):
                self.writes[blk] = sb.pack(blk)

    async def check_journal(self) -> None:
        sb = self.sb
        j = Journal(self.dev, sb.journal_start, sb.journal_blocks, sb.uuid)
        try:
            images = await j.scan()
            self.journal = j
        except CorruptError as e:
            if self.problem(f"{e}: journal header unreadable; writing a new one", fixable=True):
                # the new sequence must be past every transaction and fast-commit record
                # still in the log, or an old one would replay over newer blocks
                seq = await self._last_lsn() + 1
                await write_blocks(self.dev, sb.journal_start,
                                   header_block(seq, 1, sb.journal_start, sb.uuid))
                await self.dev.flush()
            return
        if not images:
            return
        self.out(f"journal holds {len(images)} block image(s) to replay"
                 + ("; replaying" if self.repair else " (replayed in memory only, -n)"))
        for home, img in images:
            if not 0 <= home < sb.total_blocks:
                self.problem(f"journal: image for block {home} beyond the device")
                continue
            self.overlay[home] = img
        if self.repair:
            for home, img in self.overlay.items():
                await write_blocks(self.dev, home, img)
            await self.dev.flush()
            await write_blocks(self.dev, sb.journal_start,
                               header_block(j.seq, 1, sb.journal_start, sb.uuid), fua=True)
            self.overlay.clear()

    async def _last_lsn(self) -> int:
        """The highest sequence number any block of the journal or the fast-commit area
        of this filesystem carries."""
        sb = self.sb
        top = 0
        for start, n in ((sb.journal_start, sb.journal_blocks), (sb.fc_start, sb.fc_blocks)):
            for first in range(0, n, 256):
                k = min(256, n - first)
                data = await self.read(start + first, k)
                for i in range(k):
                    blk = data[i * BS:(i + 1) * BS]
                    kind = fmt.block_type(blk)
                    if kind is None:
                        continue
                    try:
                        top = max(top, fmt.verify(blk, kind, start + first + i, sb.uuid))
                    except CorruptError:
                        continue
        return top

    async def check_fast_commits(self) -> None:
        """Fast-commit records after the journal are replayed as mount does (in memory with
        -n; with -y through one journal transaction, so an interrupted fsck replays again).
        A record whose content contradicts the filesystem is reported and not applied."""
        sb = self.sb
        if self.journal is None:
            return                  # without the journal's sequence no record can be trusted
        lsn = self.journal.seq
        entries = await fastcommit.scan(self.read, sb, lsn)
        if not entries:
            return
        try:
            images = await fastcommit.replay_images(self.read, sb, entries, lsn)
        except PARSE_ERRORS as e:
            if self.problem(f"{e}; the fast-commit records are not applied", fixable=True):
                await write_blocks(self.dev, sb.fc_start, bytes(BS))
            return
        self.out(f"fast-commit area holds {len(entries)} inode record(s) to replay"
                 + ("; replaying" if self.repair else " (replayed in memory only, -n)"))
        if self.repair:
            j = self.journal
            await j.reset()
            await j.commit(images)
            for home, img in sorted(images.items()):
                await write_blocks(self.dev, home, img)
            await j.reset()
        else:
            self.overlay.update(images)
        self.sb = fmt.Superblock.unpack(images[0])

    async def load_bitmaps(self) -> None:
        sb = self.sb
        self.bbm = Bitmap(await self._read_bitmap(sb.bbitmap_start, sb.bbitmap_blocks,
                                                  "block bitmap"), sb.total_blocks)
        self.ibm = Bitmap(await self._read_bitmap(sb.ibitmap_start, sb.ibitmap_blocks,
                                                  "inode bitmap"), sb.total_inodes)

    async def _read_bitmap(self, start: int, n: int, kind: str) -> bytearray:
        """A bitmap's payloads; a block that fails verification is reported and counts as
        all free here (pass 5 writes it again from what the inodes hold)."""
        out = bytearray()
        for i in range(n):
            buf = await self.read(start + i)
            try:
                fmt.verify(buf, kind, start + i, self.sb.uuid)
                out += buf[fmt.HDR_SIZE:]
            except CorruptError as e:
                self.fix(f"{e}; rebuilding it")
                out += bytes(fmt.PAYLOAD)
                self.bad_bitmap = True
        return out

    # -- pass 5: bitmaps and counts --------------------------------------------------------
    def pass5_bitmaps(self) -> None:
        """The bitmaps say exactly which blocks and inodes are in use."""
        sb = self.sb
        used = self.used
        nbad = _differ(self.bbm.data, used.data)
        if nbad or self.bad_bitmap:
            if nbad:
                self.fix(f"block bitmap: {nbad} block(s) marked wrongly")
            for i in range(sb.bbitmap_blocks):
                blk = sb.bbitmap_start + i
                self.writes[blk] = fmt.seal(fmt.pack_bitmap_block(used.data, i, "block bitmap"),
                                            blk, sb.uuid)
        imap = Bitmap(bytearray(len(self.ibm.data)), sb.total_inodes)
        imap.dirty_blocks = None
        iused = imap.data
        for ino in list(self.inodes) + [0]:
            iused[ino >> 3] |= 1 << (ino & 7)
        imap.set_run(sb.total_inodes, len(iused) * 8 - sb.total_inodes, True)
        nbad = _differ(self.ibm.data, iused)
        if nbad or self.bad_bitmap:
            if nbad:
                self.fix(f"inode bitmap: {nbad} inode(s) marked wrongly")
            for i in range(sb.ibitmap_blocks):
                blk = sb.ibitmap_start + i
                self.writes[blk] = fmt.seal(fmt.pack_bitmap_block(iused, i, "inode bitmap"),
                                            blk, sb.uuid)

    def check_counts(self) -> None:
        sb = self.sb
        free_b = self.used.count_free()
        free_i = sb.total_inodes - len(self.inodes) - 1
        if (sb.free_blocks, sb.free_inodes) != (free_b, free_i):
            self.fix(f"superblock: free counts {sb.free_blocks} blocks / {sb.free_inodes} "
                     f"inodes, bitmaps say {free_b} / {free_i}")
            sb.free_blocks, sb.free_inodes = free_b, free_i
            self.sb_dirty = True
        if self.sb_dirty:
            self.writes[0] = sb.pack()

    async def stage_inodes(self) -> None:
        """The inode-table blocks holding changed or freed inodes, patched."""
        sb = self.sb
        slots: dict[int, list] = {}
        for ino in self.dirty | self.freed:
            slots.setdefault(fmt.inode_location(ino)[0], []).append(ino)
        for bi, inos in sorted(slots.items()):
            blk = sb.itable_start + bi
            buf = bytearray(await self.read(blk))
            for ino in inos:
                _, off = fmt.inode_location(ino)
                inode = self.inodes.get(ino)
                if inode is not None:
                    raw = inode.pack(sb.uuid)
                else:
                    raw = bytearray(fmt.INODE_SIZE)
                    raw = fmt.seal_inode(raw, ino, sb.uuid)
                buf[off:off + fmt.INODE_SIZE] = raw
            self.writes[blk] = bytes(buf)


def _differ(a, b) -> int:
    """Bits that differ between two bitmaps of the same length: one comparison when
    they agree, as they do on every check of a healthy filesystem (crashcheck runs
    fsck on every crash state), and one XOR of two big integers when not."""
    if a == b:
        return 0
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).bit_count()


async def check(dev, *, repair: bool = False, out=None) -> tuple[int, Checker]:
    """Check dev (repairing with repair=True); the exit code and the checker's findings."""
    c = Checker(dev, repair=repair, out=out)
    return await c.run(), c
