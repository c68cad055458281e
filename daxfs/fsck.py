"""Checking (and repairing) a daxfs image: the logic behind fsck.daxfs.

The checker reads every structure itself rather than through ``Filesystem``, so a damaged
image is described instead of refused. It first replays the journal (into memory with -n,
onto the device with -y, as e2fsck does), then runs independent ``check_*`` passes that each
look at one structure or one cross-reference and report what is wrong. Repairs only ever
rebuild derived information (bitmaps, counts, link counts, the orphan list) or drop what
cannot be trusted (unreadable inodes, directory entries naming them); anything else is
reported as left uncorrected.

Exit codes are e2fsck's: 0 clean, 1 errors fixed, 4 errors left uncorrected, 8 operational
error.
"""
import logging
import stat
import struct

from . import acl
from . import format as fmt
from .alloc import Bitmap
from .directory import dtype, parse_block
from .format import DIRENT_FMT
from .errors import CorruptError
from .inode import Inode
from .journal import Journal, header_block, read_blocks, write_blocks
from . import fastcommit

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FIXED, EXIT_UNCORRECTED, EXIT_OPERATIONAL = 0, 1, 4, 8
BS = fmt.BLOCK_SIZE
PARSE_ERRORS = (CorruptError, struct.error, ValueError, IndexError, OverflowError,
                UnicodeDecodeError, KeyError)


class Checker:
    def __init__(self, dev, *, repair: bool = False, out=None):
        self.dev = dev
        self.repair = repair and not getattr(dev, "read_only", False)
        self.out = out or (lambda msg: None)
        self.errors: list[str] = []          # found and not fixed
        self.fixed: list[str] = []
        self.overlay: dict[int, bytes] = {}
        self.writes: dict[int, bytes] = {}   # repaired blocks to write back
        self.patches: list = []              # directory record changes to make
        self.journal: Journal | None = None

    # -- reporting -----------------------------------------------------------------------
    def problem(self, msg: str, fixable: bool = False) -> bool:
        """Record a problem; True when the caller should repair it."""
        if fixable and self.repair:
            self.fixed.append(msg)
            self.out(f"{msg}: fixed")
            return True
        self.errors.append(msg)
        self.out(msg)
        return False

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
        if total < 1:
            self.out("device too small to hold a daxfs")
            return EXIT_OPERATIONAL
        raw = await read_blocks(self.dev, 0)
        if raw[:8] != fmt.SB_MAGIC and (await read_blocks(self.dev, 1))[:8] != fmt.SB_MAGIC:
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
        await self.load()
        self.check_inodes()
        self.check_extents()
        self.check_directories()
        self.check_dir_index()
        await self.check_xattrs()
        self.check_nlink()
        self.check_orphans()
        self.check_connectivity()
        self.check_bitmaps()
        self.check_counts()
        if self.repair:
            await self.apply_patches()
        if self.writes:
            await self.write_back()
        if self.errors:
            return EXIT_UNCORRECTED
        return EXIT_FIXED if self.fixed else EXIT_OK

    async def write_back(self) -> None:
        for blk in sorted(self.writes):
            await write_blocks(self.dev, blk, self.writes[blk])
        await self.dev.flush()

    # -- passes --------------------------------------------------------------------------
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
            if self.problem(f"{e}: journal header unreadable", fixable=True):
                self.writes[sb.journal_start] = header_block(1, 1, sb.journal_start, sb.uuid)
                # the sequence starts over: no fast-commit record of the old one may match
                self.writes[sb.fc_start] = bytes(BS)
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
            self.problem(f"{e}; the fast-commit records are not applied")
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

    async def load(self) -> None:
        sb = self.sb
        self.bbm = Bitmap(await self._read_bitmap(sb.bbitmap_start, sb.bbitmap_blocks,
                                                  "block bitmap"), sb.total_blocks)
        self.ibm = Bitmap(await self._read_bitmap(sb.ibitmap_start, sb.ibitmap_blocks,
                                                  "inode bitmap"), sb.total_inodes)
        # inode-table blocks holding inodes in use, read as needed (the whole table of a
        # large device would not fit in memory)
        self.itable: dict[int, bytearray] = {}
        self.inodes: dict[int, Inode] = {}
        self.bad_inodes: set[int] = set()
        self.inode_errors: dict[int, str] = {}
        for ino in _set_bits(self.ibm.data, sb.total_inodes):
            if ino == 0:
                continue
            blk, off = fmt.inode_location(ino)
            if blk not in self.itable:
                self.itable[blk] = bytearray(await self.read(sb.itable_start + blk))
            raw = self.itable[blk][off:off + fmt.INODE_SIZE]
            try:
                inode = Inode.unpack(ino, raw, sb.uuid)
                n = inode.nextents_on_disk(raw)
                if n > fmt.INLINE_EXTENTS:
                    await inode.load_chain(n, sb, self.read)
                if stat.S_IFMT(inode.mode) not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK,
                                                   stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO,
                                                   stat.S_IFSOCK):
                    raise CorruptError(f"inode {ino}: bad file type {inode.mode:o}")
                self.inodes[ino] = inode
            except PARSE_ERRORS as e:
                self.bad_inodes.add(ino)
                self.inode_errors[ino] = str(e)
        self.dirs: dict[int, list] = {}       # ino -> [(name, child, ftype, block, off)]
        self.bad_dirs: set[int] = set()
        for ino, inode in self.inodes.items():
            if inode.is_dir:
                await self._load_dir(inode)

    async def _read_bitmap(self, start: int, n: int, kind: str) -> bytearray:
        """A bitmap's payloads; a block that fails verification counts as all free and is
        reported (check_bitmaps rebuilds it from what the inodes hold)."""
        out = bytearray()
        for i in range(n):
            buf = await self.read(start + i)
            try:
                fmt.verify(buf, kind, start + i, self.sb.uuid)
                out += buf[fmt.HDR_SIZE:]
            except CorruptError as e:
                self.problem(str(e), fixable=True)
                out += bytes(fmt.PAYLOAD)
        return out

    async def _load_dir(self, inode: Inode) -> None:
        entries = []
        nblocks = inode.size // BS
        if inode.size % BS:
            self.problem(f"directory {inode.ino}: size {inode.size} not a multiple of 4096")
        for bi in range(nblocks):
            pblk, _ = inode.map(bi)
            if not pblk or not self.sb.data_start <= pblk < self.sb.total_blocks - 1:
                self.problem(f"directory {inode.ino}: block {bi} unmapped")
                self.bad_dirs.add(inode.ino)
                continue
            buf = await self.read(pblk)
            try:
                fmt.verify(buf, "directory", pblk, self.sb.uuid)
                for off, child, h, rec_len, ftype, name in parse_block(buf, f"directory {inode.ino} block {bi}"):
                    if child:
                        entries.append([name, child, ftype, pblk, off, h])
            except PARSE_ERRORS as e:
                # drop what cannot be trusted: the block becomes empty, the names in it are
                # lost and the inodes they named are freed as unattached
                if self.problem(f"{e}; emptying the block", fixable=True):
                    from .directory import empty_block
                    self.writes[pblk] = fmt.seal(empty_block(), pblk, self.sb.uuid)
                    entries = [en for en in entries if en[3] != pblk]
                else:
                    self.bad_dirs.add(inode.ino)
        self.dirs[inode.ino] = entries

    def check_inodes(self) -> None:
        """Every inode the bitmap calls in use must decode and have a sane type."""
        for ino in sorted(self.bad_inodes):
            # clearing it = leaving it out of the rebuilt inode bitmap (check_bitmaps)
            if self.problem(f"inode {ino}: {self.inode_errors[ino]}; clearing it", fixable=True):
                self._write_slot(ino, bytes(fmt.INODE_SIZE))
        root = self.inodes.get(self.sb.root_ino)
        if root is None or not root.is_dir:
            self.problem("root inode missing or not a directory")

    def check_extents(self) -> None:
        """Extents in order, inside the data area, and no block owned twice."""
        sb = self.sb
        self.owner: dict[int, int] = {}
        self.used = Bitmap(bytearray(len(self.bbm.data)), sb.total_blocks)
        self.used.set_run(0, sb.data_start, True)
        self.used.set_run(sb.total_blocks - 1, 1, True)       # the second backup superblock
        nb = len(self.bbm.data) * 8
        if nb > sb.total_blocks:
            self.used.set_run(sb.total_blocks, nb - sb.total_blocks, True)
        used = self.used
        for ino, inode in list(self.inodes.items()):
            prev_end = 0
            runs = [(pblk, ln) for _, ln, pblk in inode.extents()]
            runs += [(b, 1) for b in inode.chain]
            if inode.xattr_block:
                runs.append((inode.xattr_block, 1))
            for lblk, ln, pblk in inode.extents():
                if ln < 1 or lblk < prev_end or lblk + ln > fmt.MAX_FILE_BLOCKS:
                    self.problem(f"inode {ino}: extent ({lblk}, {ln}, {pblk}) out of order")
                prev_end = lblk + ln
            if any(pblk < sb.data_start or pblk + ln > sb.total_blocks - 1 for pblk, ln in runs):
                if self.problem(f"inode {ino}: blocks outside the data area; clearing it",
                                fixable=True):
                    self._drop_bad_inode(ino)
                continue
            for pblk, ln in runs:
                for b in range(pblk, pblk + ln):
                    if used.data[b >> 3] & (1 << (b & 7)):
                        self.problem(f"inode {ino}: block {b} also used by inode "
                                     f"{self.owner.get(b, 'metadata')}")
                    else:
                        used.data[b >> 3] |= 1 << (b & 7)
                        self.owner[b] = ino
            if (inode.is_reg or inode.is_lnk) and inode.ext_lblk and \
                    inode.ext_lblk[-1] + inode.ext_len[-1] > -(-inode.size // BS):
                self.problem(f"inode {ino}: blocks mapped beyond its size {inode.size}")
        self._xattr_inodes = [i for i in self.inodes.values() if i.xattr_block]

    def check_directories(self) -> None:
        """Entries name inodes in use, with the right type; subdirectories point back."""
        self.refs: dict[int, int] = {}
        self.subdirs: dict[int, int] = {}
        self.parent_of: dict[int, int] = {}
        for dino, entries in self.dirs.items():
            keep = []
            for ent in entries:
                name, child, ftype, pblk, off, h = ent
                target = self.inodes.get(child)
                if target is None:
                    why = "a damaged inode" if child in self.bad_inodes else "a free inode"
                    if self.problem(f"directory {dino}: entry {name!r} names {why} {child}; "
                                    "removing it", fixable=True):
                        self._clear_entry(pblk, off)
                    continue
                if ftype != dtype(target.mode):
                    if self.problem(f"directory {dino}: entry {name!r} has type {ftype}, "
                                    f"inode {child} is {dtype(target.mode)}", fixable=True):
                        self._patch_entry(pblk, off, ftype=dtype(target.mode))
                keep.append(ent)
                self.refs[child] = self.refs.get(child, 0) + 1
                if target.is_dir:
                    self.subdirs[dino] = self.subdirs.get(dino, 0) + 1
                    if child in self.parent_of:
                        self.problem(f"directory {child} has two names "
                                     f"(in {self.parent_of[child]} and {dino})")
                    self.parent_of[child] = dino
                    if target.parent != dino:
                        if self.problem(f"directory {child}: parent pointer {target.parent}, "
                                        f"but it lives in {dino}", fixable=True):
                            target.parent = dino
                            self._write_inode(target)
            self.dirs[dino] = keep

    def check_dir_index(self) -> None:
        """The hash kept with each entry must be the hash of its name (the in-memory index
        is built from it), and a name may appear once per directory."""
        for dino, entries in self.dirs.items():
            seen = set()
            for name, child, ftype, pblk, off, h in entries:
                if h != fmt.name_hash(name):
                    if self.problem(f"directory {dino}: entry {name!r} has a wrong hash",
                                    fixable=True):
                        self._patch_entry(pblk, off, hash=fmt.name_hash(name))
                if name in seen:
                    self.problem(f"directory {dino}: duplicate entry {name!r}")
                if not name or b"/" in name or name in (b".", b".."):
                    self.problem(f"directory {dino}: invalid name {name!r}")
                seen.add(name)

    def check_nlink(self) -> None:
        """Link counts equal the directory entries naming each inode."""
        root = self.sb.root_ino
        for ino, inode in self.inodes.items():
            if inode.is_dir:
                want = 2 + self.subdirs.get(ino, 0) if (self.refs.get(ino) or ino == root) else 0
            else:
                want = self.refs.get(ino, 0)
            if inode.nlink != want and not (want == 0 and inode.nlink == 0):
                if want == 0:
                    continue                   # unattached: check_connectivity's business
                if self.problem(f"inode {ino}: link count {inode.nlink}, should be {want}",
                                fixable=True):
                    inode.nlink = want
                    self._write_inode(inode)

    def check_orphans(self) -> None:
        """The orphan list holds in-use inodes with no name, without loops; fsck frees them
        as a mount would."""
        self.orphans = []
        ino = self.sb.orphan_head
        seen = set()
        while ino:
            if ino in seen or ino not in self.inodes:
                self.problem(f"orphan list: {'loop at' if ino in seen else 'bad'} inode "
                             f"{ino}; truncating the list", fixable=True)
                break
            seen.add(ino)
            inode = self.inodes[ino]
            if self.refs.get(ino):
                self.problem(f"orphan list: inode {ino} still has a name")
            self.orphans.append(ino)
            ino = inode.orphan_next
        broken = bool(self.sb.orphan_head) and (ino != 0)
        if self.repair and (self.orphans or broken):
            # freeing orphans is routine (every mount does it): not counted as an error
            for o in self.orphans:
                self.out(f"orphan inode {o} freed")
                self._free_inode(o)
            self.sb.orphan_head = 0
            self.writes[0] = self.sb.pack()
        elif self.orphans:
            self.out(f"{len(self.orphans)} orphan inode(s) to free (as mount does)")

    def check_connectivity(self) -> None:
        """Every inode in use is reachable from the root or on the orphan list."""
        for ino, inode in list(self.inodes.items()):
            if ino == self.sb.root_ino or self.refs.get(ino) or ino in self.orphans:
                continue
            if self.problem(f"inode {ino}: in use but no directory names it; freeing it",
                            fixable=True):
                self._free_inode(ino)
        # directories unreachable from the root through parent links (a cycle)
        for ino, inode in self.inodes.items():
            if not inode.is_dir or ino not in self.parent_of:
                continue
            p, steps = ino, 0
            while p != self.sb.root_ino and steps <= len(self.inodes):
                p = self.parent_of.get(p, self.sb.root_ino)
                steps += 1
            if steps > len(self.inodes):
                self.problem(f"directory {ino}: not reachable from the root (cycle)")

    async def check_xattrs(self) -> None:
        """Every xattr block decodes, with known namespaces and sizes that add up."""
        for inode in self._xattr_inodes:
            if inode.ino not in self.inodes:
                continue
            try:
                xattrs = fmt.unpack_xattrs(await self.read(inode.xattr_block),
                                           inode.xattr_block, self.sb.uuid)
            except PARSE_ERRORS as e:
                if self.problem(f"inode {inode.ino}: {e}; dropping its xattrs", fixable=True):
                    b = inode.xattr_block
                    if self.owner.get(b) == inode.ino:
                        self.used.data[b >> 3] &= ~(1 << (b & 7)) & 0xFF
                    inode.xattr_block = 0
                    self._write_inode(inode)
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
                if self.problem(f"inode {inode.ino}: {name.decode()}: {e}; dropping it",
                                fixable=True):
                    del xattrs[name]
                    changed = True
                continue
            bits = acl.mode_bits(ents)
            if name == acl.ACCESS and inode.mode & 0o777 != bits:
                if self.problem(f"inode {inode.ino}: mode {inode.mode & 0o777:o} disagrees with "
                                f"its access ACL ({bits:o})", fixable=True):
                    inode.mode = (inode.mode & ~0o777) | bits
                    self._write_inode(inode)
        if changed:
            b = inode.xattr_block
            if xattrs:
                self.writes[b] = fmt.seal(fmt.pack_xattrs(xattrs), b, self.sb.uuid)
            else:
                if self.owner.get(b) == inode.ino:
                    self.used.data[b >> 3] &= ~(1 << (b & 7)) & 0xFF
                inode.xattr_block = 0
                self._write_inode(inode)

    def check_bitmaps(self) -> None:
        """The bitmaps say exactly which blocks and inodes are in use."""
        sb = self.sb
        used = self.used
        nbad = _differing_bits(self.bbm.data, used.data)
        if nbad and self.problem(f"block bitmap: {nbad} block(s) marked wrongly",
                                 fixable=True):
            self.bbm.data[:] = used.data
            for i in range(sb.bbitmap_blocks):
                blk = sb.bbitmap_start + i
                self.writes[blk] = fmt.seal(fmt.pack_bitmap_block(used.data, i, "block bitmap"),
                                            blk, sb.uuid)
        iused = bytearray(len(self.ibm.data))
        for ino in list(self.inodes) + [0]:
            iused[ino >> 3] |= 1 << (ino & 7)
        # the slots past the last inode read as in use
        whole = min((sb.total_inodes + 7) >> 3, len(iused))
        for b in range(sb.total_inodes, whole * 8):
            iused[b >> 3] |= 1 << (b & 7)
        iused[whole:] = b"\xff" * (len(iused) - whole)
        nbad = _differing_bits(self.ibm.data, iused)
        if nbad and self.problem(f"inode bitmap: {nbad} inode(s) marked wrongly",
                                 fixable=True):
            self.ibm.data[:] = iused
            for i in range(sb.ibitmap_blocks):
                blk = sb.ibitmap_start + i
                self.writes[blk] = fmt.seal(fmt.pack_bitmap_block(iused, i, "inode bitmap"),
                                            blk, sb.uuid)

    def check_counts(self) -> None:
        sb = self.sb
        free_b = self.used.count_free()
        free_i = sb.total_inodes - len(self.inodes) - 1
        if (sb.free_blocks, sb.free_inodes) != (free_b, free_i):
            if self.problem(f"superblock: free counts {sb.free_blocks} blocks / "
                            f"{sb.free_inodes} inodes, bitmaps say {free_b} / {free_i}",
                            fixable=True):
                sb.free_blocks, sb.free_inodes = free_b, free_i
                self.writes[0] = sb.pack()

    # -- repair helpers ------------------------------------------------------------------
    def _free_inode(self, ino: int) -> None:
        """Drop an inode: its blocks become free when the bitmap is rebuilt."""
        inode = self.inodes.pop(ino, None)
        if inode is None:
            return
        for _, ln, pblk in inode.extents():
            for b in range(pblk, pblk + ln):
                if self.owner.get(b) == ino:
                    self.used.data[b >> 3] &= ~(1 << (b & 7)) & 0xFF
        for b in list(inode.chain) + ([inode.xattr_block] if inode.xattr_block else []):
            if self.owner.get(b) == ino:
                self.used.data[b >> 3] &= ~(1 << (b & 7)) & 0xFF
        inode.mode = 0
        self._write_slot(ino, bytes(fmt.INODE_SIZE))

    def _drop_bad_inode(self, ino: int) -> None:
        """Forget an inode that cannot be trusted before its blocks were counted: entries
        naming it are removed and it drops out of the rebuilt bitmaps."""
        self.inodes.pop(ino, None)
        self.bad_inodes.add(ino)
        self._write_slot(ino, bytes(fmt.INODE_SIZE))

    def _write_inode(self, inode: Inode) -> None:
        self._write_slot(inode.ino, inode.pack(self.sb.uuid))

    def _write_slot(self, ino: int, raw: bytes) -> None:
        sb = self.sb
        blk, off = fmt.inode_location(ino)
        buf = self.itable[blk]          # loaded: only inodes that were read get rewritten
        buf[off:off + fmt.INODE_SIZE] = raw
        self.writes[sb.itable_start + blk] = bytes(buf)

    def _clear_entry(self, pblk: int, off: int) -> None:
        self._patch_entry(pblk, off, ino=0)

    def _patch_entry(self, pblk: int, off: int, **fields) -> None:
        """Queue a change to one directory record (applied by apply_patches, which needs
        to read the block, so it runs after the synchronous passes)."""
        self.patches.append((pblk, off, fields))

    async def apply_patches(self) -> None:
        for pblk, off, f in self.patches:
            buf = bytearray(self.writes.get(pblk) or await self.read(pblk))
            ino, h, rec_len, ftype, nlen = DIRENT_FMT.unpack_from(buf, off)
            new_ino = f.get("ino", ino)
            DIRENT_FMT.pack_into(buf, off, new_ino, f.get("hash", h), rec_len,
                                 f.get("ftype", ftype), nlen if new_ino else 0)
            self.writes[pblk] = fmt.seal(buf, pblk, self.sb.uuid)


def _differing_bits(a, b) -> int:
    """How many bits differ between two bitmaps (over the shorter): one comparison when
    they agree, as they do on every check of a healthy filesystem, and one XOR of two big
    integers when not, instead of a Python loop per byte."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return 0
    return (int.from_bytes(a[:n], "little") ^ int.from_bytes(b[:n], "little")).bit_count()


def _set_bits(data, nbits: int):
    """Numbers of the set bits below nbits, skipping zero bytes quickly."""
    for i, byte in enumerate(data[:(nbits + 7) // 8]):
        if byte:
            for k in range(8):
                if byte & (1 << k) and i * 8 + k < nbits:
                    yield i * 8 + k


async def check(dev, *, repair: bool = False, out=None) -> tuple[int, Checker]:
    """Check dev (repairing with repair=True); the exit code and the checker's findings."""
    c = Checker(dev, repair=repair, out=out)
    return await c.run(), c
