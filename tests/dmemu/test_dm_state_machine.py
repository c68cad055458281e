"""Device-mapper state changes as interleavings, checked against a model of what each device
must read back.

A real dmemud serves an origin (snapshot-origin over a linear ``real``) and two persistent
snapshots of it (one ``P``, one ``PO``) on small COW devices, so that overflow comes soon.
Hypothesis interleaves origin writes, snapshot writes, table reloads, suspends, resumes and
power failures (after which the stack is activated again from the same tables, as
``vgchange -ay`` would). After every step each device that is not suspended is read whole
and compared with the model, and every snapshot's status line with the usage the model
expects. The rules follow dm-snap.c: an origin write copies the chunk into every valid
snapshot lacking it, invalidating any that has no room (P and PO alike); a snapshot write
allocates its own exception, and a PO store that has no room overflows instead of being
invalidated; once overflowed, every write to the snapshot fails; a table reload hands the
exceptions of the old snapshot over to the new one at resume.
"""
import errno
import itertools

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule, run_state_machine_as_test)

from dmemu import client
from dmemu.errors import DmemuError
from tests.helpers import ok

CHUNK = 8                       # sectors
NCHUNKS = 16
ORIGIN = CHUNK * NCHUNKS        # sectors
COW = 8 * CHUNK                 # header + one metadata area + 6 data chunks
CAPACITY = COW // CHUNK - 2
SPAN = ORIGIN + 2 * COW         # pmem sectors one example uses
STORES = ("P", "PO")
SECTOR = 512


@pytest.fixture
def ns(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "64M")
    return dmemu_root


class SnapModel:
    def __init__(self, store: str):
        self.store = store
        self.exceptions: set[int] = set()
        self.view = [0] * ORIGIN
        self.valid = True
        self.overflow = False

    def status(self) -> str:
        if not self.valid:
            return "Invalid"
        if self.overflow:
            return "Overflow"
        return f"{(2 + len(self.exceptions)) * CHUNK}/{COW} {2 * CHUNK}"


class Stack:
    """The names and tables of one example's devices, on its own stretch of pmem0."""

    def __init__(self, n: int):
        base = n * SPAN
        self.real = f"e{n}real"
        self.origin = f"e{n}origin"
        self.snaps = [f"e{n}snap{i}" for i in range(len(STORES))]
        self.cows = [f"e{n}cow{i}" for i in range(len(STORES))]
        self.tables = {self.real: f"0 {ORIGIN} linear pmem0 {base}"}
        for i, store in enumerate(STORES):
            self.tables[self.cows[i]] = f"0 {COW} linear pmem0 {base + ORIGIN + i * COW}"
            self.tables[self.snaps[i]] = f"0 {ORIGIN} snapshot {self.real} {self.cows[i]} {store} {CHUNK}"
        self.tables[self.origin] = f"0 {ORIGIN} snapshot-origin {self.real}"

    def creation_order(self) -> list[str]:
        return [self.real, *self.cows, *self.snaps, self.origin]


def machine(k: "client.Client", counter):
    """A state machine class bound to one client of the test's dmemud."""

    def run(afn, *args):
        return trio.from_thread.run(afn, *args)

    class DMStates(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.stack = Stack(next(counter) % 64)
            self.origin = [0] * ORIGIN
            self.snaps = [SnapModel(s) for s in STORES]
            self.suspended = set()
            self.loaded = set()         # devices with an inactive table waiting for resume
            self.open = {}
            self.tag = 0
            run(self._wipe)
            run(self._activate)

        async def _wipe(self):
            """Examples reuse stretches of pmem0: start each from zeroes."""
            for name in (self.stack.real, *self.stack.cows):
                await k.call("dm_create", name=name, table=self.stack.tables[name])
                dev = await k.open_device(name)
                await dev.write(0, bytes(dev.nr_sectors * SECTOR))
                await dev.close()
                await k.call("dm_remove", name=name)

        async def _activate(self):
            for name in self.stack.creation_order():
                await k.call("dm_create", name=name, table=self.stack.tables[name])
            for name in (self.stack.origin, *self.stack.snaps):
                self.open[name] = await k.open_device(name)

        def teardown(self):
            async def down():
                for dev in self.open.values():
                    await dev.close()
                for name in reversed(self.stack.creation_order()):
                    try:
                        await k.call("dm_resume", name=name)
                        await k.call("dm_remove", name=name)
                    except Exception:
                        pass
            run(down)

        def _next_tag(self) -> int:
            self.tag = self.tag % 255 + 1
            return self.tag

        # -- writes ---------------------------------------------------------------------

        @precondition(lambda self: "origin" not in self.suspended)
        @rule(sector=st.integers(0, ORIGIN - 1))
        def origin_write(self, sector):
            tag = self._next_tag()
            self._copy_into_snapshots(sector // CHUNK)
            run(self.open[self.stack.origin].write, sector, bytes([tag]) * SECTOR)
            self.origin[sector] = tag

        @rule(i=st.integers(0, len(STORES) - 1), sector=st.integers(0, ORIGIN - 1))
        def snapshot_write(self, i, sector):
            if f"snap{i}" in self.suspended:
                return
            snap, tag, chunk = self.snaps[i], self._next_tag(), sector // CHUNK
            fails = not snap.valid or snap.overflow
            if not fails and chunk not in snap.exceptions:
                if len(snap.exceptions) < CAPACITY:
                    snap.exceptions.add(chunk)
                elif snap.store == "PO":
                    snap.overflow, fails = True, True
                else:
                    snap.valid, fails = False, True
            dev = self.open[self.stack.snaps[i]]
            try:
                run(dev.write, sector, bytes([tag]) * SECTOR)
            except OSError as e:
                assert fails, f"snap{i} write at sector {sector} failed: {e}"
                assert e.errno == errno.EIO
            else:
                assert not fails, f"snap{i} write at sector {sector} succeeded, model says it fails"
                snap.view[sector] = tag

        # -- table changes --------------------------------------------------------------

        def _name(self, which: str) -> str:
            return self.stack.origin if which == "origin" else self.stack.snaps[int(which[4:])]

        @rule(which=st.sampled_from(["origin", "snap0", "snap1"]))
        def reload(self, which):
            name = self._name(which)
            if which != "origin" and which in self.loaded:
                # register_snapshot(): one handover at a time per COW device
                with pytest.raises(DmemuError) as e:
                    run(lambda: k.call("dm_load", name=name, table=self.stack.tables[name]))
                assert "Snapshot cow pairing for exception table handover failed" in str(e.value)
                return
            run(lambda: k.call("dm_load", name=name, table=self.stack.tables[name]))
            self.loaded.add(which)

        @rule(which=st.sampled_from(["origin", "snap0", "snap1"]))
        def suspend(self, which):
            run(lambda: k.call("dm_suspend", name=self._name(which)))
            self.suspended.add(which)

        @rule(which=st.sampled_from(["origin", "snap0", "snap1"]))
        def resume(self, which):
            run(lambda: k.call("dm_resume", name=self._name(which)))
            self.suspended.discard(which)
            self.loaded.discard(which)

        @precondition(lambda self: "origin" not in self.suspended)
        @rule(i=st.integers(0, len(STORES) - 1),
              sectors=st.lists(st.integers(0, ORIGIN - 1), min_size=1, max_size=4, unique=True))
        def reload_resume_racing_origin_writes(self, i, sectors):
            """A snapshot reload resumed while origin writes copy chunks into it: the
            handover must take every exception, whichever way they interleave."""
            which, name = f"snap{i}", self.stack.snaps[i]
            if which not in self.loaded:
                run(lambda: k.call("dm_load", name=name, table=self.stack.tables[name]))
            tags = [self._next_tag() for _ in sectors]
            for sector in sectors:
                self._copy_into_snapshots(sector // CHUNK)
            origin = self.open[self.stack.origin]

            async def race():
                async with trio.open_nursery() as n:
                    n.start_soon(lambda: k.call("dm_resume", name=name))
                    for sector, tag in zip(sectors, tags):
                        n.start_soon(origin.write, sector, bytes([tag]) * SECTOR)
            run(race)
            for sector, tag in zip(sectors, tags):
                self.origin[sector] = tag
            self.suspended.discard(which)
            self.loaded.discard(which)

        def _copy_into_snapshots(self, chunk: int) -> None:
            for snap in self.snaps:
                if not snap.valid or chunk in snap.exceptions:
                    continue
                if len(snap.exceptions) < CAPACITY:
                    snap.exceptions.add(chunk)
                else:
                    snap.valid = False      # __origin_write: invalidated, P and PO alike

        @rule()
        def power_failure(self):
            """Power is cut, the machine comes back and the volumes are activated again."""
            run(lambda: k.call("power_fail", devices=["pmem0"]))
            self.open.clear()
            run(self._activate)
            self.suspended.clear()
            self.loaded.clear()
            for snap in self.snaps:
                snap.overflow = False       # kept in memory only (snapshot_overflowed)

        # -- what the devices must read back ---------------------------------------------

        @invariant()
        def statuses_match(self):
            devices = run(lambda: k.call("dm_list"))["devices"]
            status = {d["name"]: d["status"] for d in devices}
            for i, snap in enumerate(self.snaps):
                assert status[self.stack.snaps[i]] == [f"0 {ORIGIN} snapshot {snap.status()}"], \
                    f"snap{i}"

        @invariant()
        def contents_match(self):
            def expect(view):
                return b"".join(bytes([t]) * SECTOR for t in view)
            if "origin" not in self.suspended:
                got = run(self.open[self.stack.origin].read, 0, ORIGIN * SECTOR)
                assert got == expect(self.origin), "origin"
            for i, snap in enumerate(self.snaps):
                if f"snap{i}" in self.suspended:
                    continue
                try:
                    got = run(self.open[self.stack.snaps[i]].read, 0, ORIGIN * SECTOR)
                except OSError as e:
                    assert not snap.valid, f"snap{i} read failed: {e}"
                    continue
                assert snap.valid, f"snap{i} read succeeded, but it is invalid"
                # What the snapshot shows: its own writes, else the origin at snapshot time.
                assert got == expect(snap.view), f"snap{i}"

    return DMStates


async def test_device_mapper_state_changes_lose_nothing(ns):
    async with client.connect() as k:
        counter = itertools.count()
        cls = machine(k, counter)
        conf = settings(max_examples=50, stateful_step_count=30, deadline=None,
                        suppress_health_check=list(HealthCheck))
        await trio.to_thread.run_sync(lambda: run_state_machine_as_test(cls, settings=conf))
