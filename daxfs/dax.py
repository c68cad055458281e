"""DAX in daxfs: the mount policy, which inodes are DAX, and I/O through direct_access.

Policy (Documentation/filesystems/dax.rst, as ext4 and XFS): ``dax=inode`` (the default)
makes a regular file DAX when its persistent flag is set; ``dax=always`` (and plain ``dax``)
makes every regular file DAX; ``dax=never`` none. Only on a DAX-capable device, with 4 KiB
blocks; ``dax=always`` on a device that cannot do DAX fails the mount (ext4's choice, the
clearer one). The decision for an inode is taken when it comes into use and kept while it is
open, so a flag change takes effect after the last close, as S_DAX does.

Effective-DAX files load and store the pmem through direct_access mappings (no bios, no
cache), and every store is flushed to the persistence domain before the write returns.
"""
import bisect
import errno
import logging

from dmemu.blockdev import PAGE_SECTORS, PAGE_SIZE, SECTOR_SIZE
from dmemu.client import RevokedError

from .errors import FsError

log = logging.getLogger(__name__)

MODES = ("inode", "always", "never")
WINDOW = 512            # pages asked for per mapping: 2 MiB, a huge page's worth


def parse_dax_option(value: str | None) -> str:
    """The dax mount option: None (absent) means dax=inode."""
    if value is None:
        return "inode"
    if value not in MODES:
        raise FsError(errno.EINVAL, f"invalid dax mode '{value}': use dax=always, dax=never or "
                                    "dax=inode (plain 'dax' means always)")
    return value


def check_mount(mode: str, device_dax: bool) -> None:
    if mode == "always" and not device_dax:
        raise FsError(errno.EINVAL,
                      "DAX unsupported by block device: dax=always needs a DAX-capable device "
                      "(a pmem namespace in fsdax mode, or DM devices made only of them); mount "
                      "without dax, or with dax=inode or dax=never")


class DaxPolicy:
    def __init__(self, mode: str, device_dax: bool):
        self.mode = mode
        self.device_dax = device_dax

    def decide(self, is_reg: bool, flag: bool) -> bool:
        if not (is_reg and self.device_dax) or self.mode == "never":
            return False
        return self.mode == "always" or flag


class DaxIO:
    """Loads and stores on a DAX-capable device through cached direct_access mappings.

    Mappings are cached per 2 MiB window of the device, for loads and for stores apart.
    Read mappings are asked for from the window's start, so one mapping usually serves the
    whole window and is found with one dict lookup and one range test. Write mappings are
    asked for from the first page written: the device copies on write what the store
    covers (a snapshot origin copies those chunks, in one batch, and no others) and may map
    further over what needs no copy, up to the window's end. The device may answer with
    less than asked (a media error, a snapshot origin whose next chunk is not copied yet);
    a window then holds several mappings, kept sorted and disjoint, found by bisection. A
    mapping dmemud revoked is dropped and mapped again on its next use.
    """

    def __init__(self, dev):
        self.dev = dev
        # window -> mappings inside it, sorted by pgoff, disjoint; one per table
        self._read: dict[int, list] = {}
        self._write: dict[int, list] = {}
        # A deliberately broken mode for testing the crash checker: stores are left in the
        # CPU caches, never flushed (what the 2015 thread warned fsync must not allow).
        self.skip_flush = False

    def drop(self) -> None:
        self._read.clear()
        self._write.clear()

    @staticmethod
    def _find(lst, pgoff: int):
        """The valid cached mapping holding pgoff, or None."""
        m = lst[0]
        if m.pgoff <= pgoff < m.pgoff + m.nr_pages and m.lease.valid:
            return m
        if len(lst) > 1:
            i = bisect.bisect_right(lst, pgoff, key=_pgoff) - 1
            if i > 0:
                m = lst[i]
                if pgoff < m.pgoff + m.nr_pages and m.lease.valid:
                    return m
        return None

    @staticmethod
    def _keep(lst, m) -> None:
        """Cache ``m``: it is the device's latest word on its pages, so it replaces every
        mapping it overlaps (and any that was revoked)."""
        end = m.pgoff + m.nr_pages
        lst[:] = [x for x in lst if x.lease.valid and (x.pgoff + x.nr_pages <= m.pgoff
                                                       or x.pgoff >= end)]
        bisect.insort(lst, m, key=_pgoff)

    async def _read_mapping(self, pgoff: int):
        window = pgoff // WINDOW
        lst = self._read.get(window)
        if lst:
            m = self._find(lst, pgoff)
            if m is not None:
                return m
        else:
            lst = self._read[window] = []
        start = window * WINDOW
        end = min(start + WINDOW, self.dev.nr_sectors // PAGE_SECTORS)
        # From the window's start when nothing of it is cached yet, else from pgoff
        m = None
        if not lst:
            try:
                m = await self.dev.direct_access(start, end - start, write=False)
            except OSError as e:
                if e.errno != errno.EIO:
                    raise       # a media error at the window's start: map from pgoff
            if m is not None:
                self._keep(lst, m)
                if m.pgoff + m.nr_pages > pgoff:
                    return m
        m = await self.dev.direct_access(pgoff, end - pgoff, write=False)
        self._keep(lst, m)
        return m

    async def _write_mapping(self, pgoff: int, nr_store: int):
        """A mapping to store into from pgoff on; nr_store pages are about to be stored."""
        window = pgoff // WINDOW
        lst = self._write.get(window)
        if lst:
            m = self._find(lst, pgoff)
            if m is not None:
                return m
        else:
            lst = self._write[window] = []
        end = min((window + 1) * WINDOW, self.dev.nr_sectors // PAGE_SECTORS)
        m = await self.dev.direct_access(pgoff, end - pgoff, write=True,
                                         nr_store=min(nr_store, end - pgoff))
        self._keep(lst, m)
        return m

    async def read(self, sector: int, nbytes: int) -> bytes:
        """Loads as a copy, for callers that keep what they read (a block to modify)."""
        return bytes(await self.load(sector * SECTOR_SIZE, nbytes))

    async def load(self, byte: int, nbytes: int):
        """Loads at byte granularity (DAX is byte-addressable), for file reads. A range
        inside one mapping comes back as a view of the pmem itself, not a copy: the reply
        to the kernel is written from the pmem straight away, so whatever the pmem holds
        when the view is read is what the caller gets (FileIO.read guards against blocks
        reused meanwhile). One that crosses mappings is copied piece by piece into one
        buffer."""
        pgoff, inpage = divmod(byte, PAGE_SIZE)
        lst = self._read.get(pgoff // WINDOW)
        m = self._find(lst, pgoff) if lst else None
        if m is None:
            m = await self._read_mapping(pgoff)
        off = (pgoff - m.pgoff) * PAGE_SIZE + inpage
        if off + nbytes <= m.length:        # valid: found or mapped just now, no await since
            a = m.base + off
            return m.media.view_mv[a:a + nbytes]
        out = bytearray(nbytes)
        await self._load_into(byte, memoryview(out))
        return out

    async def _load_into(self, byte: int, buf: memoryview) -> None:
        nbytes = len(buf)
        pos = 0
        while pos < nbytes:
            pgoff, inpage = divmod(byte + pos, PAGE_SIZE)
            m = await self._read_mapping(pgoff)
            off = (pgoff - m.pgoff) * PAGE_SIZE + inpage
            n = min(nbytes - pos, m.length - off)
            try:
                m.readinto(off, buf[pos:pos + n])
            except RevokedError:     # taken back between lookup and use: map again
                continue
            pos += n

    async def write(self, sector: int, data) -> None:
        """Store, and flush what the persistence model needs: durable when this returns.
        On eadr the CPU caches are in the persistence domain, so a store is durable as it
        lands and nothing is flushed; on adr each store is written back (clwb) and fenced."""
        data = memoryview(data)
        flush = not self.skip_flush
        pos = 0
        while pos < len(data):
            byte = sector * SECTOR_SIZE + pos
            pgoff, inpage = divmod(byte, PAGE_SIZE)
            try:
                m = await self._write_mapping(pgoff, -(-(inpage + len(data) - pos) // PAGE_SIZE))
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
                # A media error under the page: write it as a bio, which clears the poison
                # (what dax_recovery_write does), then carry on through mappings.
                n = min(len(data) - pos, PAGE_SIZE - inpage)
                await self.dev.write(byte // SECTOR_SIZE, data[pos:pos + n])
                pos += n
                continue
            off = (pgoff - m.pgoff) * PAGE_SIZE + inpage
            n = min(len(data) - pos, m.length - off)
            try:
                m.write(off, data[pos:pos + n])
                if flush and m.media.model != "eadr":
                    m.flush(off, n)
            except RevokedError:
                continue
            pos += n


def _pgoff(m) -> int:
    return m.pgoff
