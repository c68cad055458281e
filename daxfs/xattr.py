"""Extended attributes: one xattr block per inode, and the virtual xattrs of DAX state.

FUSE cannot carry FS_IOC_FSSETXATTR nor STATX_ATTR_DAX, so the DAX flag, the effective DAX
state, the synchronous mode and the mount's dax= mode are read and set through xattrs that
daxfs serves itself (daxfs/daxattr.py, docs/format.md).
"""
import errno
import stat

from . import acl
from . import daxattr
from . import resize
from . import format as fmt
from .cred import ROOT, Ctx
from .errors import CorruptError, FsError
from .inode import Inode

XATTR_CREATE, XATTR_REPLACE = 1, 2
DAX_XATTR = daxattr.DAX_FLAG_XATTR.encode()
DAX_STATE_XATTR = daxattr.DAX_STATE_XATTR.encode()
SYNC_XATTR = daxattr.SYNC_XATTR.encode()
MOUNT_DAX_XATTR = daxattr.MOUNT_DAX_XATTR.encode()
# On the root of a mount: reading it gives "size max device uuid" (in blocks: the
# filesystem's size, the most its block bitmap can describe, the device's size; then the
# filesystem's uuid, so a caller can tell it is the filesystem it means); writing a larger size
# grows the mounted filesystem (daxfs-resize's online grow, as xfs_growfs's ioctl)
RESIZE_XATTR = b"user.daxfs.resize"
VIRTUAL_XATTRS = (DAX_XATTR, DAX_STATE_XATTR, SYNC_XATTR, MOUNT_DAX_XATTR, RESIZE_XATTR)


class Xattrs:
    async def _xattrs(self, inode: Inode) -> dict:
        if inode.xattrs is None:
            blk = inode.xattr_block
            if not blk:
                inode.xattrs = {}
                return inode.xattrs
            try:
                if not self.sb.data_start <= blk < self.sb.total_blocks - 1:
                    raise CorruptError(f"inode {inode.ino}: xattr block out of range")
                raw = await self._read_meta(blk, 1)
                inode.xattrs = fmt.unpack_xattrs(raw, blk, self.sb.uuid)
            except CorruptError as e:
                self._meta_error(e)
                raise
        return inode.xattrs

    @staticmethod
    def _check_xattr_name(inode: Inode, name: bytes) -> None:
        if name in fmt.XATTR_SYSTEM_NAMES:
            return
        if not name.startswith(fmt.XATTR_PREFIXES) or name in fmt.XATTR_PREFIXES:
            raise FsError(errno.EOPNOTSUPP, "unsupported xattr namespace")
        if len(name) > 255:
            raise FsError(errno.ERANGE, "xattr name too long")

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        inode = await self.iget(ino)
        if name == DAX_XATTR:
            return b"1" if inode.flags & fmt.IFLAG_DAX else b"0"
        if name == DAX_STATE_XATTR:
            return b"1" if self.effective_dax(inode) else b"0"
        if name == SYNC_XATTR:
            return b"1" if inode.sync_mode else b"0"
        if name == MOUNT_DAX_XATTR and ino == self.sb.root_ino:
            return self.dax.mode.encode()
        if name == RESIZE_XATTR and ino == self.sb.root_ino:
            self._refresh_device_size()
            return (f"{self.sb.total_blocks} {resize.max_blocks(self.sb)} "
                    f"{self.dev.nr_sectors // fmt.BLOCK_SECTORS} {self.sb.uuid.hex()}").encode()
        self._check_xattr_name(inode, name)
        v = (await self._xattrs(inode)).get(name)
        if v is None:
            raise FsError(errno.ENODATA, "no such attribute")
        return v

    async def listxattr(self, ino: int) -> list[bytes]:
        inode = await self.iget(ino)
        return sorted(await self._xattrs(inode))

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0,
                       ctx: Ctx = ROOT) -> None:
        if name == RESIZE_XATTR and ino == self.sb.root_ino:
            await self._grow_online(value, ctx)
            return
        async with self.lock:
            self._writable()
            inode = await self.iget(ino)
            if name == DAX_XATTR:
                if value not in (b"0", b"1"):
                    raise FsError(errno.EINVAL, "the DAX flag is 0 or 1")
                if not (inode.is_reg or inode.is_dir):
                    raise FsError(errno.EINVAL, "the DAX flag applies to files and directories")
                inode.flags = (inode.flags & ~fmt.IFLAG_DAX) | (fmt.IFLAG_DAX if value == b"1" else 0)
                self._touch(inode)
                return
            if name == SYNC_XATTR:
                if value not in (b"0", b"1"):
                    raise FsError(errno.EINVAL, "the synchronous mode is 0 or 1")
                if value == b"1" and not self.effective_dax(inode):
                    # mmap(MAP_SYNC) on a file that is not DAX fails so on Linux
                    raise FsError(errno.EOPNOTSUPP, "the synchronous mode needs a DAX file")
                inode.sync_mode = value == b"1"
                return
            if name in (DAX_STATE_XATTR, MOUNT_DAX_XATTR):
                raise FsError(errno.EPERM, "read-only attribute")
            self._check_xattr_name(inode, name)
            if name.startswith(b"user.") and not (inode.is_reg or inode.is_dir):
                raise FsError(errno.EPERM, "user xattrs only on files and directories")
            if len(value) > fmt.XATTR_SPACE:
                raise FsError(errno.E2BIG, "xattr value too large")
            xa = await self._xattrs(inode)
            if flags & XATTR_CREATE and name in xa:
                raise FsError(errno.EEXIST, "attribute exists")
            if flags & XATTR_REPLACE and name not in xa:
                raise FsError(errno.ENODATA, "no such attribute")
            new = dict(xa)
            new[name] = bytes(value)
            mode = inode.mode
            if name in acl.NAMES:
                try:
                    ents = acl.parse(value)
                except acl.AclError as e:
                    raise FsError(errno.EINVAL, f"invalid ACL: {e}") from None
                if name == acl.DEFAULT and not inode.is_dir:
                    raise FsError(errno.EACCES, "default ACLs are for directories")
                if name == acl.ACCESS:
                    # posix_acl_update_mode: the ACL sets the permission bits, and one that
                    # says no more than they do is not kept
                    mode = (mode & ~0o777) | acl.mode_bits(ents)
                    if acl.is_minimal(ents):
                        del new[name]
                    if mode & stat.S_ISGID and ctx.uid != 0 and inode.gid != ctx.gid \
                            and inode.gid not in ctx.groups:
                        mode &= ~stat.S_ISGID
            await self._store_xattrs(inode, new)
            inode.mode = mode
            self._touch(inode)
            self._fc_ineligible(inode)
            await self._maybe_commit()

    async def _store_xattrs(self, inode: Inode, new: dict) -> None:
        """Make new the inode's xattrs (lock held), allocating or freeing its block."""
        if fmt.xattrs_size(new) > fmt.XATTR_SPACE:
            raise FsError(errno.ENOSPC, "no space left for extended attributes")
        if new and not inode.xattr_block:
            await self._reserve(1)
            [(blk, _)] = self.balloc.alloc(1)
            inode.xattr_block = blk
        inode.xattrs = new
        if not new and inode.xattr_block:
            self.balloc.free_run(inode.xattr_block, 1)
            inode.xattr_block = 0
            self.dirty_xattrs.discard(inode)
        elif new:
            self.dirty_xattrs.add(inode)

    async def _acl_after_chmod(self, inode: Inode) -> None:
        """chmod rewrites the access ACL's owner, mask (else group) and other entries
        (posix_acl_chmod), so the ACL and the mode never disagree. Lock held."""
        if not inode.xattr_block:
            return
        xa = await self._xattrs(inode)
        if acl.ACCESS in xa:
            xa[acl.ACCESS] = acl.pack(acl.chmod(acl.parse(xa[acl.ACCESS]), inode.mode))
            self.dirty_xattrs.add(inode)
            self._fc_ineligible(inode)      # a fast-commit record carries no xattrs

    async def _inherit_acls(self, parent: Inode, inode: Inode, ctx: Ctx = ROOT) -> None:
        """posix_acl_create: what is made in a directory with a default ACL takes it (a
        directory as its own default too), masked by the mode it was created with; without
        one, the caller's umask applies. Lock held; the inode is new."""
        if inode.is_lnk:
            return                          # a symlink's mode is always 0777
        default = None
        if parent.xattr_block:
            default = (await self._xattrs(parent)).get(acl.DEFAULT)
        if default is None:
            inode.mode &= ~(ctx.umask & 0o777)
            return
        inode.mode, new = acl.inherit(default, inode.mode)
        if new:
            await self._store_xattrs(inode, new)

    async def removexattr(self, ino: int, name: bytes) -> None:
        async with self.lock:
            self._writable()
            inode = await self.iget(ino)
            self._check_xattr_name(inode, name)
            xa = await self._xattrs(inode)
            if name not in xa:
                raise FsError(errno.ENODATA, "no such attribute")
            del xa[name]
            if not xa and inode.xattr_block:
                self.balloc.free_run(inode.xattr_block, 1)
                inode.xattr_block = 0
                self.dirty_xattrs.discard(inode)
            else:
                self.dirty_xattrs.add(inode)
            self._touch(inode)
            self._fc_ineligible(inode)
            await self._maybe_commit()

    def _refresh_device_size(self) -> None:
        """A dmemu device learns its new size from the table event; an image file grows
        under the mount without telling anyone, so it is asked again."""
        refresh = getattr(self.dev, "refresh_size", None)
        if refresh is not None:
            refresh()

    async def _grow_online(self, value: bytes, ctx: Ctx) -> None:
        if ctx.uid != 0:
            raise FsError(errno.EPERM, "only root resizes a filesystem")
        try:
            new = int(value.decode())
        except (UnicodeDecodeError, ValueError):
            raise FsError(errno.EINVAL, "the new size is a number of blocks") from None
        if new < self.sb.total_blocks:
            raise FsError(errno.EOPNOTSUPP, "on-line shrinking is not supported")
        self._refresh_device_size()
        await resize.resize(self, new)

