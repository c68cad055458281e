"""Inode attributes: setattr (chmod, chown, truncate, utimens) and access checks."""
import errno
import os
import stat
import time

from . import format as fmt
from .cred import ROOT, Ctx
from .killpriv import CAPABILITY_XATTR, killed_mode
from .errors import FsError
from .inode import Inode


# utimensat(UTIME_NOW) reaches us as an explicit time: pyfuse3 reads a coarse clock
# (a few ms behind) when the request arrives and hands that over. Linux gives atime, mtime
# and ctime that very value, so a time this recent is taken for "now" and becomes the
# ctime too (touch: atime == mtime == ctime); anything older is a time the user chose, and
# ctime is the clock's. When the coarse "now" lies behind the inode's ctime (a change a
# moment earlier), the recent times and the ctime all take the precise clock instead, so
# ctime never goes back and the three stay equal.
NOW_WINDOW_NS = 200_000_000


def _times(now: int, atime_ns, mtime_ns, old_ctime: int):
    """(atime, mtime, ctime) to store for a setattr that gave atime_ns/mtime_ns (None:
    unchanged) and no ctime."""
    def recent(t):
        return t is not None and now - NOW_WINDOW_NS <= t <= now
    given = [t for t in (atime_ns, mtime_ns) if recent(t)]
    if not given:
        return atime_ns, mtime_ns, now
    if max(given) >= old_ctime:
        return atime_ns, mtime_ns, max(given)
    return (now if recent(atime_ns) else atime_ns, now if recent(mtime_ns) else mtime_ns, now)


class Attributes:
    async def setattr(self, ino: int, *, mode=None, uid=None, gid=None, size=None,
                      atime_ns=None, mtime_ns=None, ctime_ns=None, ctx: Ctx = ROOT,
                      kill: bool = False) -> Inode:
        """kill: the kernel asks to kill set-id bits (a truncation or chown by a caller
        without CAP_FSETID, FUSE_HANDLE_KILLPRIV_V2; killpriv.py)."""
        if size is not None:
            # truncation changes the file's data and size: wait for its writes in progress
            async with self._inode_lock(await self.iget(ino)):
                return await self._setattr(ino, mode=mode, uid=uid, gid=gid, size=size,
                                           atime_ns=atime_ns, mtime_ns=mtime_ns,
                                           ctime_ns=ctime_ns, ctx=ctx, kill=kill)
        return await self._setattr(ino, mode=mode, uid=uid, gid=gid, size=size,
                                   atime_ns=atime_ns, mtime_ns=mtime_ns, ctime_ns=ctime_ns,
                                   ctx=ctx, kill=kill)

    async def _kill_privs(self, inode: Inode) -> None:
        """What file_remove_privs does for a caller without CAP_FSETID, when the kernel
        leaves it to the filesystem (killpriv.py): set-user-ID goes, set-group-ID with group
        execute, and the file capability. Lock held."""
        if not inode.is_reg:
            return
        mode = killed_mode(inode.mode)
        if mode != inode.mode:
            inode.mode = mode
            self._touch(inode)
        if inode.xattr_block and CAPABILITY_XATTR in await self._xattrs(inode):
            new = dict(inode.xattrs)
            del new[CAPABILITY_XATTR]
            await self._store_xattrs(inode, new)
            self._touch(inode)
            self._fc_ineligible(inode)      # a fast-commit record carries no xattrs

    async def _setattr(self, ino: int, *, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns,
                       ctx: Ctx, kill: bool = False) -> Inode:
        async with self.lock:
            self._writable()
            inode = await self.iget(ino)
            if size is not None:
                if inode.is_dir:
                    raise FsError(errno.EISDIR, "is a directory")
                if not inode.is_reg:
                    raise FsError(errno.EINVAL, "truncate of a special file")
                if size < 0:
                    raise FsError(errno.EINVAL, "negative size")
                if size > fmt.MAX_FILE_SIZE:
                    raise FsError(errno.EFBIG, "file too large")
                await self._truncate(inode, size)
            if mode is not None:
                inode.mode = stat.S_IFMT(inode.mode) | (mode & 0o7777)
                await self._acl_after_chmod(inode)
            if uid is not None and uid != 0xFFFFFFFF:
                inode.uid = uid
            if gid is not None and gid != 0xFFFFFFFF:
                inode.gid = gid
            if (uid is not None or gid is not None) and not inode.is_dir and \
                    inode.mode & (stat.S_ISUID | stat.S_ISGID) and mode is None:
                # chown clears set-user-ID / set-group-ID (with group-exec), like Linux
                inode.mode &= ~stat.S_ISUID
                if inode.mode & stat.S_IXGRP:
                    inode.mode &= ~stat.S_ISGID
            if kill:
                await self._kill_privs(inode)
            if atime_ns is not None:
                atime_ns = fmt.clamp_time_ns(atime_ns)
            if mtime_ns is not None:
                mtime_ns = fmt.clamp_time_ns(mtime_ns)
            if ctime_ns is None:
                atime_ns, mtime_ns, ctime_ns = _times(time.time_ns(), atime_ns, mtime_ns,
                                                      inode.ctime_ns)
            if atime_ns is not None:
                inode.atime_ns = atime_ns
            if mtime_ns is not None:
                inode.mtime_ns = mtime_ns
            inode.ctime_ns = fmt.clamp_time_ns(ctime_ns)
            self._dirty(inode)
            await self._maybe_commit()
            return inode

    async def access(self, ino: int, mask: int, ctx: Ctx = ROOT) -> bool:
        inode = await self.iget(ino)
        if mask == os.F_OK:
            return True
        if mask & os.W_OK and self.read_only:
            raise FsError(errno.EROFS, "read-only file system")
        if ctx.uid == 0:
            if mask & os.X_OK and not inode.is_dir and not inode.mode & 0o111:
                raise FsError(errno.EACCES, "permission denied")
            return True
        if ctx.uid == inode.uid:
            bits = (inode.mode >> 6) & 7
        elif ctx.gid == inode.gid or inode.gid in ctx.groups:
            bits = (inode.mode >> 3) & 7
        else:
            bits = inode.mode & 7
        if mask & ~bits & 7:
            raise FsError(errno.EACCES, "permission denied")
        return True
