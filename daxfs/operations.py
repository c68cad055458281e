"""The FUSE face of daxfs: one pyfuse3.Operations subclass with thin handlers.

Each handler translates its arguments, calls the Filesystem and translates the answer;
only pyfuse3.FUSEError leaves a handler (a bug becomes EIO and a logged traceback).
Attributes and entries are cached by the kernel for ATTR_TIMEOUT seconds instead of 0, so
the kernel does not ask for attributes before every read and write; every change daxfs
makes goes through a request whose reply carries the new attributes, and the few it makes
on its own (the DAX flag, a device that went away) are pushed to the kernel with
invalidate_inode from a background task, never from inside a handler.
"""
import errno
import functools
import json
import logging
import os

import pyfuse3
import trio

from . import fusecaps, killpriv
from .errors import FsError
from .fs import Ctx, Filesystem

log = logging.getLogger(__name__)

ATTR_TIMEOUT = 60.0
# Read-only counters of the daemon (requests per kind, commits) on the root directory, for
# tests and benchmarks that count requests per operation; not listed by listxattr.
STATS_XATTR = b"trusted.daxfs.stats"
# The -o options the mount was made with, on the root directory, so a tool that unmounts it
# for a while (lvreduce -r) can mount it again as it was; not listed by listxattr.
OPTIONS_XATTR = b"trusted.daxfs.mount_options"
# readdir offsets 1 and 2 are "after `.`" and "after `..`"; the directory's own cookies
# (record position + 1) are handed to the kernel shifted by this much
DOT_COOKIES = 2


# What the kernel may still ask once the device is gone, so that unmounting works.
_AFTER_DEATH = {"forget", "release", "releasedir", "flush", "statfs", "getattr_root"}


def _handler(fn):
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self, *args, **kw):
        # requests per kind: the cost model of a Python FUSE daemon (logged at unmount)
        self.requests[name] = self.requests.get(name, 0) + 1
        if self.fs.dead and name not in _AFTER_DEATH:
            raise pyfuse3.FUSEError(errno.EIO)     # the device went away under the mount
        try:
            return await fn(self, *args, **kw)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            if e.errno is None:
                log.exception("%s: OSError without errno", fn.__name__)
                raise pyfuse3.FUSEError(errno.EIO) from None
            if e.errno in (errno.EUCLEAN, errno.EIO):
                log.error("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(e.errno) from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


def _ctx(ctx) -> Ctx:
    if ctx is None:
        return Ctx()
    return Ctx(uid=ctx.uid, gid=ctx.gid, umask=ctx.umask)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    # POSIX ACLs: the kernel checks permissions against them and caches them; we store
    # them and keep them in step with the mode (daxfs/acl.py)
    enable_acl = True
    # called once the kernel has taken the reply to INIT, which sets what the mount's
    # settings (its readahead) start from
    after_init = None

    def __init__(self, fs: Filesystem):
        super().__init__()
        self.fs = fs
        self.mount_options = ""            # as given to -o, for OPTIONS_XATTR
        self.requests: dict[str, int] = {}
        self.write_bytes = 0
        self._caps: frozenset | None = None      # read after INIT, see _cap
        # inodes whose kernel-cached attributes are stale, once each, in order: a set
        # cannot overflow, so no invalidation is ever dropped, and a thousand changes to
        # one inode before the invalidator runs cost one invalidation
        self._inval_pending: dict[int, None] = {}
        self._inval_wake = trio.Event()
        fs.on_invalidate = self.invalidate

    def init(self) -> None:
        """Called by pyfuse3 while it answers INIT, before the reply goes out: what must
        follow the reply runs from the trio loop once this request is done."""
        if self.after_init is not None:
            trio.lowlevel.current_trio_token().run_sync_soon(self.after_init)

    # -- helpers -------------------------------------------------------------------------
    def attrs(self, inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode.ino
        a.generation = inode.generation
        a.st_mode = inode.mode
        a.st_nlink = inode.nlink
        a.st_uid = inode.uid
        a.st_gid = inode.gid
        a.st_rdev = inode.rdev
        a.st_size = inode.size
        a.st_blksize = 4096
        a.st_blocks = inode.blocks * 8
        a.st_atime_ns = inode.atime_ns
        a.st_mtime_ns = inode.mtime_ns
        a.st_ctime_ns = inode.ctime_ns
        a.st_birthtime_ns = inode.crtime_ns
        a.attr_timeout = ATTR_TIMEOUT
        a.entry_timeout = ATTR_TIMEOUT
        return a

    def _entry(self, inode) -> pyfuse3.EntryAttributes:
        self.fs.remember(inode.ino)
        return self.attrs(inode)

    def invalidate(self, ino: int) -> None:
        """Ask the kernel to drop what it caches about ino (called outside handlers' way)."""
        self._inval_pending[ino] = None
        self._inval_wake.set()

    async def run_invalidator(self) -> None:
        """Send the pending invalidations, a batch per wake-up. They go out from a worker
        thread: invalidate_inode blocks until the kernel has taken it, and the kernel may
        need a reply from this process first."""
        while True:
            await self._inval_wake.wait()
            # no checkpoint between the wait and the swap, so no wake-up is lost
            self._inval_wake = trio.Event()
            batch = list(self._inval_pending)
            self._inval_pending.clear()
            await trio.to_thread.run_sync(_invalidate_batch, batch)

    def _cap(self, name: str) -> bool:
        """Whether daxfs/native/fusecaps.c negotiated ``name`` at INIT (which is answered
        before any request that asks this)."""
        if self._caps is None:
            self._caps = frozenset(fusecaps.negotiated())
        return name in self._caps

    def _killpriv_v2(self) -> bool:
        """Whether the kernel flags the requests that must kill set-id bits."""
        return self._cap("handle_killpriv_v2")

    async def _mode_changed(self, ino: int) -> None:
        """A write or an O_TRUNC open killed set-id bits. Their replies carry no attributes
        and the kernel then invalidates size and times, not the mode: without this, stat(1)
        (statx of the mode alone) would show the bits for the whole attribute timeout. Sent
        before the reply, from a thread (it waits for the kernel, which may need this loop
        meanwhile), attributes only."""
        await trio.to_thread.run_sync(_invalidate_batch, [ino])

    # -- namespace -----------------------------------------------------------------------
    @_handler
    async def lookup(self, parent_inode, name, ctx=None):
        return self._entry(await self.fs.lookup(parent_inode, name))

    async def forget(self, inode_list):
        try:
            await self.fs.forget(inode_list)
        except Exception:
            log.exception("forget failed")

    @_handler
    async def getattr(self, inode, ctx=None):
        return self.attrs(await self.fs.getattr(inode))

    @_handler
    async def setattr(self, inode, attr, fields, fh, ctx):
        kw = {}
        if fields.update_size:
            kw["size"] = attr.st_size
        if fields.update_mode:
            kw["mode"] = attr.st_mode
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        if fields.update_ctime:
            kw["ctime_ns"] = attr.st_ctime_ns
        _, kill = killpriv.split_fh(fh)
        return self.attrs(await self.fs.setattr(inode, ctx=_ctx(ctx), kill=kill, **kw))

    @_handler
    async def readlink(self, inode, ctx):
        return await self.fs.readlink(inode)

    @_handler
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._entry(await self.fs.mknod(parent_inode, name, mode, rdev, _ctx(ctx)))

    @_handler
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._entry(await self.fs.mkdir(parent_inode, name, mode, _ctx(ctx)))

    @_handler
    async def unlink(self, parent_inode, name, ctx):
        await self.fs.unlink(parent_inode, name)

    @_handler
    async def rmdir(self, parent_inode, name, ctx):
        await self.fs.rmdir(parent_inode, name)

    @_handler
    async def symlink(self, parent_inode, name, target, ctx):
        return self._entry(await self.fs.symlink(parent_inode, name, target, _ctx(ctx)))

    @_handler
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags,
                             ctx=_ctx(ctx))

    @_handler
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self._entry(await self.fs.link(inode, new_parent_inode, new_name))

    # -- files ---------------------------------------------------------------------------
    def _file_info(self, fh: int) -> pyfuse3.FileInfo:
        """Open flags per inode and open. A DAX file opened for reading only gets no page
        cache, as on Linux: `direct_io`, so each read(2) reaches the pmem in one request
        (no readahead of pages nobody asked for, no copy through the kernel's cache) and
        a shared mapping of the file by another open still works: FUSE_DIRECT_IO_ALLOW_MMAP
        (negotiated by daxfs/native/fusecaps.c) makes the kernel write back and drop
        mapped pages of a range before a direct read of it. An open for writing stays
        cached, write-through, with keep_cache off: FUSE cannot keep a direct write and a
        store through a mapping of the same page apart (the kernel drops the page before
        the write, a store faults it back in from before the write, and writing it back
        later undoes the write: generic/346 loses data), so write(2) goes through the
        page the mapping shares. Under -o writeback a write must still not stop in the
        kernel's cache, so there DAX files open direct_io for writing too, and that race
        is the price (docs/design.md)."""
        h = self.fs.handle(fh)
        dax = self.fs.effective_dax(h.inode)
        reading = h.flags & os.O_ACCMODE == os.O_RDONLY
        if dax and (reading or self.fs.writeback_cache) and self._cap("direct_io_allow_mmap"):
            return pyfuse3.FileInfo(fh=fh, direct_io=True)
        # strictatime: reads the page cache answers never reach us, so the cache is
        # dropped at open as for DAX files, and each open's reads update atime
        return pyfuse3.FileInfo(fh=fh, keep_cache=not (dax or self.fs.strictatime))

    @_handler
    async def open(self, inode, flags, ctx):
        flags, kill = killpriv.split_flags(flags)
        if flags & os.O_TRUNC and not kill and ctx is not None and not self._killpriv_v2():
            # Without FUSE_HANDLE_KILLPRIV_V2 the kernel truncates an O_TRUNC open through
            # the open itself (atomic_o_trunc) and kills nothing: take a caller other than
            # root for one without CAP_FSETID, which is what the flag would have said
            kill = ctx.uid != 0
        if not kill:
            return self._file_info(await self.fs.open(inode, flags))
        mode = (await self.fs.getattr(inode)).mode
        fh = await self.fs.open(inode, flags, kill=True)
        if self.fs.handle(fh).inode.mode != mode:
            await self._mode_changed(inode)
        return self._file_info(fh)

    @_handler
    async def create(self, parent_inode, name, mode, flags, ctx):
        # the file is new (the kernel's dentry cache knows every name, so CREATE never
        # meets an existing file): no set-id bits of an old file to kill
        flags, _ = killpriv.split_flags(flags)
        fh, inode = await self.fs.create(parent_inode, name, mode, flags, _ctx(ctx))
        return self._file_info(fh), self._entry(inode)

    @_handler
    async def read(self, fh, off, size):
        return await self.fs.read(fh, off, size)

    @_handler
    async def write(self, fh, off, buf):
        self.write_bytes += len(buf)
        fh, kill = killpriv.split_fh(fh)
        if not kill:
            return await self.fs.write(fh, off, buf)
        inode = self.fs.handle(fh).inode
        mode = inode.mode
        n = await self.fs.write(fh, off, buf, kill=True)
        if inode.mode != mode:
            await self._mode_changed(inode.ino)
        return n

    @_handler
    async def flush(self, fh):
        # close(2): nothing is buffered here and durability is fsync's business, so the
        # first FLUSH is answered ENOSYS and the kernel sends no more (fc->no_flush): a
        # request fewer per close, a fifth of a create. The kernel still writes back a
        # file's dirty pages at close before that test; POSIX locks, the other use of
        # FLUSH, are the kernel's own here (pyfuse3 has no lock requests).
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_handler
    async def release(self, fh):
        await self.fs.release(fh)

    @_handler
    async def fsync(self, fh, datasync):
        await self.fs.fsync(fh, datasync)

    # -- directories ---------------------------------------------------------------------
    @_handler
    async def opendir(self, inode, ctx):
        return await self.fs.opendir(inode)

    @_handler
    async def readdir(self, fh, start_id, token):
        """`.` and `..` first, as every Linux filesystem lists them (tools and fstests'
        generic/401 rely on it). The directory's own cookies are shifted by DOT_COOKIES so
        that offsets 1 (after `.`) and 2 (after `..`) are ours and a listing resumes at any
        offset the kernel was handed. The kernel takes no lookup reference for `.` and
        `..` in readdirplus (fuse_direntplus_link skips them), so they are not remembered."""
        d = self.fs.handle(fh).inode
        if d.nlink == 0:
            return                  # removed while open: empty, as the VFS lists a dead dir
        if start_id < 1:
            if not pyfuse3.readdir_reply(token, b".", self.attrs(d), 1):
                return
        if start_id < 2:
            parent = await self.fs.getattr(d.parent or d.ino)
            if not pyfuse3.readdir_reply(token, b"..", self.attrs(parent), 2):
                return
        fs = self.fs
        for name, child, nxt in await fs.dir_entries(d.ino, max(0, start_id - DOT_COOKIES)):
            inode = fs.cached_inode(child) or await fs.listed_inode(d.ino, name, child)
            if inode is None:
                continue
            if not pyfuse3.readdir_reply(token, name, self.attrs(inode), nxt + DOT_COOKIES):
                break
            fs.remember(child)

    @_handler
    async def releasedir(self, fh):
        await self.fs.release(fh)

    @_handler
    async def fsyncdir(self, fh, datasync):
        await self.fs.fsyncdir(self.fs.handle(fh).inode.ino, datasync)

    # -- the rest ------------------------------------------------------------------------
    @_handler
    async def statfs(self, ctx):
        s = await self.fs.statfs()
        v = pyfuse3.StatvfsData()
        v.f_bsize, v.f_frsize, v.f_blocks = s.bsize, s.frsize, s.blocks
        v.f_bfree, v.f_bavail = s.bfree, s.bavail
        v.f_files, v.f_ffree, v.f_favail = s.files, s.ffree, s.favail
        v.f_namemax = s.namemax
        return v

    @_handler
    async def access(self, inode, mode, ctx):
        c = _ctx(ctx)
        try:
            c.groups = tuple(pyfuse3.get_sup_groups(ctx.pid))
        except Exception:           # the process may be gone already
            pass
        try:
            return await self.fs.access(inode, mode, c)
        except FsError as e:
            if e.errno == errno.EACCES:
                return False
            raise

    @_handler
    async def getxattr(self, inode, name, ctx):
        if name == STATS_XATTR and inode == pyfuse3.ROOT_INODE:
            return json.dumps({"requests": self.requests,
                               "write_bytes": self.write_bytes,
                               "fuse_caps": fusecaps.negotiated(),
                               "commits": self.fs.journal.commits}).encode()
        if name == OPTIONS_XATTR and inode == pyfuse3.ROOT_INODE:
            return self.mount_options.encode()
        return await self.fs.getxattr(inode, name)

    @_handler
    async def setxattr(self, inode, name, value, ctx):
        c = _ctx(ctx)
        try:
            c.groups = tuple(pyfuse3.get_sup_groups(ctx.pid))
        except Exception:           # the process may be gone already
            pass
        await self.fs.setxattr(inode, name, value, ctx=c)

    @_handler
    async def listxattr(self, inode, ctx):
        return await self.fs.listxattr(inode)

    @_handler
    async def removexattr(self, inode, name, ctx):
        await self.fs.removexattr(inode, name)


def _invalidate_batch(inos: list[int]) -> None:
    for ino in inos:
        try:
            pyfuse3.invalidate_inode(ino, True)
        except OSError as e:        # ENOENT: the kernel does not know it: nothing to do
            if e.errno != errno.ENOENT:
                log.warning("invalidate inode %d: %s", ino, e)
