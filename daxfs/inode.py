"""In-memory inodes: the objects the filesystem works on, and their on-device encoding.

An ``Inode`` holds the fields of the on-device inode (see format.INODE_FMT) plus the file's
extent list, decoded once when the inode is loaded, so the read path translates offsets
without touching the device. It knows when it is dirty: the filesystem collects dirty
inodes into the running transaction and encodes them at commit.
"""
import bisect
import stat

from . import format as fmt
from .errors import CorruptError


_NONE = ()


FILE_TYPES = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO,
              stat.S_IFSOCK)


class Inode:
    __slots__ = ("ino", "mode", "uid", "gid", "nlink", "size", "atime_ns", "mtime_ns",
                 "ctime_ns", "crtime_ns", "flags", "generation", "rdev", "extent_block",
                 "xattr_block", "orphan_next", "parent",
                 # extents as three parallel lists sorted by lblk: bisect on ext_lblk
                 "ext_lblk", "ext_len", "ext_pblk",
                 "chain", "extents_dirty",  # device blocks of the extent chain, in order
                 "dirty",                   # changed since the last commit
                 # fast commits: changed since durable / beyond timestamps / not expressible
                 "fc_dirty", "fc_meta", "fc_ineligible",
                 "fc_ranges",               # file blocks remapped since then: [start, end)
                 "xattrs", "dir",           # decoded lazily
                 "s_dax", "sync_mode",      # in-core: DAX now (S_DAX), synchronous writes
                 "ilock")                   # serialises changes to its data and size

    def __init__(self, ino: int):
        self.ino = ino
        self.mode = self.uid = self.gid = self.nlink = self.size = 0
        self.atime_ns = self.mtime_ns = self.ctime_ns = self.crtime_ns = 0
        self.flags = self.generation = self.rdev = 0
        self.extent_block = self.xattr_block = self.orphan_next = self.parent = 0
        # most files have few or no extents: share one empty tuple until the first one
        self.ext_lblk: list[int] = _NONE
        self.ext_len: list[int] = _NONE
        self.ext_pblk: list[int] = _NONE
        self.chain: list[int] = _NONE
        self.extents_dirty = False
        self.dirty = False
        self.fc_dirty = self.fc_meta = self.fc_ineligible = False
        self.fc_ranges = None
        self.xattrs = None
        self.dir = None
        self.s_dax = None       # decided when the inode comes into use, kept while open
        self.sync_mode = False
        self.ilock = None

    async def load_chain(self, n: int, sb, read) -> None:
        """Read the extent chain of an inode with ``n`` extents beyond the inline ones;
        ``read(blk)`` gives a block. Refuses chains that leave the data area, loop, or
        hold a different number of extents than the inode says."""
        nxt = self.extent_block
        while nxt:
            if not sb.data_start <= nxt < sb.total_blocks or nxt in self.chain \
                    or len(self.chain) * fmt.EXTENTS_PER_BLOCK > n:
                raise CorruptError(f"inode {self.ino}: bad extent chain block {nxt}")
            self.chain.append(nxt)
            exts, nxt = fmt.unpack_extent_block(await read(nxt), nxt, sb.uuid, self.ino)
            for lblk, ln, pblk in exts:
                self.ext_lblk.append(lblk)
                self.ext_len.append(ln)
                self.ext_pblk.append(pblk)
        if len(self.ext_lblk) != n:
            raise CorruptError(f"inode {self.ino}: extent chain holds {len(self.ext_lblk)} "
                               f"extents, inode says {n}")

    # -- encoding ------------------------------------------------------------------------
    def pack(self, uuid: bytes = bytes(16)) -> bytes:
        buf = bytearray(fmt.INODE_SIZE)
        n = len(self.ext_lblk)
        split = fmt.split_time
        (a_s, a_n), (m_s, m_n), (c_s, c_n), (b_s, b_n) = (
            split(self.atime_ns), split(self.mtime_ns), split(self.ctime_ns),
            split(self.crtime_ns))
        fmt.INODE_FMT.pack_into(
            buf, fmt.INODE_FIXED_OFF, self.mode, self.uid, self.gid, self.nlink, self.size,
            a_s, m_s, c_s, b_s, a_n, m_n, c_n, b_n, self.flags, self.generation,
            self.rdev, n, 0, self.chain[0] if self.chain else 0, self.xattr_block,
            self.orphan_next, self.parent)
        if n <= fmt.INLINE_EXTENTS:
            off = fmt.INODE_EXTENTS_OFF
            for i in range(n):
                fmt.EXTENT_FMT.pack_into(buf, off, self.ext_lblk[i], self.ext_len[i],
                                         self.ext_pblk[i])
                off += fmt.EXTENT_FMT.size
        return fmt.seal_inode(buf, self.ino, uuid)

    @classmethod
    def unpack(cls, ino: int, buf, uuid: bytes | None = None) -> "Inode":
        """Decode a used inode slot; the extent chain (if any) is read by the caller."""
        if not fmt.verify_inode(buf, ino, uuid):
            raise CorruptError(f"inode {ino}: marked in use but its slot is empty")
        i = cls(ino)
        (i.mode, i.uid, i.gid, i.nlink, i.size, a_s, m_s, c_s, b_s, a_n, m_n, c_n, b_n,
         i.flags, i.generation, i.rdev, n, _pad, i.extent_block, i.xattr_block,
         i.orphan_next, i.parent) = fmt.INODE_FMT.unpack_from(buf, fmt.INODE_FIXED_OFF)
        if max(a_n, m_n, c_n, b_n) >= 10**9:
            raise CorruptError(f"inode {ino}: nanoseconds out of range")
        i.atime_ns = a_s * 10**9 + a_n
        i.mtime_ns = m_s * 10**9 + m_n
        i.ctime_ns = c_s * 10**9 + c_n
        i.crtime_ns = b_s * 10**9 + b_n
        if i.mode == 0:
            raise CorruptError(f"inode {ino}: marked in use but its slot is free")
        if stat.S_IFMT(i.mode) not in FILE_TYPES:
            # The kernel would refuse such attributes itself (EIO, and nothing in our log):
            # name the damage here instead, as ext4 does for an inode of unknown type.
            raise CorruptError(f"inode {ino}: mode {i.mode:#o} has no valid file type")
        if n <= fmt.INLINE_EXTENTS:
            if i.extent_block:
                raise CorruptError(f"inode {ino}: extent chain with only {n} extents")
            off = fmt.INODE_EXTENTS_OFF
            if n:
                i.ext_lblk, i.ext_len, i.ext_pblk = [], [], []
            for _ in range(n):
                lblk, ln, pblk = fmt.EXTENT_FMT.unpack_from(buf, off)
                i.ext_lblk.append(lblk); i.ext_len.append(ln); i.ext_pblk.append(pblk)
                off += fmt.EXTENT_FMT.size
        elif not i.extent_block:
            raise CorruptError(f"inode {ino}: {n} extents but no extent chain")
        else:
            i.ext_lblk, i.ext_len, i.ext_pblk, i.chain = [], [], [], []
        return i

    @staticmethod
    def nextents_on_disk(buf) -> int:
        """The extent count of an encoded inode (its extents may be in the chain)."""
        return fmt.INODE_FMT.unpack_from(buf, fmt.INODE_FIXED_OFF)[16]

    # -- file type helpers ---------------------------------------------------------------
    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_lnk(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def blocks(self) -> int:
        """Allocated 4 KiB blocks (data, extent chain, xattr) for st_blocks."""
        return sum(self.ext_len) + len(self.chain) + (1 if self.xattr_block else 0)

    # -- extents -------------------------------------------------------------------------
    def map(self, lblk: int) -> tuple[int, int]:
        """(pblk, run) for file block lblk: run blocks are contiguous from there;
        pblk 0 means a hole of `run` blocks (run 0: hole to the end of the file)."""
        lb = self.ext_lblk
        i = bisect.bisect_right(lb, lblk) - 1
        if i >= 0:
            off = lblk - lb[i]
            ln = self.ext_len[i]
            if off < ln:
                return self.ext_pblk[i] + off, ln - off
        if i + 1 < len(lb):
            return 0, lb[i + 1] - lblk
        return 0, 0

    def add_extent(self, lblk: int, n: int, pblk: int) -> None:
        """Map n blocks at lblk (which must be a hole) to pblk.., merging with neighbours."""
        if self.ext_lblk is _NONE:
            self.ext_lblk, self.ext_len, self.ext_pblk = [], [], []
        lb, ll, lp = self.ext_lblk, self.ext_len, self.ext_pblk
        i = bisect.bisect_right(lb, lblk)
        # merge with the previous extent when logically and physically contiguous
        if i > 0 and lb[i - 1] + ll[i - 1] == lblk and lp[i - 1] + ll[i - 1] == pblk:
            ll[i - 1] += n
            if i < len(lb) and lblk + n == lb[i] and pblk + n == lp[i]:
                ll[i - 1] += ll[i]
                del lb[i], ll[i], lp[i]
        elif i < len(lb) and lblk + n == lb[i] and pblk + n == lp[i]:
            lb[i] = lblk; ll[i] += n; lp[i] = pblk
        else:
            lb.insert(i, lblk); ll.insert(i, n); lp.insert(i, pblk)
        self.extents_dirty = True
        self.remapped(lblk, lblk + n)

    def truncate_extents(self, nblocks: int) -> list[tuple[int, int]]:
        """Drop every mapping at or beyond file block nblocks; return freed (pblk, n) runs."""
        lb, ll, lp = self.ext_lblk, self.ext_len, self.ext_pblk
        freed = []
        old_end = lb[-1] + ll[-1] if lb else 0
        while lb and lb[-1] + ll[-1] > nblocks:
            if lb[-1] >= nblocks:
                freed.append((lp[-1], ll[-1]))
                lb.pop(); ll.pop(); lp.pop()
            else:
                keep = nblocks - lb[-1]
                freed.append((lp[-1] + keep, ll[-1] - keep))
                ll[-1] = keep
                break
        if freed:
            self.extents_dirty = True
            self.remapped(nblocks, old_end)
        return freed

    def punch_extents(self, lblk: int, n: int) -> list[tuple[int, int]]:
        """Unmap file blocks lblk..lblk+n-1 (mapped or not); return freed (pblk, n) runs."""
        if self.ext_lblk is _NONE:
            return []
        lb, ll, lp = self.ext_lblk, self.ext_len, self.ext_pblk
        end = lblk + n
        i = bisect.bisect_right(lb, lblk) - 1
        if i < 0 or lb[i] + ll[i] <= lblk:
            i += 1
        freed = []
        while i < len(lb) and lb[i] < end:
            s, e, p = lb[i], lb[i] + ll[i], lp[i]
            cut_s, cut_e = max(s, lblk), min(e, end)
            freed.append((p + cut_s - s, cut_e - cut_s))
            keep = ([(s, cut_s - s, p)] if s < cut_s else []) + \
                ([(cut_e, e - cut_e, p + cut_e - s)] if cut_e < e else [])
            lb[i:i + 1] = [k[0] for k in keep]
            ll[i:i + 1] = [k[1] for k in keep]
            lp[i:i + 1] = [k[2] for k in keep]
            i += len(keep)
        if freed:
            self.extents_dirty = True
            self.remapped(lblk, end)
        return freed

    # The most ranges an inode collects before fsync stops trying a fast commit for it: a
    # record that carried more would not fit its block anyway.
    FC_MAX_RANGES = 256

    def remapped(self, start: int, end: int) -> None:
        """File blocks [start, end) changed their mapping: the next fast-commit record of
        this inode carries their mapping as it is then (fastcommit.py)."""
        r = self.fc_ranges
        if r is None:
            self.fc_ranges = [[start, end]]
            return
        last = r[-1]
        if last[0] <= end and start <= last[1]:     # appends and rewrites of the last range
            last[0] = min(last[0], start)
            last[1] = max(last[1], end)
            return
        r.append([start, end])
        if len(r) > self.FC_MAX_RANGES:
            r[:] = merge_ranges(r)
            if len(r) > self.FC_MAX_RANGES:
                self.fc_ranges = None
                self.fc_ineligible = True           # until the next full commit

    def extents(self):
        return zip(self.ext_lblk, self.ext_len, self.ext_pblk)

    def mapping(self, start: int, end: int):
        """(lblk, n, pblk) pieces covering file blocks [start, end): pblk 0 is a hole."""
        lblk = start
        while lblk < end:
            pblk, run = self.map(lblk)
            n = end - lblk if run == 0 else min(run, end - lblk)
            yield lblk, n, pblk
            lblk += n


def merge_ranges(ranges) -> list[list[int]]:
    """[start, end) ranges sorted, with overlapping and touching ones joined."""
    out: list[list[int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out
