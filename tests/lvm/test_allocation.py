"""Extent allocation against a model: random creates, extends and removes on several PVs
never hand out an extent twice, never lose one, and keep every LV's segments contiguous."""
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dmemu.lvm.errors import LvmError
from dmemu.lvm.vg import LV, PV, VG


class Allocation(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.vg = VG("vg0", "id", 8192)
        for i, n in enumerate((7, 13, 5)):
            self.vg.pvs[f"pv{i}"] = PV(f"pv{i}", f"pv-{i}", f"/dev/pmem{i}", 0, 2048, n)
        self.sizes = {}         # the model: LV name -> extents
        self.next = 0

    @rule(n=st.integers(1, 30), pvs=st.sets(st.sampled_from(["pv0", "pv1", "pv2"])))
    def create(self, n, pvs):
        keys = sorted(pvs) or list(self.vg.pvs)
        free = self.vg.free_extents(keys)
        try:
            areas = self.vg.allocate(n, keys)
        except LvmError as e:
            assert n > free and str(e) == (f"Insufficient free space: {n} extents needed, "
                                           f"but only {free} available")
            return
        assert n <= free and all(pv in keys for pv, _, _ in areas)
        lv = LV(f"lv{self.next}", "id")
        self.next += 1
        self.vg.add_areas(lv, areas)
        self.vg.lvs[lv.name] = lv
        self.sizes[lv.name] = n

    @precondition(lambda self: self.sizes)
    @rule(data=st.data(), n=st.integers(1, 10))
    def extend(self, data, n):
        name = data.draw(st.sampled_from(sorted(self.sizes)))
        lv = self.vg.lvs[name]
        last = lv.segments[-1]
        after = (last.stripes[0][0], last.stripes[0][1] + last.extent_count)
        try:
            self.vg.add_areas(lv, self.vg.allocate(n, list(self.vg.pvs), after=after))
        except LvmError:
            return
        self.sizes[name] += n

    @precondition(lambda self: self.sizes)
    @rule(data=st.data())
    def remove(self, data):
        name = data.draw(st.sampled_from(sorted(self.sizes)))
        del self.vg.lvs[name], self.sizes[name]

    @invariant()
    def no_extent_twice_none_lost(self):
        owner = {}
        for lv in self.vg.lvs.values():
            assert lv.extents == self.sizes[lv.name]
            pos = 0
            for s in lv.segments:
                assert s.start_extent == pos       # segments tile the LV in order
                pos += s.extent_count
                pv, pe = s.stripes[0]
                for e in range(pe, pe + s.extent_count):
                    assert e < self.vg.pvs[pv].pe_count
                    assert (pv, e) not in owner
                    owner[(pv, e)] = lv.name
        assert self.vg.free_extents() + len(owner) == self.vg.total_extents()


TestAllocation = Allocation.TestCase
TestAllocation.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
