"""pyfuse3's request loop, made to cost less per request.

pyfuse3 serialises the tasks that read /dev/fuse with a trio.Lock, taken and released once
per request. trio.Lock's acquire passes through the scheduler twice even when the lock is
free (a cancellation check and a shielded checkpoint): py-spy put that at about a tenth of
the daemon's CPU for a 4 KiB write. pyfuse3 reads every name of trio through its module
attribute ``pyfuse3.trio`` (which is how ``pyfuse3.asyncio`` swaps in asyncio), so daxfs
gives it trio with a lock that takes the uncontended path without yielding. The loop
still yields on every request: it waits for /dev/fuse with trio.lowlevel.wait_readable.
"""
import types

import pyfuse3
import trio

from .freeze import FastLock


class _Trio(types.ModuleType):
    """trio, as pyfuse3 sees it: the same in everything but Lock."""

    Lock = FastLock

    def __getattr__(self, name):
        return getattr(trio, name)


def install() -> None:
    """Before pyfuse3.main(), which makes its lock on the first read."""
    if not isinstance(pyfuse3.trio, _Trio):
        pyfuse3.trio = _Trio("trio")
