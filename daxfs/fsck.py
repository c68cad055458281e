"""Checking and repairing a daxfs image in one pass: the logic behind fsck.daxfs.

The checker reads every structure itself rather than through ``Filesystem``, so a damaged
image is described instead of refused. It replays the journal and the fast commits (in
memory with -n, onto the device with -y, as e2fsck does), then works in e2fsck's passes:

1.  every slot of the inode table is read: an inode that decodes and verifies is in use,
    whatever the inode bitmap says (a cleared bit is a bitmap error, never a dead inode);
    its extents are checked, the illegal ones cut, blocks beyond the size kept (the size
    grows to cover them, as e2fsck does) or, for what is not a regular file, cut.
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
4.  link counts and parent pointers follow the directories.
5.  the bitmaps and free counts are rebuilt from what the inodes hold.

Everything is computed in memory and written at the end (with -y), so a second ``-n`` finds
nothing. Exit codes are e2fsck's: 0 clean, 1 errors fixed, 4 errors left uncorrected, 8
operational error.
"""
import logging
import re
import stat
import struct

from . import acl
from . import fastcommit
from . import format as fmt
from .alloc import Bitmap
from .directory import dtype, parse_block
from .errors import CorruptError
from .fsck_dirs import Entry, blocks_needed, illegal, legal_name, pack_directory, \
    salvage_records
from .inode import Inode
from .journal import Journal, header_block, read_blocks, write_blocks

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FIXED, EXIT_UNCORRECTED, EXIT_OPERATIONAL = 0, 1, 4, 8
BS = fmt.BLOCK_SIZE
PARSE_ERRORS = (CorruptError, struct.error, ValueError, IndexError, OverflowError,
                UnicodeDecodeError, KeyError)
LOST_FOUND = b"lost+found"
ITABLE_CHUNK = 64               # inode-table blocks read at a time in pass 1
_MODE_OFF = fmt.INODE_FIXED_OFF
_ERRNO = re.compile(r"\[Errno \d+\] ")


class Checker:
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
        from .fs import read_superblock
        try:
            self.sb, why = await read_superblock(self.dev)
        except fmt.VersionError as e:
            self.out(str(e).replace("mount it with", "check it with"))
            return EXIT_OPERATIONAL
        except CorruptError as e:
            self.problem(f"{e}; cannot check further")
            return EXIT_UNCORRECTED
        if why and self.problem(f"{why}; restoring the primary from it", fixable=True):
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

    # -- pass 1: inodes and their blocks ---------------------------------------------------
    async def pass1_inodes(self) -> None:
        sb = self.sb
        self.inodes: dict[int, Inode] = {}
        self.dirty: set[int] = set()          # inodes to write (in use or freed)
        self.freed: set[int] = set()          # slots to write as free
        self.rechain: set[int] = set()        # inodes whose extent chain is written anew
        zero = bytes(BS)
        for first in range(0, sb.itable_blocks, ITABLE_CHUNK):
            n = min(ITABLE_CHUNK, sb.itable_blocks - first)
            chunk = await self.read(sb.itable_start + first, n)
            for bi in range(n):
                blk = chunk[bi * BS:(bi + 1) * BS]
                if blk == zero:
                    continue                    # never written (most of a young table)
                base = (first + bi) * fmt.INODES_PER_BLOCK
                for slot in range(fmt.INODES_PER_BLOCK):
                    ino = base + slot
                    if ino == 0 or ino >= sb.total_inodes:
                        continue
                    raw = blk[slot * fmt.INODE_SIZE:(slot + 1) * fmt.INODE_SIZE]
                    if raw[:2] == fmt.INODE_MAGIC and not any(raw[_MODE_OFF:_MODE_OFF + 4]):
                        continue                # a free slot (sealed or not, it holds nothing)
                    if raw[:2] != fmt.INODE_MAGIC and not any(raw):
                        continue                # never written
                    await self._inode_slot(ino, raw)

    async def _inode_slot(self, ino: int, raw: bytes) -> None:
        sb = self.sb
        try:
            inode = Inode.unpack(ino, raw, sb.uuid)
        except PARSE_ERRORS as e:
            if self.ibm.test(ino) or _sealed(raw, ino, sb.uuid):
                # in use by the bitmap, or sealed as ours with a mode the allocator would
                # refuse to hand out: either way it must become a free slot
                self.fix(f"inode {ino}: {e}; clearing it")
                self.freed.add(ino)
            # otherwise the slot holds nothing to keep (a stale slot of another filesystem,
            # or garbage) and is handed out as free, never read
            return
        n = inode.nextents_on_disk(raw)
        if n > fmt.INLINE_EXTENTS:
            await self._load_chain(inode, n)
        if not self.ibm.test(ino):
            self.out(f"inode {ino}: in use but marked free in the inode bitmap; keeping it")
        self.inodes[ino] = inode
        self._check_extents(inode)
        if inode.xattr_block and not sb.data_start <= inode.xattr_block < sb.total_blocks - 1:
            self.fix(f"inode {ino}: xattr block {inode.xattr_block} outside the data area; "
                     "dropping its xattrs")
            inode.xattr_block = 0
            self.dirty.add(ino)

    async def _load_chain(self, inode: Inode, n: int) -> None:
        """The extents of an inode's chain, as far as the chain can be trusted: a bad chain
        block loses the extents from it on (that part of the file becomes a hole) and the
        inode, with what it still maps, is kept."""
        sb = self.sb
        per = fmt.EXTENTS_PER_BLOCK
        chain, exts, err = [], [], None
        nxt = inode.extent_block
        while nxt:
            if not sb.data_start <= nxt < sb.total_blocks - 1 or nxt in chain or \
                    len(chain) >= -(-n // per):
                err = f"inode {inode.ino}: bad extent chain block {nxt}"
                break
            try:
                part, after = fmt.unpack_extent_block(await self.read(nxt), nxt, sb.uuid,
                                                      inode.ino)
            except PARSE_ERRORS as e:
                err = str(e)
                break
            chain.append(nxt)
            exts += part
            nxt = after
        if err is None and len(exts) != n:
            err = f"inode {inode.ino}: extent chain holds {len(exts)} extents, inode says {n}"
        inode.chain = chain
        inode.ext_lblk = [e[0] for e in exts]
        inode.ext_len = [e[1] for e in exts]
        inode.ext_pblk = [e[2] for e in exts]
        if err is not None:
            self.fix(f"{err}; keeping the {len(exts)} extent(s) read before it")
            self.rechain.add(inode.ino)
            self.dirty.add(inode.ino)

    def _check_extents(self, inode: Inode) -> None:
        """Illegal extents are cut, the rest kept; a regular file's size grows over blocks
        mapped beyond it, anything else loses those blocks; a directory's blocks are
        made contiguous from block 0 (its size is 4096 x blocks)."""
        sb = self.sb
        ino = inode.ino
        keep = []
        exts = list(inode.extents())
        if exts != sorted(exts):
            self.fix(f"inode {ino}: extents out of order; sorting them")
            exts.sort()
            self.dirty.add(ino)
        prev_end = 0
        for lblk, ln, pblk in exts:
            why = None
            if ln < 1 or lblk < prev_end or lblk + ln > fmt.MAX_FILE_BLOCKS:
                why = "overlaps another or is empty"
            elif pblk < sb.data_start or pblk + ln > sb.total_blocks - 1:
                why = "lies outside the data area"
            if why:
                self.fix(f"inode {ino}: extent ({lblk}, {ln}, {pblk}) {why}; cutting it")
                continue
            keep.append((lblk, ln, pblk))
            prev_end = lblk + ln
        if inode.is_dir:
            blocks = [p + i for _, ln, p in keep for i in range(ln)]
            want = _contiguous(blocks)
            if _merge(keep) != want or inode.size != len(blocks) * BS:
                self.fix(f"directory {ino}: size {inode.size} or holes disagree with its "
                         f"{len(blocks)} block(s); making them contiguous")
                keep = want
                inode.size = len(blocks) * BS
                self.dirty.add(ino)
        elif keep and keep[-1][0] + keep[-1][1] > -(-inode.size // BS):
            # the size is trusted: a write sets it before its blocks become reachable, and
            # nothing past it can be read, so cutting there loses nothing a user could see
            limit = -(-inode.size // BS)
            self.fix(f"inode {ino}: blocks mapped beyond its size {inode.size}; cutting them")
            keep = [(l, min(ln, limit - l), p) for l, ln, p in keep if l < limit]
        self._set_extents(inode, keep)

    def _set_extents(self, inode: Inode, exts) -> None:
        exts = list(exts)
        if exts != list(inode.extents()):
            self.dirty.add(inode.ino)
            self.rechain.add(inode.ino)
        inode.ext_lblk = [e[0] for e in exts]
        inode.ext_len = [e[1] for e in exts]
        inode.ext_pblk = [e[2] for e in exts]

    # -- pass 1B-1D: blocks claimed twice ---------------------------------------------------
    def pass1b_claims(self) -> None:
        """Who holds each block. The metadata regions are the filesystem's; data-area
        blocks go to the first inode (by number) that claims them."""
        sb = self.sb
        self.used = Bitmap(bytearray(len(self.bbm.data)), sb.total_blocks)
        self.used.dirty_blocks = None
        self.used.set_run(0, sb.data_start, True)
        self.used.set_run(sb.total_blocks - 1, 1, True)      # the second backup superblock
        nb = len(self.bbm.data) * 8
        if nb > sb.total_blocks:
            self.used.set_run(sb.total_blocks, nb - sb.total_blocks, True)
        self.owner: dict[int, int] = {}
        self.dups: dict[int, set] = {}
        self._cursor = sb.data_start           # where _alloc looks next
        for ino in sorted(self.inodes):
            inode = self.inodes[ino]
            for _, ln, pblk in inode.extents():
                for b in range(pblk, pblk + ln):
                    self._claim(ino, b)
            chain = list(inode.chain)
            for b in chain:
                if self.used.test(b) or ino in self.rechain:
                    # a shared or abandoned chain block: the chain is written anew
                    self.rechain.add(ino)
                    self.dirty.add(ino)
                    continue
                self._claim(ino, b)
            if inode.xattr_block:
                self._claim(ino, inode.xattr_block)

    def _claim(self, ino: int, b: int) -> None:
        if self.used.test(b):
            self.dups.setdefault(ino, set()).add(b)
        else:
            self.used.data[b >> 3] |= 1 << (b & 7)
            self.owner[b] = ino

    def _release(self, ino: int, b: int) -> None:
        if self.owner.get(b) == ino:
            del self.owner[b]
            self.used.data[b >> 3] &= ~(1 << (b & 7)) & 0xFF

    def _alloc(self, ino: int) -> int | None:
        """A free block of the data area for ino (None when there is none)."""
        sb = self.sb
        b = self.used.find_free(self._cursor, sb.total_blocks - 1)
        if b < 0:
            b = self.used.find_free(sb.data_start, sb.total_blocks - 1)
        if b < 0:
            return None
        self._cursor = b + 1
        self.used.data[b >> 3] |= 1 << (b & 7)
        self.owner[b] = ino
        return b

    async def pass1d_clone(self) -> None:
        """Every later claimant of a block gets its own copy (e2fsck's clone); with no
        free block, its extent is cut there (a hole) instead."""
        self.moved: dict[int, int] = {}       # new block -> the block it was copied from
        for ino in sorted(self.dups):
            inode = self.inodes[ino]
            dups = self.dups[ino]
            others = sorted({self.owner.get(b, 0) for b in dups})
            names = ", ".join("metadata" if o == 0 else f"inode {o}" for o in others)
            cloned = cut = 0
            exts = []
            kept: set = set()
            for lblk, ln, pblk in inode.extents():
                for i in range(ln):
                    b = pblk + i
                    if self.owner.get(b) == ino and b not in kept:
                        kept.add(b)             # its own first claim: the block stays
                        exts.append((lblk + i, 1, b))
                        continue
                    new = self._alloc(ino)
                    if new is None:
                        cut += 1
                        continue
                    self.moved[new] = self.moved.get(b, b)
                    if not inode.is_dir:
                        self.writes[new] = await self.read(b)
                    exts.append((lblk + i, 1, new))
                    cloned += 1
            if inode.xattr_block in dups:
                new = self._alloc(ino)
                try:
                    xattrs = fmt.unpack_xattrs(await self.read(inode.xattr_block),
                                               inode.xattr_block, self.sb.uuid)
                except PARSE_ERRORS:
                    xattrs = None
                if new is not None and xattrs is not None:
                    self.writes[new] = fmt.seal(fmt.pack_xattrs(xattrs), new, self.sb.uuid)
                    inode.xattr_block = new
                    cloned += 1
                else:
                    if new is not None:
                        self._release(ino, new)
                    inode.xattr_block = 0
                    cut += 1
            what = (f"cloned {cloned}" if cloned else "") + \
                (", " if cloned and cut else "") + \
                (f"cut {cut} (no free block to clone into)" if cut else "")
            self.fix(f"inode {ino}: {len(dups)} block(s) also claimed by {names}; {what}")
            if inode.is_dir:
                exts = [(i, 1, p) for i, (_, _, p) in enumerate(exts)]
                inode.size = len(exts) * BS
            self._set_extents(inode, _merge(exts))
            self.dirty.add(ino)

    # -- xattrs ---------------------------------------------------------------------------
    async def check_xattrs(self) -> None:
        """Every xattr block decodes, with known namespaces and sizes that add up."""
        for ino in sorted(self.inodes):
            inode = self.inodes[ino]
            if not inode.xattr_block:
                continue
            try:
                xattrs = fmt.unpack_xattrs(await self.read(inode.xattr_block),
                                           inode.xattr_block, self.sb.uuid)
            except PARSE_ERRORS as e:
                self.fix(f"inode {ino}: {e}; dropping its xattrs")
                self._release(ino, inode.xattr_block)
                inode.xattr_block = 0
                self.dirty.add(ino)
                continue
            self.check_acls(inode, xattrs)

    def check_acls(self, inode: Inode, xattrs: dict) -> None:
        """POSIX ACL xattrs parse and are valid (posix_acl_valid), a default ACL sits only
        on a directory, and an access ACL agrees with the mode's permission bits (the
        filesystem keeps them in step). A bad ACL is dropped (the mode alone then rules);
        a mode that disagrees takes the ACL's bits, as the last setfacl meant."""
        changed = False
        for name in acl.NAMES:
            value = xattrs.get(name)
            if value is None:
                continue
            try:
                ents = acl.parse(value)
                if name == acl.DEFAULT and not stat.S_ISDIR(inode.mode):
                    raise acl.AclError("default ACL on a non-directory")
            except acl.AclError as e:
                self.fix(f"inode {inode.ino}: {name.decode()}: {e}; dropping it")
                del xattrs[name]
                changed = True
                continue
            bits = acl.mode_bits(ents)
            if name == acl.ACCESS and inode.mode & 0o777 != bits:
                self.fix(f"inode {inode.ino}: mode {inode.mode & 0o777:o} disagrees with "
                         f"its access ACL ({bits:o})")
                inode.mode = (inode.mode & ~0o777) | bits
                self.dirty.add(inode.ino)
        if changed:
            b = inode.xattr_block
            if xattrs:
                self.writes[b] = fmt.seal(fmt.pack_xattrs(xattrs), b, self.sb.uuid)
            else:
                self._release(inode.ino, b)
                inode.xattr_block = 0
                self.dirty.add(inode.ino)

    # -- pass 2: directories --------------------------------------------------------------
    async def pass2_directories(self) -> None:
        self.dirs: dict[int, list[Entry]] = {}
        self.rebuild: set[int] = set()
        for ino in sorted(self.inodes):
            inode = self.inodes.get(ino)
            if inode is not None and inode.is_dir:
                await self._load_dir(inode)
        for dino in sorted(self.dirs):
            self._check_entries(dino)

    async def _load_dir(self, inode: Inode) -> None:
        entries: list[Entry] = []
        dino = inode.ino
        for bi in range(inode.size // BS):
            pblk, _ = inode.map(bi)
            src = self.moved.get(pblk, pblk)
            if src != pblk:
                self.rebuild.add(dino)
            buf = await self.read(src)
            try:
                fmt.verify(buf, "directory", src, self.sb.uuid)
                recs = list(parse_block(buf, f"directory {dino} block {bi}"))
            except PARSE_ERRORS as e:
                found = salvage_records(buf, self.inodes)
                self.fix(f"{e}; kept the {len(found)} entr{'y' if len(found) == 1 else 'ies'} "
                         "that still verify")
                entries += found
                self.rebuild.add(dino)
                continue
            for _off, child, h, _rec_len, ftype, name in recs:
                if child:
                    entries.append(Entry(name, child, ftype, h))
        self.dirs[dino] = entries

    def _check_entries(self, dino: int) -> None:
        keep = []
        taken = set()
        changed = False
        for e in self.dirs[dino]:
            target = self.inodes.get(e.ino)
            if target is None:
                self.fix(f"directory {dino}: entry {e.name!r} names inode {e.ino}, which is "
                         "not in use; removing it")
                changed = True
                continue
            if e.ftype != dtype(target.mode):
                self.fix(f"directory {dino}: entry {e.name!r} has type {e.ftype}, inode "
                         f"{e.ino} is {dtype(target.mode)}")
                e.ftype = dtype(target.mode)
                changed = True
            if e.hash != fmt.name_hash(e.name):
                self.fix(f"directory {dino}: entry {e.name!r} has a wrong hash")
                e.hash = fmt.name_hash(e.name)
                changed = True
            why = illegal(e.name) or ("is a duplicate" if e.name in taken else None)
            if why:
                new = legal_name(e.name, taken | {x.name for x in self.dirs[dino]})
                self.fix(f"directory {dino}: entry {e.name!r} (inode {e.ino}) {why}; "
                         f"renamed to {new!r}")
                e.name = new
                changed = True
            taken.add(e.name)
            keep.append(e)
        self.dirs[dino] = keep
        if changed:
            self.rebuild.add(dino)

    # -- orphans ----------------------------------------------------------------------------
    def check_orphans(self) -> None:
        """The orphan list holds in-use inodes with no name, without loops; fsck frees them
        as a mount would (routine, not an error)."""
        refs = self._refs()
        self.orphans: list[int] = []
        ino = self.sb.orphan_head
        seen = set()
        broken = False
        while ino:
            if ino in seen or ino not in self.inodes:
                self.fix(f"orphan list: {'loop at' if ino in seen else 'bad'} inode {ino}; "
                         "truncating the list")
                broken = True
                break
            seen.add(ino)
            if refs.get(ino):
                self.fix(f"orphan list: inode {ino} still has a name; keeping it")
                broken = True
            else:
                self.orphans.append(ino)
            ino = self.inodes[ino].orphan_next
        if self.orphans:
            self.out(f"{len(self.orphans)} orphan inode(s) "
                     + ("freed" if self.repair else "to free (as mount does)"))
        if self.repair and (self.orphans or broken):
            for o in self.orphans:
                self._free_inode(o)
            self.sb.orphan_head = 0
            self.sb_dirty = True
        elif broken:
            self.sb.orphan_head = 0
            self.sb_dirty = True
        if not self.repair:
            self.keep_orphans = set(self.orphans)

    def _refs(self) -> dict[int, int]:
        refs: dict[int, int] = {}
        for entries in self.dirs.values():
            for e in entries:
                refs[e.ino] = refs.get(e.ino, 0) + 1
        return refs

    # -- pass 3: connectivity -------------------------------------------------------------
    def pass3_connectivity(self) -> None:
        sb = self.sb
        root = self.inodes.get(sb.root_ino)
        if root is None or not root.is_dir:
            self.fix("root inode missing or not a directory; making a new root")
            if root is not None:
                self._free_inode(sb.root_ino)
            self._new_dir(sb.root_ino, sb.root_ino, 0o755)
        keep_orphans = self.keep_orphans
        # a directory has one name: the one its parent pointer agrees with, else the first
        named: dict[int, list[tuple[int, Entry]]] = {}
        for dino in sorted(self.dirs):
            for e in self.dirs[dino]:
                if self.inodes[e.ino].is_dir:
                    named.setdefault(e.ino, []).append((dino, e))
        self.parent_of: dict[int, int] = {}
        for child, names in sorted(named.items()):
            cands = [] if child == sb.root_ino else [(d, e) for d, e in names if d != child]
            pref = [(d, e) for d, e in cands if d == self.inodes[child].parent]
            first = (pref or cands or [None])[0]
            for d, e in names:
                if first is not None and d == first[0] and e is first[1]:
                    continue
                why = "the root" if child == sb.root_ino else \
                    "itself" if child == d else "a directory already named elsewhere"
                self.fix(f"directory {d}: entry {e.name!r} names {why} (inode {child}); "
                         "removing it (a directory has one name)")
                self.dirs[d] = [x for x in self.dirs[d] if x is not e]
                self.rebuild.add(d)
            if first is not None:
                self.parent_of[child] = first[0]
        lf = self._lost_found()
        reach = self._reachable()
        for ino in sorted(self.inodes):
            inode = self.inodes.get(ino)
            if inode is None or not inode.is_dir or ino in reach:
                continue
            if ino in keep_orphans:
                continue
            top, seen = ino, {ino}
            while self.parent_of.get(top) not in (None, sb.root_ino) and \
                    self.parent_of[top] not in reach and self.parent_of[top] not in seen:
                top = self.parent_of[top]
                seen.add(top)
            if top in reach:
                continue
            old = self.parent_of.get(top)
            if old is not None:
                self.dirs[old] = [x for x in self.dirs[old] if x.ino != top]
                self.rebuild.add(old)
            self._connect(lf, top)
            reach |= self._reachable(top)
        refs = self._refs()
        for ino in sorted(self.inodes):
            inode = self.inodes.get(ino)
            if inode is None or inode.is_dir or refs.get(ino) or ino in keep_orphans:
                continue
            if inode.nlink == 0:
                self.fix(f"inode {ino}: no links and no name (deleted while open); "
                         "freeing it")
                self._free_inode(ino)
                continue
            self._connect(lf, ino)

    def _reachable(self, start: int | None = None) -> set[int]:
        start = self.sb.root_ino if start is None else start
        seen = {start}
        todo = [start]
        while todo:
            d = todo.pop()
            for e in self.dirs.get(d, ()):
                if e.ino not in seen and self.parent_of.get(e.ino) == d:
                    seen.add(e.ino)
                    todo.append(e.ino)
        return seen

    def _lost_found(self) -> int | None:
        """lost+found's inode, made again when it is missing (e2fsck's pass 3 does)."""
        root = self.sb.root_ino
        for e in self.dirs[root]:
            if e.name == LOST_FOUND:
                if self.inodes[e.ino].is_dir and self.parent_of.get(e.ino) == root:
                    return e.ino
                self.fix(f"/lost+found (inode {e.ino}) is not a directory of the root; "
                         "unlinking it")
                self.dirs[root] = [x for x in self.dirs[root] if x is not e]
                self.rebuild.add(root)
                break
        free = self._free_ino()
        if free is None:
            self.problem("/lost+found not found, and no free inode to make it")
            return None
        self.fix(f"/lost+found not found; making it (inode {free})")
        self._new_dir(free, root, 0o700)
        self._add_entry(root, LOST_FOUND, free)
        self.parent_of[free] = root
        return free

    def _connect(self, lf: int | None, ino: int) -> None:
        inode = self.inodes[ino]
        if lf is None:
            self.problem(f"inode {ino}: in use but no directory names it, and there is no "
                         "lost+found to put it in")
            return
        name = b"#%d" % ino
        taken = {e.name for e in self.dirs[lf]}
        if name in taken:
            name = legal_name(name, taken)
        kind = "directory" if inode.is_dir else "inode"
        self.fix(f"{kind} {ino}: in use but no directory names it; connecting it to "
                 f"/lost+found as {name.decode()}")
        self._add_entry(lf, name, ino)
        if inode.is_dir:
            self.parent_of[ino] = lf

    def _add_entry(self, dino: int, name: bytes, ino: int) -> None:
        ft = dtype(self.inodes[ino].mode)
        self.dirs[dino].append(Entry(name, ino, ft, fmt.name_hash(name)))
        self.rebuild.add(dino)

    def _free_ino(self) -> int | None:
        for ino in range(2, self.sb.total_inodes):
            if ino not in self.inodes:
                return ino
        return None

    def _new_dir(self, ino: int, parent: int, mode: int) -> None:
        """A new, empty directory (the root or lost+found made again)."""
        import time
        d = Inode(ino)
        d.mode = stat.S_IFDIR | mode
        d.nlink = 2
        d.parent = parent
        d.generation = 1
        d.atime_ns = d.mtime_ns = d.ctime_ns = d.crtime_ns = time.time_ns()
        d.ext_lblk, d.ext_len, d.ext_pblk = [], [], []
        self.inodes[ino] = d
        self.freed.discard(ino)
        self.dirs[ino] = []
        self.rebuild.add(ino)
        self.dirty.add(ino)

    def _free_inode(self, ino: int) -> None:
        """Drop an inode and release the blocks it holds."""
        inode = self.inodes.pop(ino, None)
        if inode is None:
            return
        for _, ln, pblk in inode.extents():
            for b in range(pblk, pblk + ln):
                self._release(ino, b)
        for b in list(inode.chain) + ([inode.xattr_block] if inode.xattr_block else []):
            self._release(ino, b)
        self.dirs.pop(ino, None)
        self.rebuild.discard(ino)
        self.rechain.discard(ino)
        self.dirty.discard(ino)
        self.freed.add(ino)

    # -- pass 4: link counts and parents ---------------------------------------------------
    def pass4_links(self) -> None:
        refs = self._refs()
        subdirs: dict[int, int] = {}
        for dino, entries in self.dirs.items():
            subdirs[dino] = sum(1 for e in entries if self.inodes[e.ino].is_dir)
        root = self.sb.root_ino
        keep_orphans = self.keep_orphans
        for ino in sorted(self.inodes):
            inode = self.inodes[ino]
            if ino in keep_orphans:
                continue
            if inode.is_dir:
                want = 2 + subdirs.get(ino, 0)
                parent = root if ino == root else self.parent_of.get(ino, inode.parent)
                if inode.parent != parent:
                    self.fix(f"directory {ino}: parent pointer {inode.parent}, but it lives "
                             f"in {parent}")
                    inode.parent = parent
                    self.dirty.add(ino)
            else:
                want = refs.get(ino, 0)
            if inode.nlink != want:
                self.fix(f"inode {ino}: link count {inode.nlink}, should be {want}")
                inode.nlink = want
                self.dirty.add(ino)

    # -- writing directories and extent chains ---------------------------------------------
    def rebuild_directories(self) -> None:
        """Write every changed directory again whole from the entries it keeps, in the
        blocks it has (and more, allocated, when the entries need them)."""
        for dino in sorted(self.rebuild):
            inode = self.inodes.get(dino)
            if inode is None:
                continue
            entries = self.dirs[dino]
            have = [p for _, ln, p0 in inode.extents() for p in range(p0, p0 + ln)]
            need = blocks_needed(entries)
            while len(have) < need:
                b = self._alloc(dino)
                if b is None:
                    self.problem(f"directory {dino}: no free block to hold its entries")
                    break
                have.append(b)
            bufs = pack_directory(entries, len(have))
            for b, buf in zip(have, bufs):
                self.writes[b] = fmt.seal(buf, b, self.sb.uuid)
            self._set_extents(inode, _contiguous(have))
            inode.size = len(have) * BS
            self.dirty.add(dino)

    def rebuild_chains(self) -> None:
        """Inodes whose extents changed get their extent chain written again: the chain
        blocks they hold alone are reused, more are allocated, the rest released."""
        per = fmt.EXTENTS_PER_BLOCK
        for ino in sorted(self.rechain):
            inode = self.inodes.get(ino)
            if inode is None:
                continue
            n = len(inode.ext_lblk)
            need = 0 if n <= fmt.INLINE_EXTENTS else -(-n // per)
            mine = [b for b in inode.chain if self.owner.get(b) == ino]
            chain = mine[:need]
            for b in mine[need:]:
                self._release(ino, b)
            while len(chain) < need:
                b = self._alloc(ino)
                if b is None:
                    # no room for the chain: keep what the inode can map without it
                    self.problem(f"inode {ino}: no free block for its extent chain")
                    break
                chain.append(b)
            if len(chain) < need:
                keep = list(inode.extents())[:len(chain) * per or fmt.INLINE_EXTENTS]
                self._set_extents(inode, keep)
                if len(chain) * per < fmt.INLINE_EXTENTS:
                    chain = []
            exts = list(inode.extents())
            for k, blk in enumerate(chain):
                nxt = chain[k + 1] if k + 1 < len(chain) else 0
                self.writes[blk] = fmt.seal(fmt.pack_extent_block(exts[k * per:(k + 1) * per],
                                                                  nxt, ino), blk, self.sb.uuid)
            inode.chain = chain
            inode.extent_block = chain[0] if chain else 0
            self.dirty.add(ino)

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


def _sealed(raw, ino: int, uuid: bytes) -> bool:
    try:
        return fmt.verify_inode(raw, ino, uuid)
    except CorruptError:
        return False


def _differ(a, b) -> int:
    """Bits that differ between two bitmaps of the same length."""
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).bit_count()


def _contiguous(blocks: list[int]) -> list[tuple[int, int, int]]:
    """Extents mapping blocks (device block numbers, in file order) from file block 0."""
    return _merge([(i, 1, b) for i, b in enumerate(blocks)])


def _merge(exts) -> list[tuple[int, int, int]]:
    out: list[list[int]] = []
    for lblk, ln, pblk in exts:
        if out and out[-1][0] + out[-1][1] == lblk and out[-1][2] + out[-1][1] == pblk:
            out[-1][1] += ln
        else:
            out.append([lblk, ln, pblk])
    return [tuple(e) for e in out]


async def check(dev, *, repair: bool = False, out=None) -> tuple[int, Checker]:
    """Check dev (repairing with repair=True); the exit code and the checker's findings."""
    c = Checker(dev, repair=repair, out=out)
    return await c.run(), c
