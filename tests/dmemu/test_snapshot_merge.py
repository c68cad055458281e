"""The snapshot-merge target: the snapshot's chunks go back to the origin while the origin
is in use, with the kernel's table and status text, and a crash part-way resumes."""
import pytest
import trio

from dmemu import client
from tests.helpers import ok, tool

PAGE = 4096


@pytest.fixture
def ns(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "64M")
    return dmemu_root


async def dm(k, *lines_by_name):
    for name, table in lines_by_name:
        await k.call("dm_create", name=name, table=table)


async def info(k, name):
    devs = (await k.call("dm_list"))["devices"]
    return next(d for d in devs if d["name"] == name)


async def snapshot_with_changes(k, nchunks=200):
    """origin over real with one snapshot; the origin then overwrites nchunks chunks, so
    the COW holds their old contents ("old!" + chunk number)."""
    await dm(k, ("real", "0 32768 linear pmem0 0"))
    real = await k.open_device("real")
    for c in range(2048):
        await real.write(c * 8, (f"old{c:05}".encode() * 512)[:PAGE])
    await real.close()
    await dm(k, ("cow", "0 8192 linear pmem0 32768"), ("snap", "0 32768 snapshot real cow P 8"),
             ("origin", "0 32768 snapshot-origin real"))
    origin = await k.open_device("origin")
    for c in range(nchunks):
        await origin.write(c * 8, (f"new{c:05}".encode() * 512)[:PAGE])
    await origin.close()


async def switch_to_merge(k):
    await k.call("dm_suspend", name="origin")
    await k.call("dm_remove", name="snap")
    await k.call("dm_load", name="origin", table="0 32768 snapshot-merge real cow P 8")
    await k.call("dm_resume", name="origin")


async def test_merge_puts_the_snapshot_back_while_the_origin_is_written(ns):
    async with client.connect() as k:
        await snapshot_with_changes(k)
        assert (await info(k, "snap"))["status"] == ["0 32768 snapshot 1616/8192 16"]
        ev = (await info(k, "origin"))["event_nr"]
        await switch_to_merge(k)
        d = await info(k, "origin")
        assert d["table"] == ["0 32768 snapshot-merge 253:0 253:1 P 8"]
        origin = await k.open_device("origin")
        # Reads and writes go on during the merge: a chunk still in the store is served
        # from the COW, so every read sees the snapshot's contents or what was written since.
        await origin.write(5 * 8, b"live" * 1024)
        assert await origin.read(150 * 8, PAGE) == (b"old00150" * 512)[:PAGE]
        await k.call("dm_wait", name="origin", event_nr=ev)
        assert (await info(k, "origin"))["status"] == ["0 32768 snapshot-merge 16/8192 16"]
        for c in range(0, 2048, 37):
            want = b"live" * 1024 if c == 5 else (f"old{c:05}".encode() * 512)[:PAGE]
            assert await origin.read(c * 8, PAGE) == want, c
        assert await origin.read(5 * 8, PAGE) == b"live" * 1024
        await origin.close()
    r = tool("dmsetup", "status", "origin")
    assert (r.returncode, r.stdout) == (0, "0 32768 snapshot-merge 16/8192 16\n")


def test_a_power_failure_at_any_point_of_a_merge_loses_nothing(dmemu_root, tmp_path):
    """Every fence of a whole merge on adr pmem, each as the media a power failure there
    leaves: loaded again, the merge resumes and the origin holds the snapshot's contents."""
    ok("ndctl", "create-namespace", "-s", "64M", "--persistence", "adr")

    async def merge_traced():
        async with client.connect() as k:
            await snapshot_with_changes(k, nchunks=300)
            assert "trace started" in await trio.to_thread.run_sync(ok, "dmemu", "trace", "start", "pmem0")
            ev = (await info(k, "origin"))["event_nr"]
            await switch_to_merge(k)
            await k.call("dm_wait", name="origin", event_nr=ev)
    trio.run(merge_traced)
    fences = int(ok("dmemu", "trace", "status", "pmem0").split(":")[1].split()[0])
    ok("dmemu", "trace", "stop", "pmem0")
    assert fences >= 10
    images = []
    for f in range(fences + 1):
        out = tmp_path / f"f{f}"
        ok("dmemu", "crash-image", "pmem0", "--fence", str(f), "-o", str(out))
        images.append(out)
    ok("dmemud", "stop", "--force")
    seen = set()
    for f, image in enumerate(images):
        async def resume_from(image=image):
            async with client.connect() as k:
                dev = await k.open_device("pmem0")
                data = image.read_bytes()
                for off in range(0, 40960 * 512, 1 << 20):
                    await dev.write(off // 512, data[off:off + (1 << 20)])
                await dev.flush()
                await dev.close()
                await dm(k, ("real", "0 32768 linear pmem0 0"), ("cow", "0 8192 linear pmem0 32768"),
                         ("peek", "0 32768 snapshot real cow P 8"))
                seen.add((await info(k, "peek"))["status"][0])      # what is left to merge
                await k.call("dm_remove", name="peek")
                await dm(k, ("origin", "0 32768 snapshot-merge real cow P 8"))
                d = await info(k, "origin")
                if d["status"] != ["0 32768 snapshot-merge 16/8192 16"]:
                    await k.call("dm_wait", name="origin", event_nr=d["event_nr"])
                assert (await info(k, "origin"))["status"] == ["0 32768 snapshot-merge 16/8192 16"]
                origin = await k.open_device("origin")
                for c in list(range(300)) + [1000, 2047]:
                    assert await origin.read(c * 8, PAGE) == (f"old{c:05}".encode() * 512)[:PAGE], (f, c)
                await origin.close()
                for name in ("origin", "cow", "real"):
                    await k.call("dm_remove", name=name)
        trio.run(resume_from)
    # The fences cut the merge at many different points, from untouched to finished.
    assert {"0 32768 snapshot 2424/8192 24", "0 32768 snapshot 16/8192 16"} <= seen, seen
    assert len(seen) >= 4, seen


async def test_snapshot_merge_refuses_what_the_kernel_refuses(ns):
    async with client.connect() as k:
        await dm(k, ("real", "0 32768 linear pmem0 0"), ("cow", "0 8192 linear pmem0 32768"))
    r = tool("dmsetup", "create", "m", "--table", "0 32768 snapshot-merge real cow N 8")
    assert r.returncode == 1
    assert "Snapshot exception store does not support snapshot-merge." in r.stderr
    assert ok("dmsetup", "ls").startswith("cow")
    r = tool("dmsetup", "wait", "nope")
    assert (r.returncode, r.stderr) == (1, "device-mapper: waitevent ioctl on nope  failed: "
                                           "No such device or address\nCommand failed.\n")
