"""DaxIO, daxfs's loads and stores through direct_access, on real dmemud devices: one cached
mapping per window, reads across windows in one buffer, and stores to a snapshot origin
that copy exactly the chunks they cover, with one request per store."""
import os

from daxfs.dax import WINDOW, DaxIO
from dmemu import client
from tests.helpers import ok

PAGE = 4096
WIN = WINDOW * PAGE


def count_resolves(dev) -> list:
    calls = []
    call = dev.client.call

    async def counting(op, *args, **kwargs):
        if op == "resolve" and kwargs.get("handle") == dev.handle:
            calls.append((kwargs["sector"], kwargs["nr"], kwargs["write"]))
        return await call(op, *args, **kwargs)
    dev.client.call = counting
    return calls


async def test_one_mapping_per_window_and_reads_across_windows(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "16M")
    async with client.open_device("pmem0") as dev:
        io = DaxIO(dev)
        data = os.urandom(3 * WIN)
        await io.write(0, data)
        # Stores anywhere in a window, in any order, leave one write mapping per window.
        for page in (300, 5, 511, 0, 17):
            await io.write((WIN + page * PAGE) // 512, b"w" * 100)
        assert all(len(lst) == 1 for lst in io._write.values())
        expect = bytearray(data)
        for page in (300, 5, 511, 0, 17):
            expect[WIN + page * PAGE:WIN + page * PAGE + 100] = b"w" * 100
        # A read across two window boundaries: one buffer, right bytes, one map per window.
        got = await io.read((WIN - 4096) // 512, WIN + 8192)
        assert bytes(got) == bytes(expect[WIN - 4096:2 * WIN + 4096])
        assert sorted(io._read) == [0, 1, 2]
        assert all(len(lst) == 1 and lst[0].nr_pages == WINDOW for lst in io._read.values())
        assert bytes(await io.read(WIN // 512 + 8, 4096)) == bytes(expect[WIN + 4096:WIN + 8192])


async def test_stores_to_an_origin_copy_only_their_chunks_in_one_request(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "32M")
    async with client.connect() as k:
        await k.call("dm_create", name="real", table="0 16384 linear pmem0 0")
        await k.call("dm_create", name="cow", table="0 16384 linear pmem0 16384")
        await k.call("dm_create", name="snap", table="0 16384 snapshot real cow P 8")
        await k.call("dm_create", name="origin", table="0 16384 snapshot-origin real")
        origin = await k.open_device("origin")
        calls = count_resolves(origin)
        io = DaxIO(origin)
        # 64 pages in the middle of window 0: 64 chunks copied, one request.
        await io.write(100 * PAGE // 512, b"x" * 64 * PAGE)
        assert calls == [(800, 512, True)]
        status = next(d for d in (await k.call("dm_list"))["devices"] if d["name"] == "snap")
        assert status["status"][0] == "0 16384 snapshot 528/16384 16"     # 64 chunks + 2
        # Rewriting them needs nothing more; a store next to them copies its chunk only.
        await io.write(120 * PAGE // 512, b"y" * PAGE)
        assert len(calls) == 1
        await io.write(164 * PAGE // 512, b"z" * 10)
        assert calls[1] == (164 * 8, 8, True)
        status = next(d for d in (await k.call("dm_list"))["devices"] if d["name"] == "snap")
        assert status["status"][0] == "0 16384 snapshot 536/16384 16"
        assert bytes(await io.read(100 * PAGE // 512, PAGE)) == b"x" * PAGE
        await origin.close()
