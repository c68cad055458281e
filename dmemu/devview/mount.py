"""The device view process: one dmemud client, one FUSE mount, and the tasks that keep it true.

Everything lives in one trio nursery: pyfuse3's main loop, the watcher that long-polls
dmemud's device generation, and the invalidator that tells the kernel to drop entries and
attributes of devices that went, moved or changed size. The invalidations run in a worker
thread because pyfuse3.invalidate_entry blocks while a related request is being served,
and those requests are served by this very loop. If dmemud goes away the view unmounts
itself: the names it shows would mean nothing any more.
"""
import errno
import logging
import os
import signal

import pyfuse3
import trio

from .. import client
from ..errors import DmemuError
from .fs import DevViewOps
from .names import entries
from .tree import Changes, Tree

log = logging.getLogger(__name__)


class DevView:
    """The tree of device nodes, kept up to date with one dmemud connection."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.tree = Tree()
        self.generation = None
        self._lock = trio.Lock()
        self._send, self._recv = trio.open_memory_channel(1000)

    async def refresh(self) -> None:
        """Re-read dmemud's lists if its device generation moved; one round trip if not."""
        gen = (await self.kernel.call("changes"))["generation"]
        if gen == self.generation:
            return
        async with self._lock:
            if gen == self.generation:
                return
            bases = (await self.kernel.call("list"))["devices"]
            dms = (await self.kernel.call("dm_list"))["devices"]
            changes = self.tree.update(*entries(bases, dms))
            self.generation = gen
        if changes:
            log.info("devices changed: %d gone, %d renamed, %d added, %d resized", len(changes.gone),
                     len(changes.moved), len(changes.added), len(changes.resized))
            try:
                self._send.send_nowait(changes)
            except trio.WouldBlock:
                log.warning("invalidation queue full; the kernel's caches expire on their own")

    async def watch(self) -> None:
        """Follow dmemud: wait for the generation to move, then refresh."""
        while True:
            await self.kernel.call("changes", since=self.generation, wait=True)
            await self.refresh()

    async def invalidate(self) -> None:
        async for changes in self._recv:
            await trio.to_thread.run_sync(_invalidate, changes)


def _invalidate(changes: Changes) -> None:
    # A removed device's entry is deleted (its open files see nlink 0, "(deleted)" in
    # /proc/PID/fd); a renamed or new name is only dropped, to be looked up again.
    for (parent, name, inode), deleted in ([(g, True) for g in changes.gone]
                                           + [(m, False) for m in changes.moved + changes.added]):
        try:
            pyfuse3.invalidate_entry(parent, os.fsencode(name), deleted=inode if deleted else 0)
            log.debug("invalidated %s in inode %d", name, parent)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                log.warning("invalidate %s: %s", name, e)
    for inode in changes.resized:
        try:
            pyfuse3.invalidate_inode(inode, attr_only=True)
        except OSError as e:
            if e.errno != errno.ENOENT:
                log.warning("invalidate inode %d: %s", inode, e)


def mount_options(debug: bool = False) -> set:
    opts = set(pyfuse3.default_options)     # default_permissions: the mode bits are checked
    opts |= {"fsname=dmemu", "subtype=devview"}
    if debug:
        opts.add("debug")
    return opts


async def serve(mountpoint: str, root=None, *, on_ready=None, debug: bool = False) -> None:
    """Mount the view at ``mountpoint`` and serve it until unmounted, signalled or orphaned."""
    async with client.connect(root, prog="dmemu-devview") as kernel:
        view = DevView(kernel)
        await view.refresh()
        ops = DevViewOps(view.tree, kernel, view.refresh)
        pyfuse3.init(ops, mountpoint, mount_options(debug))
        unmounted = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch, view, nursery.cancel_scope)
                nursery.start_soon(view.invalidate)
                nursery.start_soon(_signals, nursery.cancel_scope)
                log.info("device view of %s mounted at %s", kernel.paths.root, mountpoint)
                if on_ready is not None:
                    on_ready()
                await pyfuse3.main()
                unmounted = True        # the main loop ends when the mount is gone
                nursery.cancel_scope.cancel()
        finally:
            # Unmount when the loop did not end by itself (a signal, dmemud gone); the kernel
            # detaches it lazily if files are still open in it.
            pyfuse3.close(unmount=not unmounted)
            log.info("device view at %s unmounted", mountpoint)


async def _watch(view: DevView, scope: trio.CancelScope) -> None:
    try:
        await view.watch()
    except DmemuError as e:
        log.warning("lost dmemud (%s): unmounting the device view", e)
        scope.cancel()


async def _signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for sig in signals:
            log.info("signal %d: unmounting", sig)
            scope.cancel()
            return
