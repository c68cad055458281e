"""Writing back what the kernel caches for this mount, before a freeze.

freeze_super syncs the filesystem, so the stores of mmap writers (and, with ``-o
writeback``, of write(2)) that the kernel still holds in its page cache belong in the frozen
image. A FUSE server cannot count on syncfs(2) for that: the kernel has long treated FUSE
mappings as having no data-integrity semantics, so syncfs may start the writeback of a dirty
mapping and return before its writes reach us, depending on the kernel (the removal of
FUSE's temporary writeback pages made it wait; the 6.18 stable series stopped waiting again
for writeback-cache mounts; measured here on 6.18, a 1 MiB mapping dirtied before syncfs
arrived after it about one freeze in eight under load). fsync(2) is the call that does wait, on every kernel: it
writes the mapping's dirty pages, waits for their FUSE writes to be answered, and only then
returns. So after syncfs, every file open for writing (a shared writable mapping keeps its
open file until munmap) is reopened through its file handle and fsynced.

This runs in a worker thread while the mount's trio loop keeps serving the writes it causes.
"""
import ctypes
import errno
import logging
import os
import struct

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)      # os.syncfs arrived only in Python 3.12

# FILEID_INO64_GEN: the handle the kernel's fuse_encode_fh gives a FUSE inode, three
# 32-bit words (node id high, node id low, generation); FUSE servers use inode numbers as
# node ids, and daxfs answers every lookup with the inode's generation.
_FILEID_INO64_GEN = 0x81


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 12)]


def _handle(ino: int, generation: int) -> _FileHandle:
    fh = _FileHandle(handle_bytes=12, handle_type=_FILEID_INO64_GEN)
    struct.pack_into("<III", fh.f_handle, 0, ino >> 32, ino & 0xFFFFFFFF, generation)
    return fh


def write_back(mountpoint: str, open_for_writing: list[tuple[int, int]]) -> None:
    """syncfs on the mount, then fsync of each (ino, generation) open for writing. Raises
    OSError if the mount cannot be synced; a file that went away meanwhile is skipped."""
    mfd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(mfd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"syncfs {mountpoint}: {os.strerror(e)}")
        for ino, generation in open_for_writing:
            fd = _libc.open_by_handle_at(mfd, ctypes.byref(_handle(ino, generation)),
                                         os.O_RDONLY | os.O_CLOEXEC)
            if fd < 0:
                e = ctypes.get_errno()
                if e in (errno.ESTALE, errno.ENOENT):
                    continue            # closed and removed since: nothing of it is cached
                if e == errno.EPERM:
                    # open_by_handle_at needs CAP_DAC_READ_SEARCH: a mount served by
                    # another user has syncfs only
                    log.warning("cannot reopen files by handle (%s): mapped pages not yet "
                                "written back may miss the frozen image", os.strerror(e))
                    return
                raise OSError(e, f"reopening inode {ino} of {mountpoint} to write back its "
                                 f"mapped pages: {os.strerror(e)}")
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        os.close(mfd)
