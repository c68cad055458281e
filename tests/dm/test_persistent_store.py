"""The persistent exception store against Linux's documented on-disk layout, byte by byte."""
import errno
import struct

import pytest

from dmemu.dm.errors import ExceptionStoreError, ExceptionStoreFull
from dmemu.dm.exception_store import Completion, Usage, create_exception_store
from dmemu.dm.persistent import (SNAP_MAGIC, PersistentStore, area_location,
                                 exceptions_per_area, is_metadata_chunk)
from dmemu.dm.status import snapshot_status_text
from tests.dm.dmfake import FakeBlockDevice

CS = 8                       # chunk size used by most tests, sectors
CB = CS * 512
E = CB // 16                 # 256 exceptions per metadata area


def chunk_bytes(dev, chunk, cs=CS):
    return bytes(dev.view[chunk * cs * 512:(chunk + 1) * cs * 512])


def entry(dev, area, index, cs=CS):
    off = area_location(cs, area) * cs * 512 + index * 16
    return struct.unpack_from("<QQ", dev.view, off)


def fresh(dev, cs=CS, **kw):
    store = PersistentStore(dev, cs, **kw)
    md = store.read_metadata()
    assert md.valid and md.exceptions == [] and md.warnings == []
    return store


def copy(store, old):
    """prepare + commit one exception, as the snapshot target does after its copy."""
    new = store.prepare_exception(old)
    return new, store.commit_exception(old, new)


def test_layout_arithmetic():
    assert [exceptions_per_area(cs) for cs in (8, 16, 32)] == [256, 512, 1024]
    assert [area_location(8, i) for i in range(3)] == [1, 258, 515]
    assert [c for c in range(520) if is_metadata_chunk(8, c)] == [0, 1, 258, 515]


def test_new_store_writes_header_and_zeroes_area_0(cow4m):
    cow4m.view[:] = b"\xff" * len(cow4m.view)      # stale data, but...
    cow4m.view[:4096] = bytes(4096)                  # ...the first 4 KiB zeroed, as lvm2 does
    store = fresh(cow4m)
    header = chunk_bytes(cow4m, 0)
    assert header[:16] == b"SnAp" + struct.pack("<III", 1, 1, 8)
    assert header[16:] == bytes(CB - 16)
    assert chunk_bytes(cow4m, 1) == bytes(CB)
    assert chunk_bytes(cow4m, 2) == b"\xff" * CB     # data chunks are not touched
    # header then area 0, plain writes: made durable by the first commit's preflush
    assert cow4m.writes() == [("write", 0, CB, frozenset()), ("write", 8, CB, frozenset())]
    assert store.next_free == 2 and store.current_area == 0
    assert store.usage() == Usage(16, 8192, 16)
    assert snapshot_status_text(store.usage()) == "16/8192 16"
    assert store.table_text() == "P 8"


def test_commit_packs_entries_and_writes_area_with_preflush_fua(cow4m):
    store = fresh(cow4m)
    cow4m.log.clear()
    new, settled = copy(store, 1000)
    assert new == 2
    assert settled == [Completion(1000, 2, True)]
    assert cow4m.writes() == [("write", 8, CB, frozenset({"preflush", "fua"}))]
    assert entry(cow4m, 0, 0) == (1000, 2)
    assert entry(cow4m, 0, 1) == (0, 0)              # end marker: new_chunk == 0
    copy(store, 7)
    assert bytes(cow4m.view[8 * 512:8 * 512 + 32]) == struct.pack("<QQQQ", 1000, 2, 7, 3)
    assert store.usage() == Usage(32, 8192, 16)


def test_full_area_zeroes_the_next_one_first_and_next_free_skips_metadata(cow4m):
    cow4m.view[:] = b"\xee" * len(cow4m.view)
    cow4m.view[:512] = bytes(512)
    store = fresh(cow4m)
    news = [copy(store, old)[0] for old in range(E - 1)]
    assert news == list(range(2, E + 1))
    assert chunk_bytes(cow4m, 258) == b"\xee" * CB   # area 1 untouched so far
    cow4m.log.clear()
    new, settled = copy(store, 5000)
    assert new == E + 1 == 257                       # last data chunk of area 0
    assert settled == [Completion(5000, 257, True)]
    # zero area 1 (chunk 258) first, then commit the full area 0 behind a preflush
    assert cow4m.writes() == [("write", 258 * CS, CB, frozenset()),
                              ("write", 1 * CS, CB, frozenset({"preflush", "fua"}))]
    assert chunk_bytes(cow4m, 258) == bytes(CB)
    assert entry(cow4m, 0, E - 1) == (5000, 257)
    assert store.next_free == 259 and store.current_area == 1
    assert store.usage() == Usage(259 * CS, 8192, 3 * CS)
    new, _ = copy(store, 6000)
    assert new == 259
    assert entry(cow4m, 1, 0) == (6000, 259) and entry(cow4m, 1, 1) == (0, 0)


def test_reload_gives_back_exceptions_and_allocator_state(cow4m):
    store = fresh(cow4m)
    mapping = {old * 3: copy(store, old * 3)[0] for old in range(E + 10)}
    again = PersistentStore(cow4m, CS)
    md = again.read_metadata()
    assert md.valid and dict(md.exceptions) == mapping
    assert [n for _, n in md.exceptions] == sorted(mapping.values())   # on-disk order
    assert (again.next_free, again.current_area, again.current_committed) == \
        (store.next_free, store.current_area, store.current_committed)
    assert again.usage() == store.usage()
    # and it continues exactly where the first one stopped
    assert copy(again, 1)[0] == store.prepare_exception(1)


def build_linux_image(nr_sectors, cs, areas, *, valid=1, version=1, header_cs=None):
    """A COW image written the way the kernel lays it out, independently of our store."""
    img = bytearray(nr_sectors * 512)
    struct.pack_into("<IIII", img, 0, SNAP_MAGIC, valid, version, header_cs or cs)
    e = cs * 512 // 16
    for i, entries in enumerate(areas):
        base = (1 + i * (e + 1)) * cs * 512
        for j, (old, new) in enumerate(entries):
            struct.pack_into("<QQ", img, base + 16 * j, old, new)
    return img


def test_loads_an_image_written_by_linux(make_image=build_linux_image):
    cs = 16                                           # E = 512, areas at 1, 514, 1027
    area0 = [(10_000 + i, 2 + i) for i in range(512)]  # full: data chunks 2..513
    area1 = [(7, 515), (8, 516), (3, 600)]            # a gap: chunks 517..599 leaked
    cow = FakeBlockDevice(65536, name="dm-2", devno="253:2")
    cow.view[:] = make_image(65536, cs, [area0, area1])
    store = PersistentStore(cow, cs)
    md = store.read_metadata()
    assert md.exceptions == area0 + area1
    assert store.next_free == 601
    assert (store.current_area, store.current_committed) == (1, 3)
    assert snapshot_status_text(store.usage()) == f"{601 * cs}/65536 {3 * cs}"
    assert cow.writes() == []                         # loading writes nothing
    new, _ = copy(store, 99)
    assert new == 601 and entry(cow, 1, 3, cs) == (99, 601)
    assert entry(cow, 1, 2, cs) == (3, 600)           # earlier entries kept in the area


def test_last_entry_in_last_data_chunk_of_full_area_skips_next_metadata_chunk():
    area0 = [(i, 2 + i) for i in range(E)]            # new chunks 2..257, area 0 full
    cow = FakeBlockDevice(8192)
    cow.view[:] = build_linux_image(8192, CS, [area0, []])
    store = PersistentStore(cow, CS)
    assert len(store.read_metadata().exceptions) == E
    assert store.next_free == 259                     # 258 is area 1's metadata chunk
    assert store.prepare_exception(1) == 259


def test_allocates_until_enospc_with_exact_usage(cow4m):
    store = fresh(cow4m)
    news = []
    with pytest.raises(ExceptionStoreFull) as info:
        while True:
            news.append(copy(store, len(news))[0])
    assert info.value.errno == errno.ENOSPC
    # 1024 chunks: header, areas at 1, 258, 515, 772; data up to chunk 1023
    assert len(news) == 1024 - 5 == 1019
    assert not any(is_metadata_chunk(CS, n) for n in news)
    assert news[-1] == 1023 and store.next_free == 1024
    assert snapshot_status_text(store.usage()) == "8192/8192 40"
    # a failed prepare allocates nothing
    with pytest.raises(ExceptionStoreFull):
        store.prepare_exception(1)
    assert store.usage() == Usage(8192, 8192, 40)


def test_invalidation_persists_across_reload(cow4m):
    store = fresh(cow4m)
    copy(store, 1)
    store.drop_snapshot()
    assert chunk_bytes(cow4m, 0)[:16] == b"SnAp" + struct.pack("<III", 0, 1, 8)
    again = PersistentStore(cow4m, CS)
    md = again.read_metadata()
    assert md.valid is False and md.exceptions == []
    assert md.warnings == ["Snapshot is marked invalid."]
    assert snapshot_status_text(again.usage(), valid=md.valid) == "Invalid"
    with pytest.raises(ExceptionStoreError):
        again.prepare_exception(3)


def test_wrong_magic_is_enxio(cow4m):
    cow4m.view[:4] = b"SNAP"
    with pytest.raises(ExceptionStoreError) as info:
        PersistentStore(cow4m, CS).read_metadata()
    assert (info.value.errno, info.value.message) == (errno.ENXIO, "Invalid or corrupt snapshot")


def test_other_version_is_einval(cow4m):
    cow4m.view[:] = build_linux_image(8192, CS, [[]], version=2)
    with pytest.raises(ExceptionStoreError) as info:
        PersistentStore(cow4m, CS).read_metadata()
    assert (info.value.errno, info.value.message) == \
        (errno.EINVAL, "unable to handle snapshot disk version 2")


def test_header_chunk_size_overrides_table_with_warning(cow4m):
    cow4m.view[:] = build_linux_image(8192, 16, [[(5, 2)]])
    store = PersistentStore(cow4m, 8)
    md = store.read_metadata()
    assert md.warnings == ["chunk size 16 in device metadata overrides table chunk size of 8."]
    assert md.exceptions == [(5, 2)] and store.chunk_size == 16
    assert store.table_text() == "P 16"
    assert store.usage() == Usage(3 * 16, 8192, 32)


def test_chunk_size_0_takes_header_value_silently(cow4m):
    cow4m.view[:] = build_linux_image(8192, 16, [[]])
    store = PersistentStore(cow4m, 0, overflow=True)
    assert store.read_metadata().warnings == []
    assert store.chunk_size == 16 and store.table_text() == "PO 16"


def test_chunk_size_0_on_new_store_defaults_to_32_sectors(cow4m):
    store = fresh(cow4m, cs=0)
    assert store.chunk_size == 32
    assert chunk_bytes(cow4m, 0, 32)[:16] == b"SnAp" + struct.pack("<III", 1, 1, 32)
    assert store.usage() == Usage(64, 8192, 64)


def test_bad_on_disk_chunk_size_is_refused(cow4m):
    cow4m.view[:] = build_linux_image(8192, 8, [[]], header_cs=12)
    with pytest.raises(ExceptionStoreError) as info:
        PersistentStore(cow4m, 8).read_metadata()
    assert info.value.errno == errno.EINVAL
    assert info.value.message == "invalid on-disk chunk size 12: Chunk size is not a power of 2."


def test_metadata_read_error_is_typed(cow4m):
    cow4m.fail_reads = True
    with pytest.raises(ExceptionStoreError) as info:
        PersistentStore(cow4m, CS).read_metadata()
    assert info.value.errno == errno.EIO
    assert info.value.message.startswith("Failed to read snapshot metadata")


def test_metadata_write_error_fails_the_commit_and_invalidates(cow4m):
    store = fresh(cow4m)
    new = store.prepare_exception(1)
    cow4m.fail_writes = True
    assert store.commit_exception(1, new) == [Completion(1, new, False)]
    assert store.valid is False


def test_failed_copy_is_not_written_and_fails_the_batch(cow4m):
    store = fresh(cow4m)
    a = store.prepare_exception(1)
    b = store.prepare_exception(2)
    cow4m.log.clear()
    assert store.commit_exception(1, a, valid=False) == []
    assert store.commit_exception(2, b) == [Completion(1, a, False), Completion(2, b, False)]
    assert cow4m.writes() == []
    assert store.valid is False


def test_commits_settle_in_allocation_order_and_batch(cow4m):
    store = fresh(cow4m)
    a, b, c = (store.prepare_exception(old) for old in (10, 20, 30))
    cow4m.log.clear()
    assert store.commit_exception(30, c) == []        # a and b still copying
    assert store.commit_exception(10, a) == []        # b still in flight: batch
    assert cow4m.writes() == []
    assert store.commit_exception(20, b) == [Completion(10, a, True), Completion(20, b, True),
                                            Completion(30, c, True)]
    assert len(cow4m.writes()) == 1                   # one area write for the batch
    assert [entry(cow4m, 0, i) for i in range(3)] == [(10, a), (20, b), (30, c)]
    assert store.in_flight == 0


def test_commit_of_unprepared_chunk_is_a_bug(cow4m):
    store = fresh(cow4m)
    new = store.prepare_exception(1)
    with pytest.raises(ValueError):
        store.commit_exception(2, new)
    store.commit_exception(1, new)
    with pytest.raises(ValueError):
        store.commit_exception(1, new)


def test_factory_builds_the_store_a_table_names(cow4m):
    assert create_exception_store("PO", 8, cow4m).table_text() == "PO 8"
    assert isinstance(create_exception_store("P", 8, cow4m), PersistentStore)
    assert create_exception_store("N", 8, cow4m).table_text() == "N 8"


def test_merge_consumes_newest_consecutive_runs_across_areas(cow4m):
    store = fresh(cow4m)
    # area 0: old 0..255 -> new 2..257 (consecutive), area 1: two runs
    for old in range(E):
        copy(store, old)
    for old in (1000, 1001, 1002, 50, 51):
        copy(store, old)
    assert store.prepare_merge() == (2, 51, 263)
    cow4m.log.clear()
    store.commit_merge(2)
    assert cow4m.writes() == [("write", 258 * CS, CB, frozenset({"preflush", "fua"}))]
    assert entry(cow4m, 1, 3) == (0, 0) and entry(cow4m, 1, 2) == (1002, 261)
    assert store.next_free == 258 + 3 + 1
    assert store.prepare_merge() == (3, 1002, 261)
    store.commit_merge(3)
    assert store.prepare_merge() == (E, E - 1, E + 1)   # back into the full area 0
    store.commit_merge(E)
    assert store.prepare_merge() == (0, 0, 0)
    md = PersistentStore(cow4m, CS).read_metadata()
    assert md.valid and md.exceptions == []


def test_merge_stops_at_a_break_in_either_chunk_sequence(cow4m):
    store = fresh(cow4m)
    for old in (10, 11, 30, 31, 32):
        copy(store, old)
    assert store.prepare_merge() == (3, 32, 6)
    store.commit_merge(1)
    assert store.prepare_merge() == (2, 31, 5)
    store.commit_merge(2)
    assert store.prepare_merge() == (2, 11, 3)
    with pytest.raises(ValueError):
        store.commit_merge(3)


def test_transient_store_cannot_merge(cow4m):
    from dmemu.dm.errors import DMError
    store = create_exception_store("N", 8, cow4m)
    with pytest.raises(DMError, match="does not support snapshot-merge"):
        store.prepare_merge()
