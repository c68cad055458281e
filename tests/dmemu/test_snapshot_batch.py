"""Copy-on-write in batches: a write over many origin chunks copies them with one request and
one exception-store commit per metadata area, and a power failure anywhere in the batch
leaves every snapshot reading its old data."""
import os

from dmemu import client
from dmemu.dm.persistent import PersistentStore
from dmemu.persist_trace import read_trace
from tests.dm.dmfake import FakeBlockDevice
from tests.helpers import ok

CHUNK = 8                   # sectors: 4 KiB chunks, 256 exceptions per metadata area
REAL = 4096                 # sectors of the origin (2 MiB, 512 chunks)
COW = 4096                  # sectors of the COW store
NCHUNKS = 300               # written at once: more than one metadata area holds
PAGE = 4096


def old_chunk(c: int) -> bytes:
    return (b"old %5d " % c) * (PAGE // 10) + bytes(PAGE % 10)


def new_chunk(c: int) -> bytes:
    return (b"NEW %5d " % c) * (PAGE // 10) + bytes(PAGE % 10)


async def build(k):
    await k.call("dm_create", name="real", table=f"0 {REAL} linear pmem0 0")
    real = await k.open_device("real")
    await real.write(0, b"".join(old_chunk(c) for c in range(REAL // CHUNK)))
    await real.close()
    await k.call("dm_create", name="cow", table=f"0 {COW} linear pmem0 {REAL}")
    await k.call("dm_create", name="snap", table=f"0 {REAL} snapshot real cow P {CHUNK}")
    await k.call("dm_create", name="origin", table=f"0 {REAL} snapshot-origin real")


def count_requests(dev) -> dict:
    """Count the requests sent for one open device, by operation."""
    counts: dict[str, int] = {}
    call = dev.client.call

    async def counting(op, *args, **kwargs):
        if kwargs.get("handle") == dev.handle:
            counts[op] = counts.get(op, 0) + 1
        return await call(op, *args, **kwargs)
    dev.client.call = counting
    return counts


async def test_a_bio_over_many_chunks_copies_them_in_one_request(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "16M")
    async with client.connect() as k:
        await build(k)
        origin, snap = await k.open_device("origin"), await k.open_device("snap")
        counts = count_requests(origin)
        data = b"".join(new_chunk(c) for c in range(NCHUNKS))
        await origin.write(0, data)
        assert counts == {"resolve": 1}
        assert await origin.read(0, len(data)) == data
        assert await snap.read(0, REAL * 512) == b"".join(old_chunk(c) for c in range(REAL // CHUNK))
        # 300 chunks: 300 exceptions, two metadata areas, header
        status = (await k.call("dm_list"))["devices"]
        line = next(d for d in status if d["name"] == "snap")["status"][0]
        assert line == f"0 {REAL} snapshot {(NCHUNKS + 3) * CHUNK}/{COW} {3 * CHUNK}"
        # A rewrite needs no copy and no further request.
        await origin.write(0, data[::-1])
        assert counts == {"resolve": 1}


async def test_a_dax_store_over_many_chunks_maps_after_one_batch(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "16M")
    async with client.connect() as k:
        await build(k)
        origin, snap = await k.open_device("origin"), await k.open_device("snap")
        counts = count_requests(origin)
        # Ask for a whole 2 MiB window, about to store into its first 8 pages only: those
        # chunks are copied, and the mapping reaches no further than what is copied.
        m = await origin.direct_access(0, 512, write=True, nr_store=8)
        assert m.nr_pages == 8 and counts == {"resolve": 1}
        m.write(0, b"x" * 8 * PAGE)
        line = next(d for d in (await k.call("dm_list"))["devices"] if d["name"] == "snap")
        assert line["status"][0] == f"0 {REAL} snapshot {(8 + 2) * CHUNK}/{COW} {2 * CHUNK}"
        assert await snap.read(8 * CHUNK, PAGE) == old_chunk(8)
        assert await snap.read(0, PAGE) == old_chunk(0)


def snapshot_view(image: bytes) -> tuple[bytes, int]:
    """What the snapshot reads after a power failure left ``image`` (the namespace's media),
    and how many exceptions its store holds: loaded as a reboot loads it."""
    cow = FakeBlockDevice(COW)
    cow.view[:] = image[REAL * 512:(REAL + COW) * 512]
    store = PersistentStore(cow, CHUNK)
    meta = store.read_metadata()
    assert meta.valid
    table = dict(meta.exceptions)
    out = bytearray(image[:REAL * 512])
    for old, new in table.items():
        out[old * PAGE:(old + 1) * PAGE] = cow.view[new * PAGE:(new + 1) * PAGE]
    return bytes(out), len(table)


async def test_power_failure_at_every_fence_of_a_batch_keeps_the_snapshot(dmemu_root):
    """adr pmem, traced: the batch's copies, its metadata areas and the writer's stores each
    become durable at a fence; at every one, the snapshot must read the old data. Writing
    the metadata before the data it names would fail this at the first area's fence."""
    ok("ndctl", "create-namespace", "-s", "16M", "--persistence", "adr")
    async with client.connect() as k:
        await build(k)
        old = b"".join(old_chunk(c) for c in range(REAL // CHUNK))
        ok("dmemu", "trace", "start", "pmem0")
        origin = await k.open_device("origin")
        m = await origin.direct_access(0, NCHUNKS, write=True)
        data = b"".join(new_chunk(c) for c in range(NCHUNKS))
        m.write(0, data)
        m.flush(0, len(data))
        await origin.close()
        ok("dmemu", "trace", "stop", "pmem0")
    traces = os.path.join(dmemu_root, "traces")
    records = read_trace(os.path.join(traces, "pmem0.trace"))
    with open(os.path.join(traces, "pmem0.base"), "rb") as f:
        image = bytearray(f.read((REAL + COW) * 512))
    held = []
    for fence in range(len(records) + 1):
        if fence:
            off, rec = records[fence - 1]
            if off < len(image):
                image[off:off + len(rec)] = rec[:len(image) - off]
        view, n = snapshot_view(bytes(image))
        assert view == old, f"power failure after fence {fence}: the snapshot lost old data"
        held.append(n)
    # Exceptions become durable an area at a time: the full first area, then the rest;
    # one cut falls between them, with the first area's data chunks committed and the
    # second's copied but not yet named by any metadata.
    assert held[0] == 0 and held[-1] == NCHUNKS
    assert sorted(set(held)) == [0, 256, NCHUNKS]
    assert image[:NCHUNKS * PAGE] == data


async def test_a_write_to_the_snapshot_copies_its_chunks_in_one_request(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "16M")
    async with client.connect() as k:
        await build(k)
        origin, snap = await k.open_device("origin"), await k.open_device("snap")
        counts = count_requests(snap)
        # 64 chunks from the middle of chunk 10: the first and last are partly written,
        # so their old data must have been copied before the write lands.
        await snap.write(10 * CHUNK + 4, b"s" * (64 * PAGE))
        assert counts == {"resolve": 1}
        got = await snap.read(10 * CHUNK, 65 * PAGE)
        assert got[:2048] == old_chunk(10)[:2048]
        assert got[2048:2048 + 64 * PAGE] == b"s" * (64 * PAGE)
        assert got[2048 + 64 * PAGE:] == old_chunk(74)[2048:]
        assert await origin.read(10 * CHUNK, PAGE) == old_chunk(10)
