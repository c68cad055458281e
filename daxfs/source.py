"""Turning a SOURCE argument (an image file or a dmemu device name) into a BlockDevice."""
import errno
import os
from contextlib import asynccontextmanager

from .errors import FsError
from .filedev import FileBlockDevice


def is_image(source: str) -> bool:
    return os.path.isfile(source)


@asynccontextmanager
async def open_source(source: str, *, exclusive: bool, read_only: bool, log: str | None = None):
    """Yield a BlockDevice for SOURCE: an existing regular file is an image, opened
    directly; anything else (/dev/pmem0, /dev/mapper/vg0-lv0, /dev/vg0/lv0, pmem0) names a
    device served by dmemud, opened through dmemu.client."""
    if is_image(source):
        dev = FileBlockDevice(source, read_only=read_only, exclusive=exclusive)
        try:
            yield dev
        finally:
            dev.close()
        return
    if "/" in source and not source.startswith("/dev/"):
        raise FsError(errno.ENOENT, f"{source}: no such file")
    try:
        from dmemu.client import open_device     # written alongside; imported when needed
    except ImportError:
        raise FsError(errno.ENODEV, f"{source}: not an image file, and dmemu.client (needed "
                                    "to open dmemu devices) is not installed") from None
    from dmemu.errors import DmemuError
    try:
        async with open_device(source, exclusive=exclusive, read_only=read_only, log=log) as dev:
            yield dev
    except DmemuError as e:     # a refusal by dmemud (no such device, claimed, ...)
        raise FsError(e.errno, e.message) from None
