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

    Mappings are asked for a window at a time; the device may hand back less (a snapshot
    origin maps writes a chunk run at a time, media errors cut a mapping short), so the
    cache holds whatever came, per window. A mapping that dmemud revoked is dropped and
    mapped again on its next use.
    """

    def __init__(self, dev):
        self.dev = dev
        # (window, write) -> mappings of that window, the one from its start first
        self._maps: dict[tuple[int, bool], list] = {}
        # A deliberately broken mode for testing the crash checker: stores are left in the
        # CPU caches, never flushed (what the 2015 thread warned fsync must not allow).
        self.skip_flush = False

    def drop(self) -> None:
        self._maps.clear()

    async def _mapping(self, pgoff: int, write: bool):
        """The mapping that covers pgoff: one per window, found by the window's number. A
        window is mapped from its start, so one mapping serves every page of it; only when
        the device answers with less (a media error, a snapshot origin mapping writes a
        chunk run at a time) does the window hold more than one, each from a page asked for."""
        key = (pgoff // WINDOW, write)
        lst = self._maps.get(key)
        if lst:
            m = lst[0]
            if m.valid and m.pgoff <= pgoff < m.pgoff + m.nr_pages:
                return m
            for m in lst:
                if m.valid and m.pgoff <= pgoff < m.pgoff + m.nr_pages:
                    return m
            lst[:] = [m for m in lst if m.valid]
        else:
            lst = self._maps.setdefault(key, [])
        total = self.dev.nr_sectors // PAGE_SECTORS
        start = key[0] * WINDOW
        end = min(start + WINDOW, total)
        if not lst:
            try:
                m = await self.dev.direct_access(start, end - start, write=write)
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
                m = None                # a media error at the window's start
            if m is not None:
                lst.insert(0, m)
                if m.pgoff <= pgoff < m.pgoff + m.nr_pages:
                    return m
        m = await self.dev.direct_access(pgoff, end - pgoff, write=write)
        lst.append(m)
        return m

    async def read(self, sector: int, nbytes: int) -> bytes:
        """Loads: a range inside one mapping is one copy; one that crosses windows is
        copied piece by piece into one buffer (no join of pieces afterwards)."""
        byte = sector * SECTOR_SIZE
        pgoff, inpage = divmod(byte, PAGE_SIZE)
        m = await self._mapping(pgoff, False)
        off = (pgoff - m.pgoff) * PAGE_SIZE + inpage
        if off + nbytes <= m.length:
            try:
                return m.read(off, nbytes)
            except RevokedError:
                pass
        out = bytearray(nbytes)
        view = memoryview(out)
        pos = 0
        while pos < nbytes:
            byte = sector * SECTOR_SIZE + pos
            pgoff, inpage = divmod(byte, PAGE_SIZE)
            m = await self._mapping(pgoff, False)
            off = (pgoff - m.pgoff) * PAGE_SIZE + inpage
            n = min(nbytes - pos, m.length - off)
            try:
                m.readinto(off, view[pos:pos + n])
            except RevokedError:     # taken back between lookup and use: map again
                continue
            pos += n
        return bytes(out)

    async def write(self, sector: int, data) -> None:
        """Store and flush: durable when this returns, in adr mode too."""
        data = memoryview(data)
        pos = 0
        while pos < len(data):
            byte = sector * SECTOR_SIZE + pos
            pgoff, inpage = divmod(byte, PAGE_SIZE)
            try:
                m = await self._mapping(pgoff, True)
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
                # eADR: the CPU caches are in the persistence domain, nothing to flush
                if not self.skip_flush and m.media.model != "eadr":
                    m.flush(off, n)
            except RevokedError:
                continue
            pos += n
