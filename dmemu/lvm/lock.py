"""Per-VG locks, as LVM's file locking: flock on $DMEMU_ROOT/lock/V_<vg>.

Several commands may run at once; each holds the lock of every VG whose metadata it may
change from its scan to its last write, so two commands never commit on top of each
other's stale copy. "P_global" serialises changes to PVs outside any VG (pvcreate,
pvremove, vgcreate), taken before any VG lock so the order is always the same.
"""
import fcntl
import os
from contextlib import asynccontextmanager

import trio

from ..paths import StatePaths

GLOBAL = "P_global"


def lock_dir() -> str:
    path = os.path.join(str(StatePaths().root), "lock")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


@asynccontextmanager
async def locked(*names: str):
    """Hold the locks ``names`` (VG names, or GLOBAL), in a fixed order."""
    order = sorted(set(names), key=lambda n: (n != GLOBAL, n))
    fds = []
    try:
        for n in order:
            file = n if n == GLOBAL else f"V_{n}"
            fd = os.open(os.path.join(lock_dir(), file), os.O_RDWR | os.O_CREAT, 0o600)
            fds.append(fd)
            # flock blocks: wait in a thread so the connection's events keep flowing.
            await trio.to_thread.run_sync(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        for fd in reversed(fds):
            os.close(fd)
