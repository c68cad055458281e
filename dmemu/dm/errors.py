"""Typed errors of the device-mapper layer, each carrying an errno and a kernel-voiced message.

A command's ``main()`` catches ``DMError`` once and prints ``message``; the daemon maps
``errno`` onto the reply of the ioctl it emulates. The messages reuse the kernel's own
strings (``ti->error`` of a target constructor, the DMERR/DMWARN of dm-table.c and the
snapshot code) so that scripts written against real dmsetup logs keep matching.
"""
import errno as _errno


class DMError(Exception):
    """Base of every device-mapper error: ``errno`` says what the ioctl returns."""

    def __init__(self, errno: int, message: str):
        super().__init__(errno, message)
        self.errno = errno
        self.message = message

    def __str__(self) -> str:
        return self.message


class TableError(DMError):
    """A table text that cannot be loaded: the message names the line and the problem."""


class TargetError(DMError):
    """A target constructor refused its arguments (the kernel's ``ti->error``)."""


class ExceptionStoreError(DMError):
    """The exception store cannot be read, created or used."""


class ExceptionStoreFull(ExceptionStoreError):
    """No room on the COW device for another exception (the kernel's -ENOSPC)."""

    def __init__(self, message: str = "Unable to allocate exception."):
        super().__init__(_errno.ENOSPC, message)
