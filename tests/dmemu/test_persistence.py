"""The persistence models: what a power failure keeps and loses on each kind of device."""
import os
import select
import signal

import pytest

from dmemu import client
from tests.helpers import stop_daemon, tool

PAGE = 4096


def make(*args):
    r = tool(*args)
    assert r.returncode == 0, r.stderr


async def power_fail(*devs, tear=False, seed=None):
    async with client.connect() as k:
        return (await k.call("power_fail", devices=list(devs), tear=tear, seed=seed))["lost"]


async def read_back(dev_name, sector, n):
    async with client.open_device(dev_name, read_only=True) as dev:
        return await dev.read(sector, n)


async def test_adr_loses_unflushed_stores_and_keeps_flushed_ones(dmemu_root):
    make("ndctl", "create-namespace", "-s", "4M", "--persistence", "adr")
    async with client.open_device("pmem0", exclusive=True) as dev:
        m = await dev.direct_access(0, 2, write=True)
        m.write(0, b"A" * 100)          # flushed and fenced below: durable
        m.flush(0, 100)
        m.write(PAGE, b"B" * 100)       # never flushed: lost
        assert m.read(PAGE, 100) == b"B" * 100   # visible to loads before the failure
    lost = await power_fail("pmem0")
    assert lost["pmem0"] == 128        # two 64-byte lines
    assert await read_back("pmem0", 0, 100) == b"A" * 100
    assert await read_back("pmem0", PAGE // 512, 100) == bytes(100)


async def test_adr_partial_line_flush_covers_whole_lines(dmemu_root):
    make("ndctl", "create-namespace", "-s", "4M", "--persistence", "adr")
    async with client.open_device("pmem0") as dev:
        m = await dev.direct_access(0, 1, write=True)
        m.write(0, b"x" * 200)
        m.flush(10, 1)                  # clwb of the line holding byte 10: bytes 0..63
    await power_fail()
    got = await read_back("pmem0", 0, 200)
    assert got == b"x" * 64 + bytes(136)


async def test_adr_bio_writes_are_durable_at_completion(dmemu_root):
    # The pmem driver copies bio data with memcpy_flushcache: nothing to flush afterwards.
    make("ndctl", "create-namespace", "-s", "4M", "--persistence", "adr")
    async with client.open_device("pmem0") as dev:
        await dev.write(8, b"bio!" * 128)
    await power_fail()
    assert await read_back("pmem0", 8, 512) == b"bio!" * 128


async def test_adr_tearing_keeps_whole_8_byte_words(dmemu_root):
    make("ndctl", "create-namespace", "-s", "4M", "--persistence", "adr")
    async with client.open_device("pmem0") as dev:
        m = await dev.direct_access(0, 1, write=True)
        m.write(0, bytes(range(1, 65)) * 64)    # a whole page, no zero bytes, unflushed
    await power_fail(tear=True, seed=7)
    got = await read_back("pmem0", 0, PAGE)
    new = bytes(range(1, 65)) * 64
    words = [got[i:i + 8] for i in range(0, PAGE, 8)]
    assert all(w == bytes(8) or w == new[i * 8:i * 8 + 8] for i, w in enumerate(words))
    kept = sum(w != bytes(8) for w in words)
    assert 0 < kept < len(words)      # torn: some words made it, some did not


async def test_eadr_store_is_durable_when_it_lands(dmemu_root):
    make("ndctl", "create-namespace", "-s", "4M")
    async with client.open_device("pmem0") as dev:
        m = await dev.direct_access(0, 1, write=True)
        m.write(0, b"landed")
    lost = await power_fail()
    assert lost["pmem0"] == 0
    assert await read_back("pmem0", 0, 6) == b"landed"


async def test_disk_write_cache_needs_flush_or_fua(dmemu_root):
    make("dmemu", "disk", "create", "-s", "4M")
    async with client.open_device("disk0") as dev:
        assert not dev.dax
        await dev.write(0, b"F" * 512)
        await dev.flush()                         # durable
        await dev.write(8, b"U" * 512)            # cached only: lost
        await dev.write(16, b"Q" * 512, fua=True) # FUA: durable alone
        await dev.write(17, b"u" * 512)           # same block as the FUA write, not durable
        assert await dev.read(8, 512) == b"U" * 512
    await power_fail("disk0")
    assert await read_back("disk0", 0, 512) == b"F" * 512
    assert await read_back("disk0", 8, 512) == bytes(512)
    assert await read_back("disk0", 16, 1024) == b"Q" * 512 + bytes(512)


async def test_preflush_makes_earlier_writes_durable(dmemu_root):
    make("dmemu", "disk", "create", "-s", "4M")
    async with client.open_device("disk0") as dev:
        await dev.write(0, b"1" * 4096)
        await dev.write(64, b"2" * 512, preflush=True, fua=True)   # a journal commit
    await power_fail()
    assert await read_back("disk0", 0, 4096) == b"1" * 4096
    assert await read_back("disk0", 64, 512) == b"2" * 512


async def test_power_failure_kills_open_handles(dmemu_root):
    make("dmemu", "disk", "create", "-s", "4M")
    async with client.open_device("disk0") as dev:
        await dev.write(0, b"x" * 512)
        await power_fail()
        with pytest.raises(OSError) as e:
            await dev.write(0, b"y" * 512)
        assert "power failure" in str(e.value)


async def test_daemon_crash_is_a_power_failure_clean_stop_is_not(dmemu_root):
    make("dmemu", "disk", "create", "-s", "4M")
    make("ndctl", "create-namespace", "-s", "4M", "--persistence", "adr")
    async with client.open_device("disk0") as dev:
        await dev.write(0, b"cached" * 80)
    async with client.open_device("pmem0") as dev:
        m = await dev.direct_access(0, 1, write=True)
        m.write(0, b"in cpu cache")
    stop_daemon(dmemu_root)      # a clean stop writes caches back
    assert await read_back("disk0", 0, 6) == b"cached"
    assert await read_back("pmem0", 0, 12) == b"in cpu cache"
    async with client.open_device("disk0") as dev:
        await dev.write(0, b"volatile" * 64)
    pid = int((dmemu_root / "dmemud.pid").read_text())
    pidfd = os.pidfd_open(pid)
    os.kill(pid, signal.SIGKILL)
    select.select([pidfd], [], [], 30)     # readable once the process is gone
    os.close(pidfd)
    assert await read_back("disk0", 0, 6) == b"cached"
