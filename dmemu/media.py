"""The storage behind a base device and its persistence model, shared by dmemud and clients.

Every base device (pmem namespace or plain disk) is one or more image files that both the
daemon and its clients mmap, so stores by one process are loads in another at memory speed.
Three models, after design.md section 3:

- ``eadr`` pmem: the CPU caches are in the persistence domain, so a store is durable when
  it lands. One file, the media itself.
- ``adr`` pmem: stores sit in volatile CPU caches until flushed (clwb) and fenced. The
  ``view`` file is what loads see (caches over media); the ``media`` file is what survives a
  power failure. A bio write is durable at completion (the pmem driver copies with
  memcpy_flushcache); a DAX store reaches the media only through ``flush_range``. A power
  failure rolls every 64-byte line where view and media differ back to the media, or, with
  tearing, keeps a random subset of its 8-byte words (the granule x86 stores atomically).
- ``disk``: a volatile write cache. Writes land in the view and mark their 4 KiB block in a
  shared ``dirty`` byte map; FUA copies the written range to the media; a flush copies every
  dirty block. A power failure rolls dirty blocks back.

The invariant everything rests on: where a block is not marked dirty (disk) or a line is
equal in both files (adr), view and media agree. Writers store data before marking dirty and
flushers clear the mark before copying, so a write racing a flush is never forgotten.
"""
import errno
import mmap
import os
import random
import re
import stat

from .blockdev import PAGE_SIZE, SECTOR_SIZE

CACHELINE = 64          # x86 cache line: the unit clwb writes back and power failure loses
WORD = 8                # the store granule that survives or not as a whole when a line tears
_DIRTY_RUN = re.compile(rb"[^\x00]+")
_COMPARE_CHUNK = 1 << 20

MODELS = ("eadr", "adr", "disk")

# Images are sparse. A store into a page nobody wrote yet faults, and the fault allocates
# and zeroes the page: through the mapping a first 1 MiB store runs at about half the
# speed of pwrite(2), which allocates without faulting (measured on tmpfs: 1.3 against
# 2.3 GiB/s), while pwrite is three times slower than a store where the pages exist. So a
# large copy into a range with a hole in it goes through the file, the rest through the
# mapping; both land in the same page cache pages, which every mapping shares. The pages
# written through the file are then mapped here in one call (MADV_POPULATE_READ, Linux
# 5.14; Python 3.11 has no name for it), or the first loads from them, reading back what
# was just written, fault page by page (1 GiB/s instead of 2 for a first DAX read).
FILL_MIN = 64 << 10
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)


def _map(path: str, size: int, create: bool) -> tuple[int, mmap.mmap]:
    # Never through a symbolic link: an image is a plain file in the state directory.
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path}: not a regular file")
        if create and os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
        return fd, mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise


class Media:
    """The mapped image files of one base device. ``spec`` is what the daemon hands clients."""

    def __init__(self, spec: dict, *, create: bool = False):
        self.spec = spec
        self.model = spec["model"]
        self.size = spec["size"]
        self._fds = []
        fd, self.view = _map(spec["view"], self.size, create)
        self._fds.append(fd)
        self._view_fd = fd
        self.view_mv = memoryview(self.view)     # copies out of it without a temporary
        self.media = self.view
        self.dirty = None
        self._media_fd = fd
        if self.model in ("adr", "disk"):
            fd, self.media = _map(spec["media"], self.size, create)
            self._fds.append(fd)
            self._media_fd = fd
        if self.model == "disk":
            fd, self.dirty = _map(spec["dirty"], self.size // PAGE_SIZE + 1, create)
            self._fds.append(fd)
        self.trace = None
        if spec.get("trace"):
            from .persist_trace import TraceWriter
            self.trace = TraceWriter(spec["trace"])

    @staticmethod
    def spec_for(model: str, base: str, size: int) -> dict:
        """File names for a device whose images start with ``base`` (a path without suffix)."""
        if model not in MODELS:
            raise ValueError(model)
        spec = {"model": model, "size": size, "view": base + ".img", "media": None, "dirty": None}
        if model in ("adr", "disk"):
            spec["view"] = base + ".cache"
            spec["media"] = base + ".img"
        if model == "disk":
            spec["dirty"] = base + ".dirty"
        return spec

    # -- loads and stores ------------------------------------------------------------------

    def read(self, off: int, n: int) -> bytes:
        return self.view[off:off + n]

    def readinto(self, off: int, buf: memoryview) -> None:
        buf[:] = self.view_mv[off:off + len(buf)]

    def _copy_in(self, m: mmap.mmap, fd: int, off: int, data) -> None:
        n = len(data)
        if n >= FILL_MIN:
            try:
                hole = os.lseek(fd, off, os.SEEK_HOLE)
            except OSError:
                hole = off + n
            if hole < off + n:
                os.pwrite(fd, data, off)
                if m is self.view:      # what loads read; adr's media file only power fails
                    a = off - off % PAGE_SIZE
                    try:
                        m.madvise(MADV_POPULATE_READ, a, off + n - a)
                    except OSError:
                        pass            # an older kernel: the loads fault instead
                return
        m[off:off + n] = data

    def store(self, off: int, data) -> None:
        """A CPU store through a DAX mapping: volatile in adr until flush_range."""
        self._copy_in(self.view, self._view_fd, off, data)
        if self.dirty is not None:
            self._mark_dirty(off, len(data))

    def write(self, off: int, data, fua: bool = False) -> None:
        """A bio write as the driver under this model completes it."""
        n = len(data)
        self._copy_in(self.view, self._view_fd, off, data)
        if self.model == "adr" or (fua and self.model == "disk"):
            self._copy_in(self.media, self._media_fd, off, data)
            if self.trace is not None:
                self.trace.durable(off, data)
        if self.dirty is not None:
            self._mark_dirty(off, n)

    def _mark_dirty(self, off: int, n: int) -> None:
        first, last = off // PAGE_SIZE, (off + n - 1) // PAGE_SIZE
        self.dirty[first:last + 1] = b"\x01" * (last - first + 1)

    # -- persistence -----------------------------------------------------------------------

    def flush_range(self, off: int, n: int) -> None:
        """clwb over [off, off+n) and a fence: the lines reach the persistence domain."""
        if self.model == "adr":
            a = off - off % CACHELINE
            b = -(-(off + n) // CACHELINE) * CACHELINE
            self._copy_in(self.media, self._media_fd, a, self.view_mv[a:b])
            if self.trace is not None:
                self.trace.durable(a, self.media[a:b])

    def flush(self) -> None:
        """REQ_PREFLUSH: empty the volatile write cache of a disk. pmem has none for bios."""
        if self.dirty is None:
            return
        for m in _DIRTY_RUN.finditer(self.dirty):
            first, last = m.start(), m.end()
            self.dirty[first:last] = bytes(last - first)
            a, b = first * PAGE_SIZE, min(last * PAGE_SIZE, self.size)
            self.media[a:b] = self.view[a:b]

    def writeback_all(self) -> None:
        """A clean shutdown: caches written back, comparing first so sparse images stay sparse."""
        if self.model == "disk":
            self.flush()
        elif self.model == "adr":
            for a, b in self._allocated_chunks():
                if self.view[a:b] != self.media[a:b]:
                    self.media[a:b] = self.view[a:b]

    def _allocated_chunks(self):
        """The compare chunks of an adr device where either file holds data. The images are
        sparse and a hole reads as zeros in both, so only allocated ranges can differ:
        comparing a mostly empty 1 GiB namespace then costs what it holds, not its size."""
        ranges = []
        for fd in self._fds[:2]:
            off = 0
            while off < self.size:
                try:
                    start = os.lseek(fd, off, os.SEEK_DATA)
                except OSError:          # ENXIO: no data after off
                    break
                end = min(os.lseek(fd, start, os.SEEK_HOLE), self.size)
                ranges.append((start, end))
                off = end
        chunks = set()
        for start, end in ranges:
            chunks.update(range(start // _COMPARE_CHUNK, -(-end // _COMPARE_CHUNK)))
        for c in sorted(chunks):
            yield c * _COMPARE_CHUNK, min((c + 1) * _COMPARE_CHUNK, self.size)

    def power_fail(self, tear: bool = False, rng: random.Random | None = None) -> int:
        """Lose what is not durable; return the number of bytes that changed back."""
        if self.model == "eadr":
            return 0
        rng = rng or random.Random()
        if self.model == "disk":
            return self._power_fail_disk(tear, rng)
        return self._power_fail_adr(tear, rng)

    def _power_fail_disk(self, tear: bool, rng: random.Random) -> int:
        lost = 0
        for m in _DIRTY_RUN.finditer(self.dirty):
            first, last = m.start(), m.end()
            for blk in range(first, last):
                a, b = blk * PAGE_SIZE, min((blk + 1) * PAGE_SIZE, self.size)
                for s in range(a, b, SECTOR_SIZE):
                    e = s + SECTOR_SIZE
                    if self.view[s:e] == self.media[s:e]:
                        continue
                    if tear and rng.random() < 0.5:
                        self.media[s:e] = self.view[s:e]   # this sector had reached the platter
                    else:
                        self.view[s:e] = self.media[s:e]
                        lost += SECTOR_SIZE
            self.dirty[first:last] = bytes(last - first)
        return lost

    def _power_fail_adr(self, tear: bool, rng: random.Random) -> int:
        lost = 0
        for a, b in self._allocated_chunks():
            if self.view[a:b] == self.media[a:b]:
                continue
            for line in range(a, b, CACHELINE):
                end = line + CACHELINE
                old, new = self.media[line:end], self.view[line:end]
                if old == new:
                    continue
                if tear:
                    kept = bytearray(old)
                    for w in range(0, CACHELINE, WORD):
                        if rng.random() < 0.5:
                            kept[w:w + WORD] = new[w:w + WORD]
                    self.media[line:end] = kept
                    self.view[line:end] = kept
                    lost += sum(new[w:w + WORD] != kept[w:w + WORD]
                                for w in range(0, CACHELINE, WORD)) * WORD
                else:
                    self.view[line:end] = old
                    lost += CACHELINE
        return lost

    def close(self) -> None:
        try:
            self.view_mv.release()
        except BufferError:
            pass
        for m in {id(x): x for x in (self.view, self.media, self.dirty) if x is not None}.values():
            try:
                m.close()
            except BufferError:
                pass  # a caller still holds a view of it; the mapping goes with the process
        for fd in self._fds:
            os.close(fd)
        if self.trace is not None:
            self.trace.close()
            self.trace = None
        self._fds.clear()
