"""A power failure while a commit writes the superblock home (found by crashcheck on adr
pmem, where a write is atomic only per 8 bytes): the primary superblock is torn, and the
journal holds its last update. The filesystem must come back read-write through the
replay, and fsck must find nothing to repair, as for any other interrupted checkpoint."""
import os

from daxfs import format as fmt
from daxfs.fs import Filesystem
from daxfs.fsck import check
from daxfs.mkfs import mkfs
from dmemu.memdev import MemoryBlockDevice

R = fmt.ROOT_INO


async def _torn_after_commit():
    """The device right after a commit whose checkpoint tore block 0: every 8-byte word
    new but the last one that changed (one of the states crashcheck enumerates)."""
    dev = MemoryBlockDevice(16 << 20 >> 9)
    await mkfs(dev)
    fs = await Filesystem.mount(dev)
    fh, _ = await fs.create(R, b"kept", 0o644, os.O_RDWR)
    await fs.write(fh, 0, b"K" * 5000)
    await fs.fsync(fh)
    before = bytes(dev.view[:4096])
    fh2, _ = await fs.create(R, b"second", 0o644, os.O_RDWR)
    await fs.fsync(fh2)                          # a full commit: new inode, name, superblock
    after = bytes(dev.view[:4096])
    assert before != after
    crashed = MemoryBlockDevice(dev.nr_sectors)
    crashed.view[:] = dev.view
    last = max(i for i in range(0, 4096, 8) if before[i:i + 8] != after[i:i + 8])
    crashed.view[last:last + 8] = before[last:last + 8]
    return crashed


async def test_torn_primary_superblock_is_replayed_from_the_journal():
    dev = await _torn_after_commit()
    msgs = []
    code, _ = await check(dev, out=msgs.append)
    assert code == 0, msgs
    fs = await Filesystem.mount(dev)
    assert not fs.read_only
    for name in (b"kept", b"second"):
        await fs.lookup(R, name)
    assert fmt.Superblock.unpack(bytes(dev.view[:4096]))     # whole again after the replay
