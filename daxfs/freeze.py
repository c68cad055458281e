"""The state of the mount every operation checks first: frozen, read-only, or dead.

``GateLock`` is the filesystem lock with a gate that freeze closes (freeze_super: while the
device under the mount is suspended for a snapshot, changes wait; reads go on). A device
that goes away under the mount (removal, power failure) makes every later call fail with EIO
instead of hanging, as a filesystem on a vanished block device does.
"""
import errno
import logging

import trio

from .errors import FsError

log = logging.getLogger(__name__)


class FastLock:
    """A trio.Lock whose uncontended acquire does not yield to the scheduler."""

    def __init__(self):
        self._lock = trio.Lock()

    async def __aenter__(self):
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    async def __aexit__(self, *exc):
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()


class GateLock:
    """The filesystem lock, with a gate a freeze closes: while the device under the mount is
    suspended (a snapshot being taken), operations that change anything wait at the gate;
    reads go on."""

    def __init__(self):
        self._lock = trio.Lock()
        self._open: trio.Event | None = None
        # small changes that came while another task was inside (a read's atime while a
        # commit packs the dirty inodes across awaits), one per key: the holder makes them
        # on its way out, before the next waiter gets in, so they keep their order
        self._deferred: dict = {}

    async def __aenter__(self):
        while self._open is not None:
            await self._open.wait()
        try:
            # uncontended: take it without the two trips through the scheduler that
            # trio.Lock.acquire makes (a third of a small write's cost); waiters keep
            # their turn, acquire_nowait refuses while anyone is parked
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    async def __aexit__(self, *exc):
        try:
            while self._deferred:
                deferred, self._deferred = self._deferred, {}
                for change in deferred.values():
                    try:
                        change()
                    except Exception:
                        log.exception("deferred change failed")
        finally:
            self._lock.release()

    @property
    def busy(self) -> bool:
        """Held, or closed by a freeze: a change made now without it would race."""
        return self._lock.locked() or self._open is not None

    @property
    def frozen(self) -> bool:
        return self._open is not None

    def defer(self, key, change) -> None:
        """Have the task holding the lock call change() before it lets go (the lock must be
        held); a later change with the same key replaces an earlier one."""
        assert self._lock.locked()
        self._deferred[key] = change

    def close_gate(self) -> None:
        if self._open is None:
            self._open = trio.Event()

    def open_gate(self) -> None:
        gate, self._open = self._open, None
        if gate is not None:
            gate.set()


class Freeze:
    async def freeze(self) -> None:
        """The device is being suspended: make everything durable, drop the mappings, and
        hold every change until thaw (freeze_super + the DAX mappings of the 2018 thread)."""
        async with self.lock:
            if not self.read_only and not self.dead:
                await self._commit()
                await self.dev.flush()
            self.lock.close_gate()
        if self.daxio is not None:
            self.daxio.drop()
        log.info("frozen for a suspend of %s", self.dev.name)

    def thaw(self) -> None:
        self.lock.open_gate()
        log.info("thawed")

    def device_gone(self, reason: str) -> None:
        """The device was removed or lost power under the mount: fail everything from now
        on (EIO), never hang, and let the kernel drop what it caches."""
        self.dead = reason
        self.lock.open_gate()
        if self.daxio is not None:
            self.daxio.drop()
        log.error("%s: %s; every operation fails with EIO until unmounted", self.dev.name, reason)
        if self.on_invalidate is not None:
            for ino in list(self.inodes):
                self.on_invalidate(ino)

    def _meta_error(self, e: Exception) -> None:
        """Metadata failed verification: never trust it, stop writing (ext4's
        errors=remount-ro), say so once in the log. What is on the device stays as the
        last commit left it; fsck.daxfs repairs it."""
        log.error("%s: %s", self.dev.name, e)
        if not self.read_only:
            self.read_only = True
            log.error("%s: metadata damaged; the filesystem is now read-only: unmount and "
                      "run fsck.daxfs -y", self.dev.name)

    def _alive(self) -> None:
        if self.dead:
            raise FsError(errno.EIO, f"{self.dev.name}: {self.dead}")

    def _writable(self) -> None:
        if self.read_only:
            raise FsError(errno.EROFS, "read-only file system")
