"""Fixtures for the daxfs tests: an in-memory device with a fresh filesystem on it."""
import pytest

from daxfs.fs import Filesystem
from daxfs.fsck import check
from daxfs.mkfs import mkfs
from dmemu.memdev import MemoryBlockDevice

MiB = 1 << 20


async def make_dev(size: int = 64 * MiB, **kw) -> MemoryBlockDevice:
    dev = MemoryBlockDevice(size // 512)
    await mkfs(dev, **kw)
    return dev


async def assert_clean(dev) -> None:
    """fsck -n finds nothing wrong (every filesystem test ends with this)."""
    msgs = []
    code, c = await check(dev, out=msgs.append)
    assert code == 0, msgs


@pytest.fixture
async def dev():
    return await make_dev()


@pytest.fixture
async def fs(dev):
    fs = await Filesystem.mount(dev)
    yield fs
    if not fs.read_only:
        await fs.unmount()
        await assert_clean(dev)
