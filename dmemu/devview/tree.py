"""The view's inodes: directories, device files and LVM symlinks that follow dmemud.

``Tree.update`` takes the entries ``names.entries`` computed from dmemud's lists and turns
them into stable inodes (a device keeps its inode while it lives, through renames and
resizes) and returns what changed, so that the mount can tell the kernel to drop what it
cached. A node that disappears stays known by inode number until the kernel forgets it and
every open file of it is closed, because the kernel may still ask about it until then.
"""
import logging
import stat
import time
from dataclasses import dataclass, field

import pyfuse3

from .names import MAPPER, DeviceEntry, LinkEntry

log = logging.getLogger(__name__)

ROOT = pyfuse3.ROOT_INODE


class Node:
    __slots__ = ("inode", "kind", "key", "parent", "name", "ident", "size", "read_only",
                 "target", "mtime_ns", "lookups", "opens", "gone")

    def __init__(self, inode, kind, key, parent, name, *, ident=None, size=0, read_only=False,
                 target=None):
        self.inode = inode
        self.kind = kind            # "dir", "dev" or "link"
        self.key = key
        self.parent = parent        # inode of the directory that holds it
        self.name = name
        self.ident = ident          # what dmemud opens it by
        self.size = size            # bytes, for devices
        self.read_only = read_only
        self.target = target        # for links
        self.mtime_ns = time.time_ns()
        self.lookups = 0            # references the kernel holds (lookup minus forget)
        self.opens = 0              # open files of this node
        self.gone = False

    def attributes(self, uid: int, gid: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = self.inode
        if self.kind == "dir":
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFDIR | 0o755, 2, 0
        elif self.kind == "link":
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFLNK | 0o777, 1, len(self.target)
        else:
            # Block devices are root:disk 0660 in Linux; a read-only device loses its write bits.
            a.st_mode = stat.S_IFREG | (0o440 if self.read_only else 0o660)
            a.st_nlink, a.st_size = (0 if self.gone else 1), self.size
        a.st_uid, a.st_gid = uid, gid
        a.st_blksize = 4096
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.mtime_ns
        a.generation = 0
        # Zero timeouts: every path walk and stat asks again, so a device removed or resized
        # a moment ago is never shown from the kernel's caches (a lookup costs one round trip
        # to dmemud only when its device generation moved).
        a.entry_timeout = 0
        a.attr_timeout = 0
        return a


@dataclass
class Changes:
    """What an update did, for the kernel's caches: entries to drop, inodes to re-read."""
    gone: list = field(default_factory=list)        # (parent inode, name, inode): device removed
    moved: list = field(default_factory=list)       # (parent inode, old name, inode): renamed
    resized: list = field(default_factory=list)     # inodes whose size changed
    added: list = field(default_factory=list)       # (parent inode, name, inode)

    def __bool__(self):
        return bool(self.gone or self.moved or self.resized or self.added)


class Tree:
    def __init__(self):
        self.nodes: dict[int, Node] = {}
        self.children: dict[int, dict[str, int]] = {}
        self._by_key: dict[tuple, int] = {}
        self._next = ROOT + 1
        self._mkdir(ROOT, ("dir", ""), ROOT, "")
        self.mapper = self._mkdir(None, ("dir", MAPPER), ROOT, MAPPER).inode

    # -- building --------------------------------------------------------------------------

    def _new(self, key, kind, parent, name, **kw) -> Node:
        inode = self._next
        self._next += 1
        node = Node(inode, kind, key, parent, name, **kw)
        self.nodes[inode] = node
        self._by_key[key] = inode
        return node

    def _mkdir(self, inode, key, parent, name) -> Node:
        if inode is None:
            node = self._new(key, "dir", parent, name)
        else:
            node = self.nodes[inode] = Node(inode, "dir", key, parent, name)
            self._by_key[key] = inode
        self.children[node.inode] = {}
        if node.inode != ROOT:
            self.children[parent][name] = node.inode
        return node

    def update(self, devices: list[DeviceEntry], links: list[LinkEntry]) -> Changes:
        """Make the tree show exactly these entries; say what changed."""
        changes = Changes()
        wanted: dict[tuple, tuple] = {}       # key -> (kind, parent inode, name, attrs)
        for d in devices:
            parent = ROOT if d.parent == "" else self.mapper
            wanted[d.key] = ("dev", parent, d.name, d)
        vgs = sorted({lk.vg for lk in links})
        for vg in vgs:
            wanted[("dir", "vg", vg)] = ("dir", ROOT, vg, None)
        for lk in links:
            wanted[("link", lk.vg, lk.lv, lk.target)] = ("link", ("dir", "vg", lk.vg), lk.lv, lk)

        # Removals and renames first, so a name freed by one device can be taken by another.
        for key, inode in list(self._by_key.items()):
            node = self.nodes.get(inode)
            if node is None or node.inode in (ROOT, self.mapper) or node.gone:
                continue
            want = wanted.get(key)
            if want is None or self._parent_inode(want[1]) != node.parent or want[2] != node.name:
                self.children[node.parent].pop(node.name, None)
                if want is None:
                    changes.gone.append((node.parent, node.name, node.inode))
                    self._retire(node)
                else:
                    changes.moved.append((node.parent, node.name, node.inode))
                    node.name = None            # re-linked below under its new name
        for key, (kind, parent, name, entry) in wanted.items():
            parent = self._parent_inode(parent)
            inode = self._by_key.get(key)
            node = self.nodes.get(inode) if inode is not None else None
            if node is None or node.gone:
                if kind == "dir":
                    node = self._mkdir(None, key, parent, name)
                else:
                    node = self._new(key, kind, parent, name)
                    self._set(node, entry)
                    self.children[parent][name] = node.inode
                changes.added.append((parent, name, node.inode))
                continue
            if node.name is None:
                node.name = name
                self.children[parent][name] = node.inode
                changes.added.append((parent, name, node.inode))
            if kind == "dev" and (node.size, node.read_only, node.ident) != (entry.size, entry.read_only, entry.ident):
                self._set(node, entry)
                node.mtime_ns = time.time_ns()
                changes.resized.append(node.inode)
        return changes

    def _parent_inode(self, parent) -> int:
        return parent if isinstance(parent, int) else self._by_key.get(parent)

    @staticmethod
    def _set(node: Node, entry) -> None:
        if isinstance(entry, DeviceEntry):
            node.ident, node.size, node.read_only = entry.ident, entry.size, entry.read_only
        else:
            node.target = entry.target

    def _retire(self, node: Node) -> None:
        node.gone = True
        del self._by_key[node.key]
        if node.kind == "dir":
            for name, child in list(self.children.get(node.inode, {}).items()):
                self._retire(self.nodes[child])
            self.children.pop(node.inode, None)
        self.maybe_drop(node)

    def maybe_drop(self, node: Node) -> None:
        """Forget a gone node once neither the kernel nor an open file refers to it."""
        if node.gone and node.lookups <= 0 and node.opens <= 0:
            self.nodes.pop(node.inode, None)

    # -- queries ---------------------------------------------------------------------------

    def child(self, parent: int, name: str) -> Node | None:
        if name == ".":
            return self.nodes.get(parent)
        if name == "..":
            p = self.nodes.get(parent)
            return self.nodes.get(p.parent) if p else None
        inode = self.children.get(parent, {}).get(name)
        return self.nodes.get(inode) if inode is not None else None

    def listing(self, parent: int) -> list[tuple[str, Node]]:
        return sorted(((name, self.nodes[i]) for name, i in self.children.get(parent, {}).items()),
                      key=lambda x: x[0])
