"""Waiting for a process that is not our child to exit.

`dmemud stop` and the tests that unmount a daxfs must know that the daemon has really gone,
not just that it said it would: until its last mapping of an image is unmapped, the image's
file system stays busy and its flock stays held. A pidfd (Linux 5.3) becomes readable when
the process exits, so nobody polls or sleeps.
"""
import errno
import os
import select


def wait_for_exit(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited (or never existed), False if it still runs after
    ``timeout`` seconds."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError as e:
        if e.errno == errno.ESRCH:
            return True
        raise
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        return bool(p.poll(max(0, int(timeout * 1000))))
    finally:
        os.close(fd)
