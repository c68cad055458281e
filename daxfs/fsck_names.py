"""fsck.daxfs's passes over names (e2fsck's passes 2, 3 and 4): directories, the orphan
list, connectivity and lost+found, link counts; a mixin of ``fsck.Checker``, whose
docstring gives the order. How a directory block is salvaged and written again is in
fsck_dirs.py.
"""
import stat
import time

from . import format as fmt
from .directory import dtype, parse_block
from .fsck_dirs import Entry, blocks_needed, illegal, legal_name, pack_directory, \
    salvage_records
from .fsck_inodes import PARSE_ERRORS, _contiguous
from .inode import Inode

BS = fmt.BLOCK_SIZE
LOST_FOUND = b"lost+found"


class NamePasses:
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

