"""The inode cache under a small size bound: random creates, lookups, forgets, opens,
writes, unlinks, commits and cache pressure against a model of what the kernel holds.

What must hold whatever the interleaving: the cache never grows far past its bound when
nothing pins the inodes; an open file, a dirty inode and an orphan are never evicted (the
object a handle holds is the one the cache serves); evicted inodes read back exactly as
the model says; the kernel's lookup counts are kept for evicted inodes, so an unlinked
file the kernel still knows stays an orphan until its last forget; and after unmount fsck
finds nothing wrong.
"""
import os

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from daxfs import format as fmt
from daxfs import icache
from daxfs.errors import FsError
from daxfs.fs import Filesystem
from daxfs.fsck import check
from daxfs.mkfs import mkfs
from dmemu.memdev import MemoryBlockDevice

R = fmt.ROOT_INO
BOUND = 16
NAMES = st.integers(0, 59)


class InodeCacheModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dev = MemoryBlockDevice(16 << 20 >> 9)
        trio.run(mkfs, self.dev)
        self.fs = trio.run(lambda: Filesystem.mount(self.dev, track_lookups=True))
        self.size: dict[int, int] = {}          # name -> file size, for names that exist
        self.ino: dict[int, int] = {}           # name -> inode number
        self.kernel: dict[int, int] = {}        # ino -> lookup count the kernel holds
        self.handles: dict[int, int] = {}       # fh -> ino
        self.orphans: set[int] = set()          # unlinked inodes the kernel still knows

    def run(self, fn, *args):
        return trio.run(fn, *args)

    def _lookup(self, name):
        async def go():
            return await self.fs.lookup(R, str(name).encode())
        inode = self.run(go)
        self.fs.remember(inode.ino)            # as the FUSE layer does for each reply
        self.kernel[inode.ino] = self.kernel.get(inode.ino, 0) + 1
        return inode

    @rule(name=NAMES)
    def create(self, name):
        if name in self.size:
            return

        async def go():
            fh, inode = await self.fs.create(R, str(name).encode(), 0o644, os.O_RDWR)
            await self.fs.release(fh)
            return inode
        inode = self.run(go)
        self.fs.remember(inode.ino)
        self.kernel[inode.ino] = self.kernel.get(inode.ino, 0) + 1
        self.size[name], self.ino[name] = 0, inode.ino

    @rule(name=NAMES)
    def lookup(self, name):
        if name in self.size:
            assert self._lookup(name).ino == self.ino[name]

    @rule(data=st.data())
    def forget(self, data):
        if not self.kernel:
            return
        ino = data.draw(st.sampled_from(sorted(self.kernel)))
        n = data.draw(st.integers(1, self.kernel[ino]))
        self.run(self.fs.forget, [(ino, n)])
        self.kernel[ino] -= n
        if not self.kernel[ino]:
            del self.kernel[ino]
            if ino in self.orphans and ino not in self.handles.values():
                self.orphans.discard(ino)

    @rule(name=NAMES)
    def open(self, name):
        if name in self.size:
            self.handles[self.run(self.fs.open, self.ino[name], os.O_RDWR)] = self.ino[name]

    @rule(data=st.data())
    def release(self, data):
        if not self.handles:
            return
        fh = data.draw(st.sampled_from(sorted(self.handles)))
        self.run(self.fs.release, fh)
        ino = self.handles.pop(fh)
        if ino in self.orphans and ino not in self.kernel and ino not in self.handles.values():
            self.orphans.discard(ino)

    @rule(data=st.data(), n=st.integers(1, 9000))
    def write(self, data, n):
        """Through an open handle, or by name (dirtying an inode nothing else pins)."""
        if self.handles and data.draw(st.booleans()):
            fh = data.draw(st.sampled_from(sorted(self.handles)))
            self.run(self.fs.write, fh, 0, b"w" * n)
            ino, grow = self.handles[fh], True          # n bytes at offset 0
        else:
            live = sorted(self.size)
            if not live:
                return
            name = data.draw(st.sampled_from(live))
            self.run(lambda: self.fs.setattr(self.ino[name], size=n))
            ino, grow = self.ino[name], False           # truncated (or extended) to n
        for name, i in self.ino.items():
            if i == ino and name in self.size:
                self.size[name] = max(self.size[name], n) if grow else n

    @rule(name=NAMES)
    def unlink(self, name):
        if name not in self.size:
            return
        self.run(self.fs.unlink, R, str(name).encode())
        ino = self.ino.pop(name)
        del self.size[name]
        if ino in self.kernel or ino in self.handles.values():
            self.orphans.add(ino)

    @rule()
    def commit(self):
        self.run(self.fs.sync)

    @rule()
    def pressure(self):
        """Many other inodes used: the cache must evict to stay near its bound."""
        async def go():
            for name in sorted(self.size):
                await self.fs.iget(self.ino[name])
        self.run(go)

    @invariant()
    def pinned_stay_and_the_rest_reads_back(self):
        fs = self.fs
        for fh, ino in self.handles.items():
            assert fs.inodes.get(ino) is fs.handle(fh).inode, "an open inode was evicted"
        for ino in self.orphans:
            assert ino in fs.orphans
        for ino, inode in fs.dirty_inodes.items():
            if ino in fs.inodes:
                assert fs.inodes[ino] is inode
        assert {i: n for i, n in fs.lookups.items() if n} == self.kernel

        async def go():
            for name, size in self.size.items():
                inode = await fs.getattr(self.ino[name])
                assert inode.nlink == 1
                if self.ino[name] not in self.handles.values():
                    assert inode.size == size, name
        self.run(go)
        pinned = len(self.handles) + len(fs.dirty_inodes) + len(fs.orphans) + 1
        assert len(fs.inodes) <= BOUND + BOUND // 8 + pinned

    def teardown(self):
        async def go():
            for fh in list(self.handles):
                await self.fs.release(fh)
            await self.fs.forget(list(self.kernel.items()))
            await self.fs.unmount()
            msgs = []
            code, _ = await check(self.dev, out=msgs.append)
            assert code == 0, msgs
        self.run(go)


@pytest.fixture
def small_cache(monkeypatch):
    monkeypatch.setattr(icache, "INODE_CACHE", BOUND)
    monkeypatch.setattr(icache.InodeCache, "_shrink_at", BOUND, raising=False)


def test_inode_cache_model(small_cache):
    state = InodeCacheModel.TestCase()
    state.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
    state.runTest()


def test_a_file_the_kernel_knows_reads_back_after_eviction(small_cache):
    async def go():
        dev = MemoryBlockDevice(16 << 20 >> 9)
        await mkfs(dev)
        fs = await Filesystem.mount(dev, track_lookups=True)
        made = []
        for i in range(200):
            fh, inode = await fs.create(R, b"f%d" % i, 0o644, os.O_RDWR)
            await fs.write(fh, 0, b"%d" % i)
            await fs.release(fh)
            fs.remember(inode.ino)
            made.append(inode.ino)
        await fs.sync()
        for ino in made:
            await fs.iget(ino)
        assert len(fs.inodes) <= BOUND + BOUND // 8 + 1
        for i, ino in enumerate(made):
            fh = await fs.open(ino, os.O_RDONLY)
            assert await fs.read(fh, 0, 10) == b"%d" % i
            await fs.release(fh)
        assert all(fs.lookups[ino] == 1 for ino in made)
        with pytest.raises(FsError):
            await fs.iget(max(made) + 1)
        await fs.forget([(ino, 1) for ino in made])
        await fs.unmount()
        code, _ = await check(dev, out=lambda m: None)
        assert code == 0
    trio.run(go)
