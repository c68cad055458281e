"""The FUSE face of the device view: one pyfuse3 Operations class with thin handlers.

Each handler translates: names and attributes come from the Tree, data from a BlockFile
(one dmemud device handle per open file), and errors of the layers below become the errno
a block device would give. Only FUSEError leaves a handler.
"""
import errno
import logging
import os

import pyfuse3
import trio

from ..errors import DmemuError
from .blockio import BlockFile, errno_of
from .tree import Tree

log = logging.getLogger(__name__)


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


class DevViewOps(pyfuse3.Operations):
    """Directories of devices; every file a block device reached through dmemud.

    ``kernel`` is a dmemu client connection, ``refresh`` an async callable that brings the
    tree up to date with dmemud when its device generation moved (cheap when it did not).
    Both are passed in, so tests can build this class without a mount.
    """

    def __init__(self, tree: Tree, kernel, refresh):
        super().__init__()
        self.tree = tree
        self.kernel = kernel
        self.refresh = refresh
        self.uid, self.gid = os.getuid(), os.getgid()
        self._files: dict[int, tuple] = {}      # fh -> (node, BlockFile)
        self._dirs: dict[int, list] = {}        # fh -> the listing handed out by opendir
        self._next_fh = 1
        self._rmw_locks: dict[str, trio.Lock] = {}

    # -- names -----------------------------------------------------------------------------

    async def _refresh(self) -> None:
        try:
            await self.refresh()
        except (OSError, DmemuError) as e:
            # dmemud is gone: the view is about to unmount itself; answer, do not crash.
            log.warning("cannot reach dmemud: %s", e)
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _node(self, inode):
        node = self.tree.nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    async def lookup(self, parent_inode, name, ctx=None):
        await self._refresh()
        node = self.tree.child(parent_inode, _name(name))
        if node is None or node.gone:
            raise pyfuse3.FUSEError(errno.ENOENT)
        node.lookups += 1
        return node.attributes(self.uid, self.gid)

    async def forget(self, inode_list):
        for inode, n in inode_list:
            node = self.tree.nodes.get(inode)
            if node is not None:
                node.lookups -= n
                self.tree.maybe_drop(node)

    async def getattr(self, inode, ctx=None):
        await self._refresh()
        return self._node(inode).attributes(self.uid, self.gid)

    async def setattr(self, inode, attr, fields, fh, ctx):
        # A block device ignores O_TRUNC and has no times or modes of its own to keep here:
        # accept and change nothing, so 'dd of=' and shell redirections work as on /dev.
        return self._node(inode).attributes(self.uid, self.gid)

    async def readlink(self, inode, ctx):
        node = self._node(inode)
        if node.kind != "link":
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.target)

    async def opendir(self, inode, ctx):
        await self._refresh()
        node = self._node(inode)
        if node.kind != "dir" or node.gone:
            raise pyfuse3.FUSEError(errno.ENOTDIR if node.kind != "dir" else errno.ENOENT)
        fh = self._new_fh()
        self._dirs[fh] = self.tree.listing(inode)
        return fh

    async def readdir(self, fh, start_id, token):
        listing = self._dirs.get(fh, [])
        for i in range(start_id, len(listing)):
            name, node = listing[i]
            if not pyfuse3.readdir_reply(token, os.fsencode(name),
                                         node.attributes(self.uid, self.gid), i + 1):
                return
            node.lookups += 1       # a readdirplus entry the kernel took is a lookup

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    # The names are dmemud's: devices come and go with ndctl, dmsetup and the lvm commands.
    async def _refuse(self, *args, **kwargs):
        raise pyfuse3.FUSEError(errno.EPERM)

    create = mknod = mkdir = symlink = link = unlink = rmdir = rename = _refuse

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_files = len(self.tree.nodes)
        s.f_namemax = 255
        return s

    # -- device files ----------------------------------------------------------------------

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if node.kind != "dev" or node.gone:
            raise pyfuse3.FUSEError(errno.ENXIO if node.gone else errno.EINVAL)
        read_only = (flags & os.O_ACCMODE) == os.O_RDONLY
        if node.read_only and not read_only:
            raise pyfuse3.FUSEError(errno.EROFS)
        try:
            dev = await self.kernel.open_device(node.ident, read_only=read_only)
        except Exception as e:
            log.info("open %s (%s): %s", node.name, node.ident, e)
            raise pyfuse3.FUSEError(errno_of(e)) from None
        lock = self._rmw_locks.setdefault(node.ident, trio.Lock())
        fh = self._new_fh()
        self._files[fh] = (node, BlockFile(dev, flags, lock))
        node.opens += 1
        # direct_io for every open, not only O_DIRECT ones: the data of a device changes
        # behind this process (other clients, copy-on-write, power failure, media errors),
        # and cached pages would hide all of that, EIO included. Shared mmap is lost (ENODEV).
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    def _file(self, fh) -> BlockFile:
        entry = self._files.get(fh)
        if entry is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return entry[1]

    async def read(self, fh, off, size):
        try:
            return await self._file(fh).read(off, size)
        except (OSError, DmemuError) as e:
            log.debug("read at %d: %s", off, e)
            raise pyfuse3.FUSEError(errno_of(e)) from None

    async def write(self, fh, off, buf):
        try:
            return await self._file(fh).write(off, buf)
        except (OSError, DmemuError) as e:
            log.debug("write at %d: %s", off, e)
            raise pyfuse3.FUSEError(errno_of(e)) from None

    async def fsync(self, fh, datasync):
        try:
            await self._file(fh).fsync()
        except (OSError, DmemuError) as e:
            raise pyfuse3.FUSEError(errno_of(e)) from None

    async def flush(self, fh):
        pass        # close() of a block device does not flush its cache; fsync does

    async def release(self, fh):
        node, bf = self._files.pop(fh, (None, None))
        if bf is None:
            return
        node.opens -= 1
        self.tree.maybe_drop(node)
        with trio.CancelScope(shield=True):
            await bf.close()
