"""Model-based test of the persistent store: random copies, reloads and power failures.

The model is what the snapshot target may rely on: an exception whose commit settled
successfully survives any power failure and reload with the same new_chunk; a crash
leaks only chunks that were allocated but never settled; no chunk is handed out twice
and no data chunk is ever a header or metadata chunk.
"""
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dmemu.dm.errors import ExceptionStoreFull
from dmemu.dm.persistent import PersistentStore, is_metadata_chunk
from tests.dm.dmfake import FakeBlockDevice

CS = 1                       # 1-sector chunks: E = 32, so areas fill up quickly
COW_SECTORS = 200            # room for ~180 data chunks: ENOSPC is reachable too


class PersistentStoreMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.cow = FakeBlockDevice(COW_SECTORS, name="pmem1", devno="259:1")
        # Stale data everywhere but the first 4 KiB, which lvm2 zeroes on a new COW LV:
        # the store must never trust an area it did not zero itself.
        stale = bytes(range(1, 256)) * (len(self.cow.view) // 255 + 1)
        self.cow.view[4096:] = stale[:len(self.cow.view) - 4096]
        self.cow.media[:] = self.cow.view
        self.store = PersistentStore(self.cow, CS)
        self.store.read_metadata()
        self.durable: dict[int, int] = {}      # settled successfully: old -> new
        self.copying: list[tuple[int, int]] = []   # prepared, copy not finished
        self.unsettled: dict[int, int] = {}    # prepared, commit not settled: new -> old
        self.handed_out: set[int] = set()      # every chunk allocated since the last load
        self.leaked: set[int] = set()          # unsettled at some crash
        self.full = False

    def _prepare(self, old):
        if old in self.durable or old in self.unsettled.values():
            return None                         # dm-snap never copies a chunk twice
        try:
            new = self.store.prepare_exception(old)
        except ExceptionStoreFull:
            self.full = True
            return None
        assert new not in self.handed_out
        assert not is_metadata_chunk(CS, new)
        assert new not in self.durable.values()
        assert (new + 1) * CS <= COW_SECTORS
        self.handed_out.add(new)
        self.unsettled[new] = old
        return new

    def _commit(self, old, new):
        for c in self.store.commit_exception(old, new):
            assert c.success
            assert self.unsettled.pop(c.new_chunk) == c.old_chunk
            self.durable[c.old_chunk] = c.new_chunk

    @precondition(lambda self: not self.full)
    @rule(old=st.integers(0, 10_000))
    def prepare(self, old):
        new = self._prepare(old)
        if new is not None:
            self.copying.append((old, new))

    @precondition(lambda self: self.copying)
    @rule(data=st.data())
    def commit(self, data):
        i = data.draw(st.integers(0, len(self.copying) - 1), label="which copy finishes")
        self._commit(*self.copying.pop(i))

    @precondition(lambda self: not self.full)
    @rule(first=st.integers(20_000, 30_000), count=st.integers(1, 40))
    def copy_run(self, first, count):
        """A burst of writes to consecutive origin chunks, each copied and committed at
        once: lets short examples fill a whole metadata area (32 entries) between crashes."""
        for old in range(first, first + count):
            new = self._prepare(old)
            if new is not None:
                self._commit(old, new)

    @rule(power_fail=st.booleans())
    def crash_and_reload(self, power_fail):
        """The daemon dies (unsettled copies are lost), optionally with the power."""
        if power_fail:
            self.cow.power_fail()
        self.store = PersistentStore(self.cow, CS)
        md = self.store.read_metadata()
        assert md.valid
        loaded = dict(md.exceptions)
        assert len(loaded) == len(md.exceptions)         # no origin chunk twice
        # nothing settled is lost, and nothing unsettled is found
        assert loaded == self.durable
        # only unsettled chunks leak: everything below next_free is header, metadata,
        # an exception, or was unsettled at this crash or an earlier one
        news = set(loaded.values())
        self.leaked = (self.leaked | set(self.unsettled)) - news
        for chunk in range(self.store.next_free):
            assert is_metadata_chunk(CS, chunk) or chunk in news or chunk in self.leaked
        self.copying = []
        self.unsettled = {}
        self.handed_out = set(news)
        self.full = False

    @invariant()
    def usage_matches_linux(self):
        allocated, total, metadata = self.store.usage()
        assert allocated == self.store.next_free * CS and total == COW_SECTORS
        assert metadata == (self.store.current_area + 2) * CS


PersistentStoreMachine.TestCase.settings = settings(max_examples=150,
                                                    stateful_step_count=80,
                                                    deadline=None)
TestPersistentStore = PersistentStoreMachine.TestCase
