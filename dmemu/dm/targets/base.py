"""What every target type offers the core, after struct target_type in the kernel.

``remap`` is the target's map function and its direct_access in one: given a sector
relative to the target and whether the access writes, it answers with the largest range
around it that maps uniformly (a Remap), doing any copy-on-write first. ``remap_sync`` is
the same for the daemon's own I/O (copying chunks, exception store metadata), which never
waits on clients.
"""
import errno

from ..errors import DMError
from ..region import Remap


class Target:
    name = ""
    version = (1, 0, 0)
    direct_access = False    # implements direct_access: may be part of a DAX-capable table

    def __init__(self, dm, line, args):
        self.dm = dm
        self.begin = line.start
        self.len = line.length
        self.line = line

    def devices(self) -> list:
        """iterate_devices: the devices this target maps onto."""
        return []

    def dax_capable(self) -> bool:
        return self.direct_access and all(d.dax_capable for d in self.devices())

    def table_text(self) -> str:
        return ""

    def status_text(self) -> str:
        return ""

    async def remap(self, offset: int, write: bool) -> Remap:
        return self.remap_sync(offset, write)

    async def remap_range(self, offset: int, nr: int, write: bool) -> Remap:
        """A write of ``nr`` sectors from ``offset`` is coming: targets that copy on write
        make every copy the range needs at once; the answer is as remap's."""
        return await self.remap(offset, write)

    def remap_sync(self, offset: int, write: bool) -> Remap:
        raise DMError(errno.EIO, f"{self.name}: no mapping")

    def presuspend(self) -> None:
        """The device is about to suspend (before the filesystem freezes)."""

    def presuspend_undo(self) -> None:
        """The suspend that called presuspend failed."""

    async def preresume(self) -> None:
        """Checks before the table goes live; raise to refuse the resume."""

    async def resume(self) -> None:
        """The table went live."""

    def postsuspend(self) -> None:
        """The device is suspended: no I/O in flight, none will come until resume."""

    def dtr(self) -> None:
        """The table holding this target is gone."""

    def message(self, words: list[str]) -> str:
        raise DMError(errno.EINVAL, f"{self.name}: target does not accept messages")
