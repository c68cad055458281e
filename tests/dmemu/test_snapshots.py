"""Snapshots through the data path: copy-on-write, overflow, persistence, revocation, DAX."""
import random

import pytest
import trio

from dmemu import client
from dmemu.client import RevokedError
from dmemu.errors import DmemuError
from tests.helpers import atool, ok, tool

CHUNK = 8          # sectors
PAGE = 4096


async def dm(k, *lines_by_name):
    for name, table in lines_by_name:
        await k.call("dm_create", name=name, table=table)


@pytest.fixture
def ns(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "64M")
    return dmemu_root


async def make_stack(k, cow_sectors=8192, store="P", chunk=CHUNK, nsnaps=1):
    await dm(k, ("real", "0 32768 linear pmem0 0"))
    for i in range(nsnaps):
        await dm(k, (f"cow{i}", f"0 {cow_sectors} linear pmem0 {32768 + i * cow_sectors}"),
                 (f"snap{i}", f"0 32768 snapshot real cow{i} {store} {chunk}"))
    await dm(k, ("origin", "0 32768 snapshot-origin real"))


async def status(k, name):
    devs = (await k.call("dm_list"))["devices"]
    return next(d for d in devs if d["name"] == name)["status"][0]


async def test_origin_writes_copy_first_and_snapshot_keeps_old_data(ns):
    async with client.connect() as k:
        await dm(k, ("real", "0 32768 linear pmem0 0"))
        real = await k.open_device("real")
        await real.write(0, b"old!" * 1024 * 4)          # 4 chunks of old data
        await real.close()
        await dm(k, ("cow", "0 8192 linear pmem0 32768"), ("snap", "0 32768 snapshot real cow P 8"),
                 ("origin", "0 32768 snapshot-origin real"))
        origin, snap = await k.open_device("origin"), await k.open_device("snap")
        await origin.write(8, b"new!" * 128)              # one sector of chunk 1
        assert await origin.read(8, 8) == b"new!" * 2
        assert await snap.read(8, 4096) == b"old!" * 1024
        assert await snap.read(0, 8) == b"old!" * 2
        assert await status(k, "snap") == "0 32768 snapshot 24/8192 16"
        await snap.write(16, b"snap" * 128)               # writable snapshot, chunk 2
        assert await snap.read(16, 8) == b"snap" * 2
        assert await origin.read(16, 8) == b"old!" * 2
        assert await status(k, "snap") == "0 32768 snapshot 32/8192 16"


async def test_several_snapshots_each_get_their_copy(ns):
    async with client.connect() as k:
        await make_stack(k, nsnaps=3)
        origin = await k.open_device("origin")
        snaps = [await k.open_device(f"snap{i}") for i in range(3)]
        await origin.write(0, b"1" * PAGE)
        await snaps[1].write(0, b"S" * 512)
        await origin.write(0, b"2" * PAGE)
        assert await snaps[0].read(0, 512) == bytes(512)
        assert await snaps[1].read(0, 1024) == b"S" * 512 + bytes(512)
        assert await snaps[2].read(0, 512) == bytes(512)


async def test_overflow_invalidates_snapshot_origin_carries_on(ns):
    async with client.connect() as k:
        await make_stack(k, cow_sectors=64)               # header + 1 area + 6 data chunks
        origin, snap = await k.open_device("origin"), await k.open_device("snap0")
        for i in range(6):
            await origin.write(i * CHUNK, b"x" * PAGE)
        assert await status(k, "snap0") == "0 32768 snapshot 64/64 16"
        assert await snap.read(0, 8) == bytes(8)
        await origin.write(6 * CHUNK, b"y" * PAGE)        # no room: the snapshot is invalidated
        assert await status(k, "snap0") == "0 32768 snapshot Invalid"
        with pytest.raises(OSError) as e:
            await snap.read(0, 512)
        assert e.value.errno == 5
        await origin.write(100 * CHUNK, b"z" * PAGE)      # the origin is unharmed
        assert await origin.read(6 * CHUNK, 4) == b"yyyy"
        info = next(d for d in (await k.call("dm_list"))["devices"] if d["name"] == "snap0")
        assert info["event_nr"] >= 1


async def test_po_store_overflows_snapshot_writes_only(ns):
    async with client.connect() as k:
        await make_stack(k, cow_sectors=32, store="PO")   # room for 2 exceptions
        origin, snap = await k.open_device("origin"), await k.open_device("snap0")
        await origin.write(0, b"o" * PAGE)
        await snap.write(8, b"s" * PAGE)
        with pytest.raises(OSError):
            await snap.write(16, b"t" * PAGE)
        assert await status(k, "snap0") == "0 32768 snapshot Overflow"
        assert await snap.read(8, 4) == b"ssss"           # reads keep working


async def test_persistent_store_survives_reload_transient_does_not(ns):
    async with client.connect() as k:
        await make_stack(k)
        origin = await k.open_device("origin")
        await origin.write(0, b"after" * 100)
        await origin.close()
        for name in ("origin", "snap0"):
            await k.call("dm_remove", name=name)
        await dm(k, ("snap0", "0 32768 snapshot real cow0 P 0"))   # chunk size from the header
        assert await status(k, "snap0") == "0 32768 snapshot 24/8192 16"
        snap = await k.open_device("snap0")
        assert await snap.read(0, 512) == bytes(512)      # still the pre-write view
        tbl = next(d for d in (await k.call("dm_list"))["devices"] if d["name"] == "snap0")["table"]
        assert tbl == ["0 32768 snapshot 253:0 253:1 P 8"]


async def test_mapping_handed_out_before_a_snapshot_is_revoked(ns):
    async with client.connect() as k:
        await dm(k, ("lv", "0 32768 linear pmem0 0"))
        lv = await k.open_device("lv", exclusive=True)
        m = await lv.direct_access(0, 4, write=True)
        m.write(0, b"before snapshot")
        # What lvcreate -s does: new devices, suspend the origin, swap its table, resume.
        await dm(k, ("lv-real", "0 32768 linear pmem0 0"), ("cow", "0 8192 linear pmem0 32768"),
                 ("snap", "0 32768 snapshot lv-real cow P 8"))
        await k.call("dm_suspend", name="lv")
        assert not m.valid
        await k.call("dm_load", name="lv", table="0 32768 snapshot-origin lv-real")
        await k.call("dm_resume", name="lv")
        with pytest.raises(RevokedError):
            m.write(0, b"AFTER snapshot!")
        m = await lv.direct_access(0, 4, write=True)      # mapped again: through copy-on-write
        assert lv.dax
        m.write(0, b"AFTER snapshot!")
        snap = await k.open_device("snap")
        assert await snap.read(0, 15) == b"before snapshot"
        assert await lv.read(0, 15) == b"AFTER snapshot!"


async def test_snapshot_read_mapping_is_revoked_when_origin_copies(ns):
    async with client.connect() as k:
        await make_stack(k)
        origin, snap = await k.open_device("origin"), await k.open_device("snap0")
        await origin.write(0, b"v1" * 2048)
        s = await snap.direct_access(1, 1, write=False)   # page 1 still lives on the origin
        assert s.read(0, 2) == bytes(2)
        await origin.write(8, b"v2" * 2048)               # copies page 1 to the COW first
        with pytest.raises(RevokedError):
            s.read(0, 2)
        s = await snap.direct_access(1, 1, write=False)
        assert s.read(0, 2) == bytes(2)


async def test_suspend_holds_io_until_resume(ns):
    async with client.connect() as k:
        await dm(k, ("lin", "0 8192 linear pmem0 0"))
        dev = await k.open_device("lin")
        await k.call("dm_suspend", name="lin")
        done = trio.Event()

        async def writer():
            await dev.write(0, b"held" * 128)
            done.set()
        async with trio.open_nursery() as n:
            n.start_soon(writer)
            with trio.move_on_after(0.5):
                await done.wait()
            assert not done.is_set()                       # held while suspended
            await k.call("dm_resume", name="lin")
            with trio.fail_after(5):
                await done.wait()
        assert await dev.read(0, 4) == b"held"


async def test_suspend_fails_cleanly_when_the_filesystem_does_not_freeze(ns, monkeypatch):
    monkeypatch.setenv("DMEMU_REVOKE_TIMEOUT", "1")
    tool("dmemud", "stop")           # restart so the daemon takes the short timeout
    async with client.connect() as k:
        await dm(k, ("lin", "0 8192 linear pmem0 0"))
        # A holder whose reader never answers: a raw connection that opens and stops reading.
        import socket as _s
        from dmemu import protocol
        raw = _s.socket(_s.AF_UNIX)
        raw.connect(str(ns / "dmemud.sock"))
        raw.sendall(protocol.encode({"id": 1, "op": "hello", "prog": "stuck"}))
        raw.sendall(protocol.encode({"id": 2, "op": "open", "device": "lin", "exclusive": True}))
        r = await atool("dmsetup", "suspend", "lin")
        assert r.returncode == 1
        assert "could not freeze the filesystem on it: pid" in r.stderr and "nothing was changed" in r.stderr
        assert "L--w" in (await atool("dmsetup", "info", "-c", "lin")).stdout
        raw.close()


async def test_dax_change_under_users_refused(ns):
    ok("dmemu", "disk", "create", "-s", "16M")
    async with client.connect() as k:
        await dm(k, ("lv", "0 8192 linear pmem0 0"))
        dev = await k.open_device("lv")
        with pytest.raises(DmemuError) as e:
            await k.call("dm_load", name="lv", table="0 8192 linear disk0 0")
        assert e.value.message.startswith(
            "reload ioctl on lv (253:0) refused: the device is in use (by pid ")
        assert "is DAX-capable, but the new table is not DAX-capable (disk0 (7:0) is not DAX-capable)" in e.value.message
        info = next(d for d in (await k.call("dm_list"))["devices"] if d["name"] == "lv")
        assert not info["inactive"]
        await dev.close()
        await k.call("dm_load", name="lv", table="0 8192 linear disk0 0")   # nobody uses it now
        await k.call("dm_resume", name="lv")


async def test_linux_mode_refuses_snapshot_origin_under_a_dax_user(ns):
    async with client.connect() as k:
        await k.call("dm_param", param="snapshot_dax", value=False)
        await dm(k, ("lv", "0 32768 linear pmem0 0"), ("lv-real", "0 32768 linear pmem0 0"))
        dev = await k.open_device("lv", exclusive=True)
        with pytest.raises(DmemuError) as e:
            await k.call("dm_load", name="lv", table="0 32768 snapshot-origin lv-real")
        assert "snapshot-origin on line 1 does not support direct access (snapshot_dax is off)" in e.value.message
        assert dev.dax


async def test_remove_force_leaves_error_target_for_users(ns):
    async with client.connect() as k:
        await dm(k, ("lin", "0 8192 linear pmem0 0"))
        dev = await k.open_device("lin")
        with pytest.raises(DmemuError) as e:
            await k.call("dm_remove", name="lin")
        assert "device is in use (by pid" in e.value.message
        with pytest.raises(DmemuError):
            await k.call("dm_remove", name="lin", force=True)
        with pytest.raises(OSError):
            await dev.read(0, 512)
        await dev.close()
        await k.call("dm_remove", name="lin")


@pytest.mark.parametrize("seed", range(4))
async def test_snapshots_match_a_model_under_random_io(ns, seed):
    """Random writes to origin and snapshots, by bios and by direct_access, against a model."""
    rng = random.Random(seed)
    nchunks, cow_chunks = 64, 6 if seed % 2 else 200
    async with client.connect() as k:
        await dm(k, ("real", f"0 {nchunks * CHUNK} linear pmem0 0"))
        model = {"origin": bytearray(nchunks * PAGE)}
        devs = {"origin": await k.open_device("real")}
        valid = {}
        cows = 0
        for step in range(60):
            if len(valid) < 3 and rng.random() < 0.08:      # take a snapshot of the origin now
                i = len(valid)
                cow = 1 + 1 + cow_chunks + (cow_chunks // 512 + 1)
                await devs["origin"].close()
                await dm(k, (f"cow{i}", f"0 {cow * CHUNK} linear pmem0 {(nchunks + cows) * CHUNK}"),
                         (f"snap{i}", f"0 {nchunks * CHUNK} snapshot real cow{i} P {CHUNK}"))
                cows += cow
                if "origin" not in [d["name"] for d in (await k.call("dm_list"))["devices"]]:
                    await dm(k, ("origin", f"0 {nchunks * CHUNK} snapshot-origin real"))
                devs["origin"] = await k.open_device("origin")
                devs[f"snap{i}"] = await k.open_device(f"snap{i}")
                model[f"snap{i}"] = bytearray(model["origin"])
                valid[f"snap{i}"] = True
            name = rng.choice(list(devs))
            dev = devs[name]
            page = rng.randrange(nchunks)
            data = bytes([rng.randrange(1, 256)]) * PAGE
            try:
                if rng.random() < 0.5:
                    await dev.write(page * CHUNK, data)
                else:
                    m = await dev.direct_access(page, 1, write=True)
                    m.write(0, data)
            except OSError:
                # Only a snapshot whose store overflowed may refuse a write; never the origin.
                assert name != "origin", step
                assert (await status(k, name)).endswith("Invalid"), (name, step)
                valid[name] = False
                continue
            model[name][page * PAGE:(page + 1) * PAGE] = data
            # Check everything that is still valid against the model.
            for n, d in devs.items():
                st = (await status(k, n)) if n != "origin" else ""
                if n != "origin" and st.endswith("Invalid"):
                    valid[n] = False
                    with pytest.raises(OSError):
                        await d.read(0, 512)
                    continue
                p = rng.randrange(nchunks)
                assert await d.read(p * CHUNK, PAGE) == bytes(model[n][p * PAGE:(p + 1) * PAGE]), (n, p, step)
        if seed % 2 and valid:
            assert not all(valid.values())   # the small COW stores overflowed
