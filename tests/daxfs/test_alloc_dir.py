"""The allocator and the directory index."""
import errno
import time

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, rule

from daxfs import format as fmt
from daxfs.alloc import Bitmap, BlockAllocator
from daxfs.directory import Directory, parse_block
from daxfs.errors import FsError


def allocator(total=1000, data_start=10):
    bm = Bitmap(bytearray(fmt.BLOCK_SIZE), total)
    bm.set_run(0, data_start, True)
    bm.set_run(total, fmt.BLOCK_SIZE * 8 - total, True)
    return BlockAllocator(bm, data_start, total, total - data_start)


def test_alloc_contiguous_then_fragmented_then_enospc():
    a = allocator()
    assert a.alloc(5) == [(10, 5)]
    a.alloc(5)
    a.free_run(12, 2)
    assert a.available == 980              # freed blocks wait for the journal reset
    a.release_pending()
    runs = a.alloc(4, goal=12)
    assert runs[0] == (12, 2) and sum(n for _, n in runs) == 4
    with pytest.raises(FsError) as e:
        a.alloc(a.available + 1)
    assert e.value.errno == errno.ENOSPC
    before = bytes(a.bitmap.data)
    a.alloc(a.available)
    assert a.available == 0 and bytes(a.bitmap.data) != before
    assert a.bitmap.count_free() == 0


def test_a_taken_goal_leads_to_room_to_grow_not_to_a_one_block_hole():
    """Blocks of another file every other block: a file whose goal is taken goes on
    where it can grow, so its appends stay one extent (not one extent per block)."""
    a = allocator(total=4000)
    for b in range(10, 1010, 2):
        a.alloc(1, goal=b)
    assert a.busy.test(10) and not a.busy.test(11)
    runs = [a.alloc(1, goal=12)[0]]          # goal taken: not hole 13
    for _ in range(99):
        p, n = runs[-1]
        runs.append(a.alloc(1, goal=p + n)[0])
    assert runs[0][0] >= 1010
    assert all(p == runs[0][0] + i for i, (p, _) in enumerate(runs))
    # with no room left, the holes are still used
    a.alloc(a.available - 10)
    assert sum(n for _, n in a.alloc(10, goal=12)) == 10


def test_pending_blocks_not_reused():
    a = allocator(total=20, data_start=10)
    a.alloc(10)
    a.free_run(15, 1)
    with pytest.raises(FsError):
        a.alloc(1)
    a.release_pending()
    assert a.alloc(1) == [(15, 1)]


def test_directory_100k_entries_fast_and_stable_cookies():
    d = Directory([])
    n = 100_000
    t0 = time.perf_counter()
    for i in range(n):
        name = f"file-{i:06d}".encode()
        if not d.add(name, i + 2, 8):
            d.grow()
            assert d.add(name, i + 2, 8)
    assert len(d) == n
    # lookups go through the index: 100k of them take well under a second
    for i in range(0, n, 7):
        assert d.lookup(f"file-{i:06d}".encode())[0] == i + 2
    elapsed = time.perf_counter() - t0
    assert elapsed < 60          # catches quadratic behaviour, which takes minutes
    # a listing interrupted half-way and resumed after removals returns every survivor once
    it = d.entries_from(0)
    first = [next(it) for _ in range(n // 2)]
    cookie = first[-1][2]
    removed = {f"file-{i:06d}".encode() for i in range(0, n, 3)}
    for name in removed:
        d.remove(name)
    rest = list(d.entries_from(cookie))
    seen = [x[0] for x in first] + [x[0] for x in rest]
    assert len(seen) == len(set(seen))
    assert set(seen) >= {f"file-{i:06d}".encode() for i in range(n)} - removed
    # the blocks still parse and re-index to the same content
    d2 = Directory([bytearray(b) for b in d.blocks])
    assert d2.index.keys() == d.index.keys()
    # space is reused: adding the removed names back does not grow the directory
    nb = len(d.blocks)
    for name in sorted(removed)[:1000]:
        assert d.add(name, 5, 8)
    assert len(d.blocks) == nb


def test_directory_block_invariants():
    d = Directory([])
    d.grow()
    names = [b"a" * k for k in range(1, 200)]
    added = [nm for nm in names if d.add(nm, 3, 8)]
    assert added
    recs = list(parse_block(d.blocks[0], "t"))
    assert sum(r[3] for r in recs) == fmt.BLOCK_SIZE - fmt.DIR_START
    for nm in added[::2]:
        d.remove(nm)
    recs = list(parse_block(d.blocks[0], "t"))
    assert sum(r[3] for r in recs) == fmt.BLOCK_SIZE - fmt.DIR_START
    assert {r[5] for r in recs if r[1]} == set(added[1::2])


class ChunkedListing(RuleBasedStateMachine):
    """A listing taken a few entries at a time, as FUSE takes it (each request resumes at
    the cookie of the last entry taken, after the entry it could not take), interleaved
    with adds and removes: every name present for the whole listing is returned, none
    twice, and none that was never in the directory."""

    def __init__(self):
        super().__init__()
        self.d = Directory([])
        self.d.grow()
        self.present: set[bytes] = set()
        self.ever: set[bytes] = set()
        self.new_listing()

    def new_listing(self):
        self.cookie = 0
        self.seen: list[bytes] = []
        self.stayed = set(self.present)         # present since the listing began

    @rule(i=st.integers(0, 400), long=st.booleans())
    def add(self, i, long):
        name = (b"n%d" % i) + (b"x" * 120 if long else b"")
        if name in self.present:
            return
        if not self.d.add(name, i + 2, 8):
            self.d.grow()
            assert self.d.add(name, i + 2, 8)
        self.present.add(name)
        self.ever.add(name)

    @rule(data=st.data())
    def remove(self, data):
        if not self.present:
            return
        name = data.draw(st.sampled_from(sorted(self.present)))
        self.d.remove(name)
        self.present.discard(name)
        self.stayed.discard(name)

    @rule(k=st.integers(1, 30))
    def take(self, k):
        """One request: k entries fit, the next one is handed out and not taken."""
        it = self.d.entries_from(self.cookie)
        for _ in range(k):
            e = next(it, None)
            if e is None:
                self.finish()
                return
            self.seen.append(e[0])
            self.cookie = e[2]
        next(it, None)                          # the entry that did not fit

    def finish(self):
        assert len(self.seen) == len(set(self.seen)), "an entry listed twice"
        assert set(self.seen) <= self.ever
        assert self.stayed <= set(self.seen), "an entry present throughout was not listed"
        self.new_listing()


TestChunkedListing = ChunkedListing.TestCase
TestChunkedListing.settings = settings(max_examples=100, stateful_step_count=60, deadline=None)
