"""Exception-store batches: prepare_batch/commit_batch leave exactly what one call per
exception leaves (the same writes with the same flags, in the same order, the same bytes
on the COW device, the same allocator), so a crash at any point of a batch is a crash
the per-exception path could have had."""
from hypothesis import given, settings, strategies as st

from dmemu.dm.persistent import PersistentStore
from dmemu.dm.transient import TransientStore
from tests.dm.dmfake import FakeBlockDevice

CS = 1                      # 1-sector chunks: 32 entries per area, so batches cross areas
COW_SECTORS = 300


def store(cls=PersistentStore):
    cow = FakeBlockDevice(COW_SECTORS, name="pmem1", devno="259:1")
    s = cls(cow, CS)
    s.read_metadata()
    return s, cow


def one_by_one(s, olds, ok):
    news = []
    for old in olds:
        try:
            news.append(s.prepare_exception(old))
        except Exception:
            break
    out = []
    for old, new in zip(olds, news):
        out += s.commit_exception(old, new, valid=ok)
    return news, out


@settings(max_examples=200, deadline=None)
@given(batches=st.lists(st.tuples(st.integers(1, 70), st.booleans()), min_size=1, max_size=8))
def test_a_batch_is_what_one_call_per_exception_does(batches):
    a, cow_a = store()
    b, cow_b = store()
    first = 0
    for n, fail in batches:
        if not a.valid:
            break           # the snapshot is invalidated: its store gets no more copies
        olds = list(range(first, first + n))
        first += n
        ok = not (fail and n % 3 == 0)
        news_a, done_a = one_by_one(a, olds, ok)
        news_b = b.prepare_batch(olds)
        done_b = b.commit_batch([(o, w, ok) for o, w in zip(olds, news_b)])
        assert news_a == news_b
        assert done_a == done_b
        assert (a.next_free, a.current_area, a.current_committed, a.valid) == \
            (b.next_free, b.current_area, b.current_committed, b.valid)
        assert cow_a.log == cow_b.log
        assert cow_a.view == cow_b.view and cow_a.media == cow_b.media
        assert a.usage() == b.usage()


def test_a_batch_crossing_an_area_writes_it_once_full_then_the_rest():
    s, cow = store()
    news = s.prepare_batch(list(range(40)))
    assert len(news) == 40 and 34 not in news       # chunk 34 is area 1's metadata chunk
    cow.log.clear()
    done = s.commit_batch([(o, w, True) for o, w in zip(range(40), news)])
    assert all(c.success for c in done)
    writes = [(sector, flags) for op, sector, _, flags in cow.log if op == "write"]
    # area 1 zeroed, full area 0 committed, then area 1 with the other 8 entries
    assert writes == [(34, frozenset()), (1, frozenset({"fua", "preflush"})),
                      (34, frozenset({"fua", "preflush"}))]
    reloaded = PersistentStore(cow, CS)
    assert dict(reloaded.read_metadata().exceptions) == dict(zip(range(40), news))


def test_the_transient_store_batches_through_the_generic_path():
    s, _ = store(TransientStore)
    news = s.prepare_batch([5, 6, 7])
    assert news == [0, 1, 2]
    assert [c.success for c in s.commit_batch([(5, 0, True), (6, 1, True), (7, 2, True)])] == [True] * 3
