"""The two tiers of daxfs errors.

``FsError`` is what the filesystem logic raises: it carries a Linux errno so the FUSE layer
can hand it to the kernel unchanged and tests can assert on it. ``UsageError`` is what the
commands (mkfs.daxfs, fsck.daxfs, daxfs) catch once and print as a single line.
"""
import errno as _errno
import os


class FsError(OSError):
    """A filesystem operation failed the way the kernel would fail it (errno + message)."""

    def __init__(self, err: int, msg: str = ""):
        super().__init__(err, msg or os.strerror(err))


class CorruptError(FsError):
    """An on-device structure does not parse or violates its invariant (EUCLEAN, like ext4)."""

    def __init__(self, msg: str):
        super().__init__(_errno.EUCLEAN, msg)


class UsageError(Exception):
    """A user mistake a command reports in one line: 'prog: what was wrong; what to do'."""

    def __init__(self, msg: str, exit_code: int = 1):
        super().__init__(msg)
        self.exit_code = exit_code
