"""What device-mapper needs from whoever hands out mappings of its devices.

In the kernel, a suspend freezes the filesystem through its superblock and the page cache
and DAX mappings are the filesystem's business. Here clients cache resolutions of device
ranges (leases) and load and store through them, so the DM layer must be able to take those
back, and to reach the filesystem on a device to freeze and thaw it. This is the whole of
that interface; dmemud's kernel implements it, and DM never touches client connections.
"""
import abc


class LeaseManager(abc.ABC):
    @abc.abstractmethod
    def users(self, dev) -> list:
        """The open handles of ``dev`` (each with ``exclusive`` and ``describe()``)."""

    @abc.abstractmethod
    async def revoke(self, predicate, why: str) -> list:
        """Take back every lease for which ``predicate(lease)`` holds and wait for the holders
        to acknowledge; return the holders that did not in time."""

    @abc.abstractmethod
    def revoke_soon(self, predicate, why: str) -> None:
        """The same from synchronous code (an invalidation found mid-copy), without waiting."""

    @abc.abstractmethod
    async def freeze(self, handles: list) -> tuple[list, list]:
        """lock_fs: ask the filesystems holding ``handles`` to write back what they cache and
        stop changing the device; return (frozen, did not answer)."""

    @abc.abstractmethod
    async def thaw(self, handles: list) -> None:
        """unlock_fs for handles frozen earlier."""

    @abc.abstractmethod
    async def tell_users(self, dev, info: dict) -> None:
        """The device's size, DAX capability or media changed with its table."""

    @abc.abstractmethod
    async def kill(self, handles: list, reason: str) -> None:
        """The device under these handles is gone: every later I/O through them fails."""
