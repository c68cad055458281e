"""pyfuse3's floor: the cheapest filesystem pyfuse3 can serve, for scripts/bench_floor.py.

One regular file of a fixed size, under every name; every request is answered at once (a write is
taken and dropped, a read returns zeros, fsync does nothing). What it costs per request is
what pyfuse3, trio and the kernel cost, with no filesystem behind them: no Python
filesystem on pyfuse3 can go faster.

    python -m scripts.floorfs MOUNTPOINT
"""
import errno
import stat
import sys
import time

import pyfuse3
import trio

FILE_INO = 2
FILE_SIZE = 1 << 30
TIMEOUT = 60.0


class Floor(pyfuse3.Operations):
    def __init__(self):
        super().__init__()
        self.zeros = memoryview(bytes(1 << 20))

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.st_mode = (stat.S_IFDIR | 0o755) if ino == pyfuse3.ROOT_INODE else (stat.S_IFREG | 0o644)
        a.st_nlink = 1
        a.st_size = 0 if ino == pyfuse3.ROOT_INODE else FILE_SIZE
        a.st_blksize = 4096
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = time.time_ns()
        a.attr_timeout = a.entry_timeout = TIMEOUT
        return a

    async def getattr(self, inode, ctx=None):
        return self._attr(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(FILE_INO)

    async def setattr(self, inode, attr, fields, fh, ctx):
        return self._attr(inode)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=FILE_INO, keep_cache=True)

    async def read(self, fh, off, size):
        return self.zeros[:max(0, min(size, FILE_SIZE - off))]

    async def write(self, fh, off, buf):
        return len(buf)

    async def fsync(self, fh, datasync):
        return None

    async def flush(self, fh):
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def release(self, fh):
        return None


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m scripts.floorfs MOUNTPOINT", file=sys.stderr)
        return 2
    pyfuse3.init(Floor(), sys.argv[1], ["fsname=floorfs"])
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
