"""The block-device interface that every dmemu device offers its users.

Both the client handle of a device served by dmemud (dmemu.client) and the in-memory
device used by unit tests (dmemu.memdev) provide it, so filesystem code is written once
against this shape and tested without a daemon.

Units follow the kernel: sectors of 512 bytes. Flags follow the block layer: a write with
``preflush`` makes every write completed before it durable first (REQ_PREFLUSH), a write
with ``fua`` is durable when it completes (REQ_FUA); ``flush()`` is an empty flush bio.
"""
from typing import Protocol

SECTOR_SIZE = 512
SECTOR_SHIFT = 9
PAGE_SIZE = 4096
PAGE_SECTORS = PAGE_SIZE // SECTOR_SIZE


class BlockDevice(Protocol):
    name: str
    nr_sectors: int
    dax: bool           # DAX-capable: every layer down to the media supports direct_access
    read_only: bool

    async def read(self, sector: int, nbytes: int) -> bytes: ...

    async def write(self, sector: int, data, *, fua: bool = False,
                    preflush: bool = False) -> None: ...

    async def flush(self) -> None: ...

    async def discard(self, sector: int, nr_sectors: int) -> None: ...
