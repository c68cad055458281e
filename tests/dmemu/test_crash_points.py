"""Crash points on adr pmem: the media as a power failure at each fence would leave it."""
from dmemu import client
from tests.helpers import ok, tool


async def test_every_fence_can_be_materialized(dmemu_root, tmp_path):
    ok("ndctl", "create-namespace", "-s", "8M", "--persistence", "adr")
    async with client.open_device("pmem0") as dev:
        m = await dev.direct_access(0, 1, write=True)
        m.write(0, b"before trace")
        m.flush(0, 12)
    assert "trace started" in ok("dmemu", "trace", "start", "pmem0")
    async with client.open_device("pmem0") as dev:
        m = await dev.direct_access(0, 2, write=True)
        m.write(100, b"one")
        m.flush(100, 3)                      # fence 1
        m.write(4096, b"two")
        m.write(200, b"three, never flushed")
        m.flush(4096, 3)                     # fence 2
        await dev.write(16, b"bio".ljust(512, b"-"))   # fence 3: bios are durable on completion
    assert ok("dmemu", "trace", "status", "pmem0").startswith("pmem0: 3 fences recorded")
    ok("dmemu", "trace", "stop", "pmem0")
    images = []
    for k in range(4):
        out = tmp_path / f"f{k}"
        ok("dmemu", "crash-image", "pmem0", "--fence", str(k), "-o", str(out))
        images.append(out.read_bytes())
    assert all(img[:12] == b"before trace" for img in images)
    assert [img[100:103] for img in images] == [bytes(3), b"one", b"one", b"one"]
    assert [img[4096:4099] for img in images] == [bytes(3), bytes(3), b"two", b"two"]
    assert [img[8192:8195] for img in images] == [bytes(3), bytes(3), bytes(3), b"bio"]
    assert all(img[200:205] == bytes(5) for img in images)    # never flushed: never durable
    # Stores not yet flushed at fence 1 may have been evicted to the media all the same.
    out = tmp_path / "evicted"
    ok("dmemu", "crash-image", "pmem0", "--fence", "1", "-o", str(out), "--unflushed", "1")
    assert out.read_bytes()[4096:4099] == b"two"


def test_trace_needs_adr(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "8M")
    r = tool("dmemu", "trace", "start", "pmem0")
    assert r.returncode == 1 and "persistence traces need an adr namespace" in r.stderr
    r = tool("dmemu", "crash-image", "pmem0", "--fence", "0", "-o", "/tmp/x")
    assert r.returncode == 1 and "no trace recorded" in r.stderr
