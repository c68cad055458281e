"""Model-based test: random namespace and data operations on the Filesystem and on a dict
model side by side; clean remounts and sync-then-power-fail must both give back exactly the
model, and fsck must stay clean."""
import os

import hypothesis.strategies as st
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from daxfs import format as fmt
from daxfs.errors import FsError
from daxfs.fs import Filesystem
from daxfs.fsck import check
from daxfs.mkfs import mkfs
from dmemu.memdev import MemoryBlockDevice

R = fmt.ROOT_INO
NAMES = st.sampled_from(["a", "b", "c"])
DIRS = st.sampled_from(["", "x", "x/y"])


class FsModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dev = MemoryBlockDevice(8 << 20 >> 9)
        trio.run(mkfs, self.dev)
        self.fs = trio.run(Filesystem.mount, self.dev)
        self.files: dict[str, bytes] = {}      # path -> content
        self.dirs: set[str] = {""}

    def run(self, coro_fn, *args):
        return trio.run(coro_fn, *args)

    async def _ino(self, path):
        ino = R
        for part in [p for p in path.split("/") if p]:
            ino = (await self.fs.lookup(ino, part.encode())).ino
        return ino

    def _join(self, d, n):
        return f"{d}/{n}" if d else n

    @rule(d=DIRS, n=NAMES, data=st.binary(min_size=1, max_size=64) |
          st.tuples(st.integers(1, 255), st.integers(1, 9000)).map(lambda t: bytes([t[0]]) * t[1]),
          off=st.integers(0, 20000) | st.sampled_from([0, 4000, 4096, 8191]))
    def write(self, d, n, data, off):
        if d not in self.dirs:
            return
        path = self._join(d, n)
        if path in self.dirs:
            return

        async def go():
            parent = await self._ino(d)
            try:
                ino = (await self.fs.lookup(parent, n.encode())).ino
                fh = await self.fs.open(ino, os.O_RDWR)
            except FsError:
                fh, _ = await self.fs.create(parent, n.encode(), 0o644, os.O_RDWR)
            await self.fs.write(fh, off, data)
            await self.fs.release(fh)
        self.run(go)
        old = self.files.get(path, b"")
        if data:
            old = old.ljust(off, b"\0")
            old = old[:off] + data + old[off + len(data):]
        self.files[path] = old

    @rule(d=DIRS, n=NAMES, size=st.sampled_from([0, 100, 4096, 5000, 9000, 12288, 30000]))
    def truncate(self, d, n, size):
        path = self._join(d, n)
        if path not in self.files:
            return

        async def go():
            await self.fs.setattr(await self._ino(path), size=size)
        self.run(go)
        self.files[path] = self.files[path][:size].ljust(size, b"\0")

    @rule(d=DIRS, n=NAMES)
    def unlink(self, d, n):
        path = self._join(d, n)
        if path not in self.files:
            return
        self.run(self.fs.unlink, self._sync_ino(d), n.encode())
        del self.files[path]

    def _sync_ino(self, path):
        return trio.run(self._ino, path)

    @rule(d=st.sampled_from(["x", "x/y"]))
    def mkdir(self, d):
        parent, _, name = d.rpartition("/")
        if d in self.dirs or parent not in self.dirs or d in self.files:
            return
        self.run(self.fs.mkdir, self._sync_ino(parent), name.encode())
        self.dirs.add(d)

    @rule(d1=DIRS, n1=NAMES, d2=DIRS, n2=NAMES)
    def rename_file(self, d1, n1, d2, n2):
        p1, p2 = self._join(d1, n1), self._join(d2, n2)
        if p1 not in self.files or d2 not in self.dirs or p2 in self.dirs:
            return
        self.run(self.fs.rename, self._sync_ino(d1), n1.encode(), self._sync_ino(d2),
                 n2.encode())
        data = self.files.pop(p1)
        self.files[p2] = data

    @rule(d=DIRS, n=NAMES, v=st.binary(max_size=100))
    def xattr(self, d, n, v):
        path = self._join(d, n)
        if path not in self.files:
            return
        self.run(self.fs.setxattr, self._sync_ino(path), b"user.m", v)

    @rule()
    def remount(self):
        async def go():
            await self.fs.unmount()
            self.fs = await Filesystem.mount(self.dev)
        self.run(go)
        self._compare()

    @rule()
    def sync_and_crash(self):
        async def go():
            await self.fs.sync()
            self.dev.power_fail()
            self.fs = await Filesystem.mount(self.dev)
        self.run(go)
        self._compare()

    @invariant()
    def same_as_model(self):
        self._compare(fsck=False)

    def _compare(self, fsck=True):
        async def go():
            if fsck:
                code, c = await check(self.dev)
                assert code == 0, c.errors
            seen = {}
            todo = [("", R)]
            while todo:
                path, ino = todo.pop()
                async for name, inode, _ in self.fs.readdir(ino):
                    p = self._join(path, name.decode())
                    if inode.is_dir:
                        todo.append((p, inode.ino))
                        seen[p] = None
                    else:
                        fh = await self.fs.open(inode.ino, os.O_RDONLY)
                        seen[p] = await self.fs.read(fh, 0, inode.size + 10)
                        await self.fs.release(fh)
            want = {p: None for p in self.dirs if p} | self.files | {"lost+found": None}
            assert seen == want
        self.run(go)

    def teardown(self):
        self.run(self.fs.unmount)


TestFsModel = FsModel.TestCase
TestFsModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=60, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(0, 60000), st.integers(1, 9000),
                                 st.integers(0, 255)), min_size=1, max_size=12),
       reads=st.lists(st.tuples(st.integers(0, 70000), st.integers(0, 20000)), max_size=12))
def test_reads_match_a_bytearray(writes, reads):
    """Reads at any offset and size, across extents, holes and EOF, return what a flat
    byte array would."""
    async def go():
        dev = MemoryBlockDevice(8 << 20 >> 9)
        await mkfs(dev)
        fs = await Filesystem.mount(dev)
        fh, f = await fs.create(R, b"f", 0o644, os.O_RDWR)
        model = bytearray()
        for off, n, byte in writes:
            data = bytes([byte]) * n
            await fs.write(fh, off, data)
            if len(model) < off + n:
                model.extend(bytes(off + n - len(model)))
            model[off:off + n] = data
        for off, n in reads + [(0, len(model))]:
            assert await fs.read(fh, off, n) == bytes(model[off:off + n])
        await fs.release(fh)
    trio.run(go)
