"""Media errors and hot removal: users get EIO, nothing hangs, the daemon stays up."""
import json

import pytest
import trio

from dmemu import client
from dmemu.client import RevokedError
from tests.helpers import tool


def make(*args):
    r = tool(*args)
    assert r.returncode == 0, r.stderr
    return r


async def run_tool(*args):
    return await trio.to_thread.run_sync(lambda: tool(*args))


async def test_poisoned_range_fails_reads_with_eio_only_there(dmemu_root):
    make("ndctl", "create-namespace", "-s", "4M")
    async with client.open_device("pmem0") as dev:
        await dev.write(0, b"d" * 65536)
        r = await run_tool("ndctl", "inject-error", "namespace0.0", "-B", "16", "-n", "8")
        assert r.returncode == 0, r.stderr
        with trio.fail_after(5):
            with pytest.raises(OSError) as e:
                await dev.read(0, 65536)
        assert e.value.errno == 5
        assert await dev.read(0, 16 * 512) == b"d" * 8192          # before the bad range
        assert await dev.read(24, 512) == b"d" * 512               # after it
        with pytest.raises(OSError):
            await dev.direct_access(2, 1, write=False)             # page 2 = sectors 16..23
        m = await dev.direct_access(0, 8, write=False)
        assert m.nr_pages == 2                                     # stops short of the poison
    st = json.loads(make("ndctl", "inject-error", "namespace0.0", "--status").stdout)
    assert st == {"badblocks": [{"block": 16, "count": 8}]}
    listed = json.loads(make("ndctl", "list", "-M").stdout)
    assert listed["badblocks"] == [{"offset": 16, "length": 8, "dimms": []}]


async def test_clearing_errors_and_writing_over_poison(dmemu_root):
    make("ndctl", "create-namespace", "-s", "4M")
    make("ndctl", "inject-error", "pmem0", "-B", "0", "-n", "16")
    async with client.open_device("pmem0") as dev:
        with pytest.raises(OSError):
            await dev.read(0, 512)
        await dev.write(0, b"w" * 4096)        # a write clears poison, as the pmem driver does
        assert await dev.read(0, 4096) == b"w" * 4096
        with pytest.raises(OSError):
            await dev.read(8, 512)             # the rest of the range is still bad
        assert (await run_tool("ndctl", "clear-errors", "pmem0")).returncode == 0
        assert await dev.read(8, 512) == bytes(512)
    assert json.loads(make("ndctl", "list", "-M").stdout).get("badblocks") is None


async def test_injecting_an_error_revokes_dax_mappings(dmemu_root):
    make("ndctl", "create-namespace", "-s", "4M")
    async with client.open_device("pmem0") as dev:
        m = await dev.direct_access(0, 4, write=True)
        m.write(0, b"ok")
        assert (await run_tool("ndctl", "inject-error", "pmem0", "-B", "100")).returncode == 0
        assert not m.valid
        with pytest.raises(RevokedError):
            m.write(0, b"no")
        m2 = await dev.direct_access(0, 4, write=True)
        assert m2.read(0, 2) == b"ok"


async def test_hot_removal_under_running_io(dmemu_root):
    make("ndctl", "create-namespace", "-s", "8M")
    errors = []
    async with client.open_device("pmem0") as dev:
        async def writer():
            i = 0
            while True:
                try:
                    await dev.write((i % 2048) * 8, b"z" * 4096)
                except OSError as e:
                    errors.append(e)
                    return
                i += 1
                if i % 64 == 0:
                    await trio.sleep(0)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                await trio.sleep(0.05)
                r = await run_tool("ndctl", "disable-namespace", "namespace0.0")
                assert r.returncode == 0, r.stderr
        assert errors and errors[0].errno == 5 and "removed" in str(errors[0])
        with pytest.raises(OSError):
            await dev.read(0, 512)
        with pytest.raises(OSError):
            await dev.flush()
    assert make("ndctl", "list").stdout.strip() == ""
    assert json.loads(make("ndctl", "list", "-i").stdout)["state"] == "disabled"
    r = tool("dmemud", "status")
    assert r.returncode == 0
    make("ndctl", "enable-namespace", "pmem0")
    async with client.open_device("pmem0") as dev:
        assert await dev.read(0, 4096) == b"z" * 4096


async def test_destroy_refused_while_open_and_nothing_changes(dmemu_root):
    make("ndctl", "create-namespace", "-s", "4M")
    before = sorted(p.name for p in (dmemu_root / "images").iterdir())
    async with client.open_device("pmem0"):
        r = await run_tool("ndctl", "destroy-namespace", "-f", "namespace0.0")
        assert r.returncode == 1
        assert r.stderr.startswith("ndctl: namespace0.0 is busy: open by pid ")
        assert r.stderr.count("\n") == 1
    assert sorted(p.name for p in (dmemu_root / "images").iterdir()) == before
    r = await run_tool("ndctl", "destroy-namespace", "namespace0.0")
    assert (r.returncode, r.stderr) == (
        1, "ndctl: namespace0.0 is active, specify --force for re-configuration\n")
    make("ndctl", "destroy-namespace", "-f", "namespace0.0")
    assert list((dmemu_root / "images").iterdir()) == []


async def test_exclusive_claim(dmemu_root):
    make("ndctl", "create-namespace", "-s", "4M")
    async with client.open_device("pmem0", exclusive=True):
        with pytest.raises(Exception) as e:
            async with client.open_device("pmem0", exclusive=True):
                pass
        assert "claimed by pid" in str(e.value)
        with pytest.raises(Exception) as e:
            async with client.open_device("pmem0"):
                pass
        assert e.value.errno == 16
        async with client.open_device("pmem0", read_only=True) as ro:
            with pytest.raises(OSError) as e:
                await ro.write(0, b"x" * 512)
            assert e.value.errno == 30


async def test_io_beyond_end_fails(dmemu_root):
    make("ndctl", "create-namespace", "-s", "4M")
    async with client.open_device("pmem0") as dev:
        assert dev.nr_sectors == 8192
        with pytest.raises(OSError) as e:
            await dev.write(8191, b"x" * 1024)
        assert "beyond end of device" in str(e.value)
