"""Namespace and directory operations: lookup, create, link, unlink, rename, readdir.

Directories are loaded whole on first use and indexed in memory (directory.py); every
change to one is a set of dirty directory blocks in the running transaction.
"""
import errno
import os
import stat

from . import format as fmt
from .cred import ROOT, Ctx
from .directory import Directory, dtype
from .errors import CorruptError, FsError
from .inode import Inode

BS = fmt.BLOCK_SIZE
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4        # overlayfs: leave a whiteout (char device 0:0) at the old name
LINK_MAX = 65000


def _check_name(name: bytes) -> None:
    if len(name) > fmt.NAME_MAX:
        raise FsError(errno.ENAMETOOLONG, "file name too long")
    if not name or b"/" in name or b"\0" in name:
        raise FsError(errno.EINVAL, f"invalid file name {name!r}")


class Namespace:
    async def _dir(self, inode: Inode) -> Directory:
        if inode.dir is None:
            if not inode.is_dir:
                raise FsError(errno.ENOTDIR, "not a directory")
            nblocks = inode.size // BS
            blocks = []
            bad: set[int] = set()       # blocks that fail verification: nothing read there
            errs: list[CorruptError] = []
            lblk = 0
            while lblk < nblocks:
                pblk, run = inode.map(lblk)
                if not pblk:
                    raise CorruptError(f"directory {inode.ino}: hole at block {lblk}")
                run = min(run, nblocks - lblk)
                if not self.sb.data_start <= pblk or pblk + run >= self.sb.total_blocks:
                    raise CorruptError(f"directory {inode.ino}: block {pblk} out of range")
                data = await self._read_meta(pblk, run)
                for i in range(run):
                    buf = bytearray(data[i * BS:(i + 1) * BS])
                    try:
                        fmt.verify(buf, "directory", pblk + i, self.sb.uuid)
                    except CorruptError as e:
                        bad.add(len(blocks))
                        errs.append(e)
                    blocks.append(buf)
                lblk += run
            d = Directory(blocks, f"directory {inode.ino}", bad)
            d.errors[:0] = errs
            for e in d.errors:
                self._meta_error(e)
            inode.dir = d
        return inode.dir

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

    async def lookup(self, parent_ino: int, name: bytes) -> Inode:
        parent = await self.iget(parent_ino)
        if name == b".":
            # of any inode, not only directories: it is how the kernel turns an NFS-style
            # file handle (open_by_handle_at) back into an inode it no longer caches; an
            # inode already unlinked answers as ext4 does for a handle, stale
            if parent.nlink == 0:
                raise FsError(errno.ENOENT, "inode was removed")
            return parent
        d = await self._dir(parent)
        if name == b"..":
            return await self.iget(parent.parent)
        if len(name) > fmt.NAME_MAX:
            raise FsError(errno.ENAMETOOLONG, "file name too long")
        e = d.lookup(name)
        if e is None:
            if d.errors:
                # the name may be in what could not be read: not "no such file" (ext4
                # answers a lookup in a block that fails its checksum the same way)
                raise CorruptError(d.errors[0].strerror)
            raise FsError(errno.ENOENT, "no such file or directory")
        return await self.iget(e[0])

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
        # one block more for the xattrs a default ACL of the parent may hand down
        await self._reserve(5 if parent.xattr_block else 4, 1)
        inode = await self._new_inode(parent, mode, ctx, rdev)
        await self._inherit_acls(parent, inode, ctx)
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
            self._fc_ineligible(inode)
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
            self._fc_ineligible(inode)
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
            self._fc_ineligible(inode)
            await self._release_if_unused(inode)
            await self._maybe_commit()

    async def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
                     flags: int = 0, ctx: Ctx = ROOT) -> None:
        async with self.lock:
            self._writable()
            if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT) or \
                    flags & RENAME_EXCHANGE and flags & (RENAME_NOREPLACE | RENAME_WHITEOUT):
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
            await self._reserve(4, 1 if flags & RENAME_WHITEOUT else 0)
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
                self._fc_ineligible(dst)
            else:
                await self._dir_add(p2, new_name, src)
            if flags & RENAME_WHITEOUT:
                # the old name now names a whiteout, made in the same transaction (as
                # ext4's rename does), so no one sees the name missing in between
                wh = await self._new_inode(p1, stat.S_IFCHR, ctx, 0)
                d1.set_ino(old_name, wh.ino, dtype(wh.mode))
            else:
                d1.remove(old_name)
            self.dirty_dirs.add(p1)
            self._touch(p1, mtime=True)
            if src.is_dir and p1.ino != p2.ino:
                p1.nlink -= 1
                p2.nlink += 1
                src.parent = p2.ino
            self._touch(src)
            self._fc_ineligible(src)
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
        self._fc_ineligible(a); self._fc_ineligible(b)

    async def opendir(self, ino: int) -> int:
        inode = await self.iget(ino)
        await self._dir(inode)
        return self._open_handle(inode, os.O_RDONLY | os.O_DIRECTORY)

    async def readdir(self, ino: int, cookie: int = 0):
        """Async iterator of (name, Inode, next_cookie), resuming after cookie."""
        for name, child, nxt in await self.dir_entries(ino, cookie):
            target = self.cached_inode(child) or await self.listed_inode(ino, name, child)
            if target is not None:
                yield name, target, nxt

    async def dir_entries(self, ino: int, cookie: int = 0):
        """Iterator of (name, inode number, next_cookie) of directory ino after cookie,
        without the inodes: a FUSE listing resolves them itself, most from the cache,
        with no async generator to finalise when its reply buffer fills."""
        return (await self._dir(await self.iget(ino))).entries_from(cookie)

    async def listed_inode(self, ino: int, name: bytes, child: int) -> Inode | None:
        """The inode an entry of directory ino names, or None to leave the entry out: it
        was removed meanwhile, or it is damaged (logged, read-only now) or free, so that
        the rest of the directory stays listable."""
        try:
            return await self.iget(child)
        except FsError as e:
            d = await self._dir(await self.iget(ino))
            if d.lookup(name) is None:
                return None                 # removed meanwhile
            if e.errno not in (errno.EUCLEAN, errno.ENOENT):
                raise
            if e.errno == errno.ENOENT:
                self._meta_error(CorruptError(f"directory {ino}: entry {name!r} names "
                                              f"inode {child}, which is not in use"))
            return None

    async def listdir(self, ino: int) -> list[bytes]:
        return [name async for name, _, _ in self.readdir(ino)]
