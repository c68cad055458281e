"""fsck.daxfs's passes over inodes and their blocks (e2fsck's passes 1 and 1B-1D), and the
writing of extent chains; a mixin of ``fsck.Checker``, whose docstring gives the order.

Pass 1 reads every slot of the inode table and keeps every inode that verifies; its extents
are checked and the illegal ones cut. Passes 1B-1D find the blocks claimed twice and give
each later claimant a copy (or, with no free block, a hole). The claims they build
(``used``, ``owner``) are what pass 5 writes as the block bitmap.
"""
import stat
import struct

from . import acl
from . import format as fmt
from .alloc import Bitmap
from .errors import CorruptError
from .inode import Inode
from .itable_scan import inode_slots

BS = fmt.BLOCK_SIZE
PARSE_ERRORS = (CorruptError, struct.error, ValueError, IndexError, OverflowError,
                UnicodeDecodeError, KeyError)
_MODE_OFF = fmt.INODE_FIXED_OFF


class InodePasses:
    async def pass1_inodes(self) -> None:
        sb = self.sb
        self.inodes: dict[int, Inode] = {}
        self.dirty: set[int] = set()          # inodes to write (in use or freed)
        self.freed: set[int] = set()          # slots to write as free
        self.rechain: set[int] = set()        # inodes whose extent chain is written anew
        async for ino, raw in inode_slots(self.read, sb):
            if raw[:2] == fmt.INODE_MAGIC and not any(raw[_MODE_OFF:_MODE_OFF + 4]):
                continue                        # a free slot (sealed or not, it holds nothing)
            if raw[:2] != fmt.INODE_MAGIC and not any(raw):
                continue                        # never written
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


def _sealed(raw, ino: int, uuid: bytes) -> bool:
    try:
        return fmt.verify_inode(raw, ino, uuid)
    except CorruptError:
        return False


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

