"""Snapshots through the lvm tools with data going through them: the 2018 scenario under a
busy DAX writer, contents frozen byte for byte, persistence over a dmemud restart, overflow,
the refusal to mix DAX and non-DAX devices, in-use refusals, concurrent commands."""
import random

import pytest
import trio

from dmemu import client
from dmemu.client import RevokedError
from tests.helpers import atool, ok
from tests.lvm.util import state

PAGE = 4096


async def must(*args) -> str:
    r = await atool(*args)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


async def read_all(k, name: str, nbytes: int) -> bytes:
    dev = await k.open_device(name, read_only=True)
    try:
        return await dev.read(0, nbytes)
    finally:
        await dev.close()


async def test_seed_scenario_with_a_dax_writer_busy_on_the_origin(pmem):
    ok("lvm", "vgcreate", "-f", "vg0", "/dev/pmem0")
    ok("lvm", "lvcreate", "-L", "128M", "-n", "lv0", "vg0")
    pages = 256
    async with client.connect() as k:
        dev = await k.open_device("/dev/mapper/vg0-lv0", exclusive=True)
        assert dev.dax
        st = {"n": 0, "frozen": False, "frozen_at": None, "freezes": 0, "remaps": 0}
        lock = trio.Lock()

        async def on_freeze(event):
            # As a filesystem does: finish the store in progress, then stop storing.
            async with lock:
                if event == "freeze":
                    st["frozen"], st["frozen_at"] = True, st["n"]
                    st["freezes"] += 1
                else:
                    st["frozen"] = False
        dev.freeze_hook = on_freeze

        async def writer(stop: trio.Event):
            maps = {}       # page -> mapping; through copy-on-write a mapping may be one page
            while not stop.is_set():
                async with lock:
                    if not st["frozen"]:
                        i = st["n"]
                        page = i % pages
                        try:
                            m = maps.get(page)
                            if m is None:
                                m = maps[page] = await dev.direct_access(page, 1, write=True)
                            m.write(0, i.to_bytes(8, "little"))
                            st["n"] = i + 1
                        except RevokedError:
                            maps.clear()
                            st["remaps"] += 1
                await trio.sleep(0)

        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, stop)
            with trio.fail_after(60):
                while st["n"] < 500:
                    await trio.sleep(0.01)
            r = await atool("lvm", "lvcreate", "-s", "-L", "4M", "-n", "snap0", "vg0/lv0")
            assert (r.returncode, r.stdout, r.stderr) == (0, '  Logical volume "snap0" created.\n', "")
            with trio.fail_after(60):
                while st["n"] < st["frozen_at"] + 500:      # the writer carries on after the thaw
                    await trio.sleep(0.01)
            stop.set()
        assert st["freezes"] == 1 and st["remaps"] >= 1 and not st["frozen"]

        def model(upto):
            img = bytearray(pages * PAGE)
            for i in range(upto):
                p = (i % pages) * PAGE
                img[p:p + 8] = i.to_bytes(8, "little")
            return bytes(img)
        snap = await k.open_device("vg0-snap0", read_only=True)
        assert snap.dax                     # the snapshot is DAX-capable, like its origin
        seen = b"".join([(await snap.direct_access(p, 1, write=False)).read(0, PAGE)
                         for p in range(pages)])
        assert seen == model(st["frozen_at"])
        assert await dev.read(0, pages * PAGE) == model(st["n"])
        await snap.close()
        await dev.close()
    out = ok("lvs", "--noheadings", "-o", "lv_name,lv_attr,origin,lv_dax")
    assert out == "  lv0   owi-a-s---     yes\n  snap0 swi-a-s--- lv0 yes\n"


async def test_snapshot_keeps_its_contents_through_heavy_writes_and_a_restart(pmem):
    await must("vgcreate", "vg0", "/dev/pmem0")
    await must("lvcreate", "-L", "16M", "-n", "lv0", "vg0")
    size = 16 << 20
    rng = random.Random(2018)
    before = rng.randbytes(size)
    async with client.connect() as k:
        lv = await k.open_device("vg0-lv0")
        await lv.write(0, before)
        await lv.close()
    await must("lvcreate", "-s", "-L", "20M", "-n", "snap0", "vg0/lv0")
    model = bytearray(before)
    async with client.connect() as k:
        lv = await k.open_device("vg0-lv0")
        for _ in range(300):
            sector = rng.randrange(size // 512)
            n = min(rng.choice([512, 4096, 12288, 65536]), size - sector * 512)
            data = rng.randbytes(n)
            await lv.write(sector, data, fua=rng.random() < 0.2)
            model[sector * 512:sector * 512 + n] = data
        await lv.close()
        assert await read_all(k, "vg0-snap0", size) == before
        assert await read_all(k, "vg0-lv0", size) == bytes(model)
    lvs_before = ok("lvs")
    percent = float(lvs_before.splitlines()[2].split()[-1])
    assert 0 < percent < 100
    assert (await atool("dmemud", "stop")).returncode == 0
    assert ok("dmsetup", "ls") == "No devices found\n"        # a reboot: no DM devices
    assert ok("vgchange", "-ay") == '  2 logical volume(s) in volume group "vg0" now active\n'
    assert ok("lvs") == lvs_before
    assert ok("dmsetup", "table") == (
        "vg0-lv0: 0 32768 snapshot-origin 253:0\n"
        "vg0-lv0-real: 0 32768 linear 259:0 2048\n"
        "vg0-snap0: 0 32768 snapshot 253:0 253:1 P 8\n"
        "vg0-snap0-cow: 0 40960 linear 259:0 34816\n")
    async with client.connect() as k:
        assert await read_all(k, "vg0-snap0", size) == before
        assert await read_all(k, "vg0-lv0", size) == bytes(model)


async def test_overflow_invalidates_the_snapshot_and_lvs_shows_it(pmem):
    await must("vgcreate", "vg0", "/dev/pmem0")
    await must("lvcreate", "-L", "16M", "-n", "lv0", "vg0")
    await must("lvcreate", "-s", "-L", "4M", "-n", "snap0", "vg0/lv0")
    async with client.connect() as k:
        lv = await k.open_device("vg0-lv0")
        await lv.write(0, b"\1" * (2 << 20))                # 512 chunks: fits
        out = await must("lvs", "-o", "lv_name,lv_attr,data_percent")
        assert out == "  LV    Attr       Data% \n  lv0   owi-aos---       \n  snap0 swi-a-s---  50.39\n"
        await lv.write(4096, b"\2" * (6 << 20))             # 1536 more: overflows
        assert await lv.read(4096, 6 << 20) == b"\2" * (6 << 20)    # the origin carries on
        snap = await k.open_device("vg0-snap0", read_only=True)
        with pytest.raises(OSError):
            await snap.read(0, 512)
        await snap.close()
        await lv.close()
    expect = (
        "  LV    VG  Attr       LSize  Pool Origin Data%  Meta%  Move Log Cpy%Sync Convert\n"
        "  lv0   vg0 owi-a-s--- 16.00m                                                    \n"
        "  snap0 vg0 swi-I-s---  4.00m      lv0    100.00                                 \n")
    assert ok("lvs") == expect
    ok("dmemud", "stop")
    ok("vgchange", "-ay")
    assert ok("lvs") == expect                    # invalid is on disk: it stays invalid
    assert ok("lvremove", "vg0/snap0") == '  Logical volume "snap0" successfully removed.\n'


async def test_cow_on_a_non_dax_pv_is_refused_before_anything_changes(pmem):
    await must("vgcreate", "vg0", "/dev/pmem0", "/dev/disk0")
    await must("lvcreate", "-L", "128M", "-n", "lv0", "vg0")
    before = await trio.to_thread.run_sync(state)
    async with client.connect() as k:
        disk_before = await read_all(k, "/dev/disk0", 64 << 20)
        pmem_before = await read_all(k, "/dev/pmem0", 256 << 20)
    r = await atool("lvcreate", "-s", "-L", "4M", "-n", "snap0", "vg0/lv0", "/dev/disk0")
    assert (r.returncode, r.stdout) == (5, "")
    assert r.stderr == (
        "  Cannot create snapshot vg0/snap0 of vg0/lv0: the origin is on /dev/pmem0 and the COW "
        "would be on /dev/disk0; DAX-capable: /dev/pmem0; not DAX-capable: /dev/disk0. A snapshot "
        "cannot mix DAX-capable and non-DAX devices: put the COW on DAX-capable PVs like its origin "
        "(e.g. lvcreate -s ... vg0/lv0 /dev/pmem0). Nothing was changed.\n")
    assert await trio.to_thread.run_sync(state) == before
    assert ok("dmsetup", "ls") == "vg0-lv0\t(253:0)\n"
    async with client.connect() as k:       # not one byte written on either device
        assert await read_all(k, "/dev/disk0", 64 << 20) == disk_before
        assert await read_all(k, "/dev/pmem0", 256 << 20) == pmem_before
    # Without a PV named, the COW goes where the origin's kind of device has room.
    out = await must("lvcreate", "-s", "-L", "4M", "-n", "snap0", "vg0/lv0")
    assert out == '  Logical volume "snap0" created.\n'
    assert ok("lvs", "--noheadings", "-o", "lv_name,devices,lv_dax") == (
        "  lv0   /dev/pmem0(0)  yes\n  snap0 /dev/pmem0(32) yes\n")


async def test_lvs_in_use_refusals(pmem):
    await must("vgcreate", "vg0", "/dev/pmem0")
    await must("lvcreate", "-L", "8M", "-n", "lv0", "vg0")
    await must("lvcreate", "-s", "-L", "4M", "-n", "snap0", "vg0/lv0")
    before = await trio.to_thread.run_sync(state)
    async with client.connect() as k:
        mounted = await k.open_device("vg0-lv0", exclusive=True)
        for args, err in [
            (("lvremove", "-f", "vg0/lv0"), "  Logical volume vg0/lv0 contains a filesystem in use.\n"),
            (("vgchange", "-an", "vg0"), '  Can\'t deactivate volume group "vg0" with 1 open logical volume(s)\n'),
            (("vgremove", "-f", "vg0"), "  Logical volume vg0/lv0 contains a filesystem in use.\n"),
        ]:
            r = await atool(*args)
            assert (r.returncode, r.stdout, r.stderr) == (5, "", err)
        await mounted.close()
        reader = await k.open_device("vg0-snap0", read_only=True)
        r = await atool("lvremove", "vg0/snap0")
        assert (r.returncode, r.stdout, r.stderr) == (5, "", "  Logical volume vg0/snap0 in use.\n")
        assert (await atool("lvs", "--noheadings", "-o", "lv_attr", "vg0/snap0")).stdout == "  swi-aos---\n"
        await reader.close()
    assert await trio.to_thread.run_sync(state) == before


async def test_concurrent_lvcreates_each_get_their_own_extents(pmem):
    await must("vgcreate", "vg0", "/dev/pmem0")
    results = []

    async def one(i):
        results.append(await atool("lvcreate", "-L", "8M", "-n", f"lv{i}", "vg0"))
    async with trio.open_nursery() as n:
        for i in range(6):
            n.start_soon(one, i)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    rows = ok("lvs", "--noheadings", "-o", "lv_name,devices").split()
    names, devices = rows[0::2], rows[1::2]
    assert sorted(names) == [f"lv{i}" for i in range(6)]
    assert sorted(devices) == sorted(f"/dev/pmem0({2 * i})" for i in range(6))
    assert ok("vgs", "--noheadings", "-o", "vg_seqno") == "  7\n"


async def test_linux_mode_refusal_under_a_dax_user_is_undone_whole(pmem):
    """With snapshot_dax off dmemud behaves as Linux: snapshot-origin is not DAX-capable, so
    the origin's reload is refused while a DAX user has it open. lvcreate must undo every
    step it made (the 2018 report ended in 'Manual intervention required')."""
    await must("vgcreate", "vg0", "/dev/pmem0")
    await must("lvcreate", "-L", "8M", "-n", "lv0", "vg0")
    async with client.connect() as k:
        await k.call("dm_param", param="snapshot_dax", value=False)
        mounted = await k.open_device("vg0-lv0", exclusive=True)
        before = await trio.to_thread.run_sync(state)
        r = await atool("lvcreate", "-s", "-L", "4M", "-n", "snap0", "vg0/lv0")
        assert (r.returncode, r.stdout) == (5, "")
        first, second = r.stderr.splitlines()
        assert first.startswith("  reload ioctl on vg0-lv0 (253:0) refused: the device is in use (by pid ")
        assert "snapshot-origin on line 1 does not support direct access (snapshot_dax is off)" in first
        assert second == "  Failed to create snapshot vg0/snap0 of vg0/lv0. Nothing was changed."
        assert await trio.to_thread.run_sync(state) == before
        assert mounted.dax
        m = await mounted.direct_access(0, 1, write=True)     # the user carries on, thawed
        m.write(0, b"still here")
        await mounted.close()
    r = await atool("lvcreate", "-s", "-L", "4M", "-n", "snap0", "vg0/lv0")   # unused: fine
    assert (r.returncode, r.stderr) == (0, "")
    assert ok("lvs", "--noheadings", "-o", "lv_name,lv_dax") == "  lv0   no\n  snap0 no\n"


async def test_a_new_cow_starts_empty_whatever_its_extents_held(pmem):
    """lvcreate zeroes the start of the COW: a stale exception store left in freed extents
    (here a valid-looking header and an exception for chunk 0) must not come back."""
    import struct
    await must("vgcreate", "vg0", "/dev/pmem0")
    await must("lvcreate", "-L", "8M", "-n", "lv0", "vg0")
    await must("lvcreate", "-L", "4M", "-n", "junk", "vg0")
    async with client.connect() as k:
        lv = await k.open_device("vg0-lv0")
        await lv.write(0, b"origin" * 1000)
        await lv.close()
        junk = await k.open_device("vg0-junk")
        await junk.write(0, struct.pack("<4I", 0x70416E53, 1, 1, 8))          # header chunk
        await junk.write(8, struct.pack("<2Q", 0, 2))                        # chunk 0 -> 2
        await junk.write(16, b"stale!" * 600)                                # chunk 2
        await junk.close()
    await must("lvremove", "vg0/junk")
    await must("lvcreate", "-s", "-L", "4M", "-n", "snap0", "vg0/lv0")
    assert ok("lvs", "--noheadings", "-o", "lv_name,devices,data_percent", "vg0/snap0") == \
        "  snap0 /dev/pmem0(2)   0.00\n"
    async with client.connect() as k:
        assert await read_all(k, "vg0-snap0", 6000) == b"origin" * 1000


async def test_extending_an_active_snapshot_saves_it_from_overflowing(pmem):
    await must("vgcreate", "vg0", "/dev/pmem0", "/dev/disk0")
    await must("lvcreate", "-L", "16M", "-n", "lv0", "vg0")
    await must("lvcreate", "-s", "-L", "4M", "-n", "snap0", "vg0/lv0")
    rng = random.Random(81)
    before = rng.randbytes(16 << 20)
    async with client.connect() as k:
        lv = await k.open_device("vg0-lv0")
        await lv.write(0, before)     # every chunk copied would overflow 4 MiB four times
        assert ok("lvs", "--noheadings", "-o", "lv_attr,data_percent", "vg0/snap0") == \
            "  swi-I-s--- 100.00\n"
    await must("lvremove", "vg0/snap0")
    await must("lvcreate", "-s", "-L", "4M", "-n", "snap0", "vg0/lv0")
    r = await atool("lvextend", "-L", "+4M", "vg0/snap0", "/dev/disk0")
    assert r.returncode == 5 and "Cannot extend snapshot vg0/snap0 of vg0/lv0" in r.stderr
    async with client.connect() as k:
        lv = await k.open_device("vg0-lv0")
        await lv.write(0, bytes(3 << 20))                      # 3 MiB copied: 75 % of 4 MiB
        out = await must("lvextend", "-L", "+16M", "vg0/snap0")
        assert out == ("  Size of logical volume vg0/snap0 changed from 4.00 MiB (1 extents) "
                       "to 20.00 MiB (5 extents).\n  Logical volume vg0/snap0 successfully resized.\n")
        assert ok("dmsetup", "table", "vg0-snap0-cow") == "0 40960 linear 259:0 34816\n"
        await lv.write(3 << 11, bytes(13 << 20))               # the rest: 16 MiB in all
        await lv.close()
        assert ok("lvs", "--noheadings", "-o", "lv_attr", "vg0/snap0") == "  swi-a-s---\n"
        assert await read_all(k, "vg0-snap0", 16 << 20) == before


async def _origin_with_snapshot_and_changes(rng) -> bytes:
    await must("vgcreate", "vg0", "/dev/pmem0")
    await must("lvcreate", "-L", "8M", "-n", "lv0", "vg0")
    then = rng.randbytes(8 << 20)
    async with client.connect() as k:
        lv = await k.open_device("vg0-lv0")
        await lv.write(0, then)
        await lv.close()
    await must("lvcreate", "-s", "-L", "8M", "-n", "snap0", "vg0/lv0")
    async with client.connect() as k:
        lv = await k.open_device("vg0-lv0")
        for _ in range(100):
            sector = rng.randrange((8 << 20) // 512 - 64)
            await lv.write(sector, rng.randbytes(rng.choice([512, 4096, 32768])))
        await lv.close()
    return then


def _merged_output(out: str) -> None:
    """lvconvert --merge in the foreground: started, progress (how many lines depends on
    how far the merge got by each look), 100%, finished, the snapshot gone."""
    lines = out.splitlines()
    assert lines[0] == "  Merging of volume vg0/snap0 started."
    assert lines[-3:] == ["  vg0/lv0: Merged: 100.00%",
                          "  Merge of snapshot into logical volume vg0/lv0 has finished.",
                          '  Logical volume "snap0" successfully removed.']
    for line in lines[1:-3]:
        assert line.startswith("  vg0/lv0: Merged: ") and line.endswith("%"), line


async def test_merge_puts_the_snapshot_time_contents_back(pmem):
    rng = random.Random(7)
    then = await _origin_with_snapshot_and_changes(rng)
    r = await atool("lvconvert", "--merge", "vg0/snap0")
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    _merged_output(r.stdout)
    assert ok("lvs", "-a", "--noheadings", "-o", "lv_name,lv_attr") == "  lv0 -wi-a-----\n"
    assert ok("dmsetup", "table") == "vg0-lv0: 0 16384 linear 259:0 2048\n"
    async with client.connect() as k:
        assert await read_all(k, "vg0-lv0", 8 << 20) == then


async def test_merge_of_an_open_origin_waits_for_its_next_activation(pmem):
    rng = random.Random(8)
    then = await _origin_with_snapshot_and_changes(rng)
    async with client.connect() as k:
        lv = await k.open_device("vg0-lv0")
        r = await atool("lvconvert", "--merge", "vg0/snap0")
        assert (r.returncode, r.stdout, r.stderr) == (
            0, "  Delaying merge since origin is open.\n"
               "  Merging of snapshot vg0/snap0 will occur on next activation of vg0/lv0.\n", "")
        # Nothing moved yet: the origin still has its newer contents, the tables are as before.
        assert "snapshot-origin" in ok("dmsetup", "table", "vg0-lv0")
        assert ok("lvs", "--noheadings", "-o", "lv_name,lv_attr,origin") == "  lv0 Owi-aos--- \n"
        assert ok("lvs", "-a", "--noheadings", "-o", "lv_name,lv_attr,origin") == (
            "  lv0     Owi-aos---    \n  [snap0] Swi-a-s--- lv0\n")
        r = await atool("lvremove", "vg0/snap0")
        assert (r.returncode, r.stderr) == (5, "  Can't remove merging snapshot logical volume vg0/snap0.\n")
        r = await atool("lvconvert", "--merge", "vg0/snap0")
        assert (r.returncode, r.stderr) == (5, "  Cannot merge snapshot vg0/snap0 into the origin "
                                               "vg0/lv0 with merging snapshot vg0/snap0.\n")
        await lv.close()
    await must("lvchange", "-an", "vg0/lv0")
    assert ok("dmsetup", "ls") == "No devices found\n"
    # Activation starts the merge (and a background poller, as lvmpolld would).
    await must("lvchange", "-ay", "vg0/lv0")
    table = ok("dmsetup", "table", "vg0-lv0")
    assert table in ("0 16384 snapshot-merge 253:0 253:1 P 8\n", "0 16384 linear 259:0 2048\n")
    async with client.connect() as k:
        # Usable while it merges: it reads as the snapshot did.
        assert await read_all(k, "vg0-lv0", 8 << 20) == then
    r = await atool("lvm", "lvpoll", "--polloperation", "merge", "-i", "1", "vg0/lv0")
    assert r.returncode == 0, r.stderr
    assert ok("lvs", "-a", "--noheadings", "-o", "lv_name,lv_attr") == "  lv0 -wi-a-----\n"
    assert ok("dmsetup", "table") == "vg0-lv0: 0 16384 linear 259:0 2048\n"
    async with client.connect() as k:
        assert await read_all(k, "vg0-lv0", 8 << 20) == then


async def test_background_merge_cut_by_a_restart_carries_on_at_activation(pmem):
    rng = random.Random(9)
    then = await _origin_with_snapshot_and_changes(rng)
    r = await atool("lvconvert", "--merge", "-b", "vg0/snap0")
    assert (r.returncode, r.stdout, r.stderr) == (0, "  Merging of volume vg0/snap0 started.\n", "")
    await must("dmemud", "stop", "--force")          # a reboot, wherever the merge was
    await must("vgchange", "-ay", "vg0")
    r = await atool("lvm", "lvpoll", "--polloperation", "merge", "-i", "1", "vg0/lv0")
    assert r.returncode == 0, r.stderr
    assert ok("lvs", "-a", "--noheadings", "-o", "lv_name") == "  lv0\n"
    async with client.connect() as k:
        assert await read_all(k, "vg0-lv0", 8 << 20) == then


async def test_an_invalid_snapshot_is_not_merged(pmem):
    await must("vgcreate", "vg0", "/dev/pmem0")
    await must("lvcreate", "-L", "8M", "-n", "lv0", "vg0")
    await must("lvcreate", "-s", "-L", "4M", "-n", "snap0", "vg0/lv0")
    async with client.connect() as k:
        lv = await k.open_device("vg0-lv0")
        await lv.write(0, b"\7" * (8 << 20))             # overflows the 4 MiB COW
        await lv.close()
    before = await trio.to_thread.run_sync(state)
    r = await atool("lvconvert", "--merge", "vg0/snap0")
    assert (r.returncode, r.stdout, r.stderr) == (5, "", "  Unable to merge invalidated snapshot LV vg0/snap0.\n")
    assert await trio.to_thread.run_sync(state) == before


async def test_lvpoll_that_meets_a_merge_another_poller_finished_says_it_is_done(pmem, capsys,
                                                                                monkeypatch):
    """The poller an activation starts may finish the merge between lvpoll's look at the
    metadata (still merging) and its look at the table (linear again): that is the merge
    done, not an interrupted one. The first look is made stale on purpose here."""
    from dmemu.lvm.commands import merge as merge_cmd
    await _origin_with_snapshot_and_changes(random.Random(10))
    async with client.connect() as k:
        lv = await k.open_device("vg0-lv0")
        await must("lvconvert", "--merge", "vg0/snap0")     # delayed: the origin is open
        stale = await merge_cmd.scan(k)                     # says merging
        await lv.close()
    await must("lvchange", "-an", "vg0/lv0")
    await must("lvchange", "-ay", "vg0/lv0")                # merges, with its own poller
    await must("lvm", "lvpoll", "--polloperation", "merge", "-i", "1", "vg0/lv0")
    assert ok("dmsetup", "table") == "vg0-lv0: 0 16384 linear 259:0 2048\n"
    real = merge_cmd.scan
    looks = []

    async def first_look_stale(k):
        looks.append(None)
        return stale if len(looks) == 1 else await real(k)
    monkeypatch.setattr(merge_cmd, "scan", first_look_stale)
    capsys.readouterr()
    async with client.connect() as k:
        await merge_cmd.poll_merge(k, "vg0", "lv0", 1, progress=True)
    assert capsys.readouterr().out == (
        "  Logical volume vg0/lv0 is no longer merging origin, polling has finished.\n")
