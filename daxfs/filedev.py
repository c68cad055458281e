"""A BlockDevice over a regular host file (an image), for mkfs/fsck/mount of image files.

Writes land in the host page cache (the device's volatile cache); ``flush`` is fdatasync,
a FUA write is a write followed by fdatasync. The file is locked with flock so two
read-write users of one image are refused, as the kernel refuses a second exclusive claim
of a block device: exclusive users take LOCK_EX, others LOCK_SH.

pread/pwrite of a cached file take microseconds, less than handing them to a thread would
cost, so they run inline. fdatasync can take long and runs in a worker thread, except on
memory-backed filesystems (tmpfs, ramfs), where it returns at once and the thread hand-off
(a few hundred microseconds) would be the whole cost of an fsync.
"""
import errno
import fcntl
import logging
import os

import trio

from .errors import FsError

log = logging.getLogger(__name__)
SECTOR = 512
MEMORY_FSTYPES = {"tmpfs", "ramfs"}


def _fstype(st_dev: int) -> str:
    """Filesystem type of the mount holding a file, from /proc/self/mountinfo."""
    want = f"{os.major(st_dev)}:{os.minor(st_dev)}"
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[2] == want:
                    return fields[fields.index("-") + 1]
    except (OSError, ValueError, IndexError):
        pass
    return ""


class FileBlockDevice:
    dax = False

    def __init__(self, path: str, *, read_only: bool = False, exclusive: bool = False):
        self.name = path
        self.read_only = read_only
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        try:
            self.fd = os.open(path, flags)
        except OSError as e:
            raise FsError(e.errno, f"{path}: {e.strerror}") from None
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise FsError(errno.EBUSY, f"{path} is in use (mounted or being checked)") from None
        st = os.fstat(self.fd)
        self.nr_sectors = st.st_size // SECTOR
        self.sync_inline = _fstype(st.st_dev) in MEMORY_FSTYPES

    def refresh_size(self) -> None:
        """Take in a file grown since it was opened (before an online grow). A file cut
        short under a mount is not taken in: the filesystem still spans the old size."""
        self.nr_sectors = max(self.nr_sectors, os.fstat(self.fd).st_size // SECTOR)

    def _check(self, sector: int, nbytes: int) -> None:
        if sector < 0 or sector * SECTOR + nbytes > self.nr_sectors * SECTOR:
            raise FsError(errno.EIO, f"{self.name}: I/O beyond end of device")

    async def read(self, sector: int, nbytes: int) -> bytes:
        self._check(sector, nbytes)
        data = os.pread(self.fd, nbytes, sector * SECTOR)
        if len(data) < nbytes:
            data += bytes(nbytes - len(data))
        return data

    async def write(self, sector: int, data, *, fua: bool = False, preflush: bool = False) -> None:
        if self.read_only:
            raise FsError(errno.EROFS, f"{self.name}: device is read-only")
        self._check(sector, len(data))
        if preflush:
            await self.flush()
        off = sector * SECTOR
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, off)
            view = view[n:]
            off += n
        if fua:
            await self.flush()

    async def flush(self) -> None:
        if self.sync_inline:
            os.fdatasync(self.fd)
        else:
            await trio.to_thread.run_sync(os.fdatasync, self.fd)

    async def discard(self, sector: int, nr_sectors: int) -> None:
        zero = bytes(1 << 20)
        off, left = sector * SECTOR, nr_sectors * SECTOR
        while left:
            n = min(left, len(zero))
            os.pwrite(self.fd, zero[:n], off)
            off += n
            left -= n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
