"""Fast commits carry what changed: fsync of a file with many extents is one small record,
its replay rebuilds the file exactly, records written before ranges still replay, and a
state machine of writes, truncates, fsyncs, commits and power failures against a model
never loses what an fsync acknowledged."""
import os

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from daxfs import format as fmt
from daxfs.errors import CorruptError
from daxfs.fs import Filesystem
from daxfs.fsck import EXIT_FIXED, EXIT_OK, check
from daxfs.journal import write_blocks
from daxfs.mkfs import mkfs
from dmemu.memdev import MemoryBlockDevice

from .conftest import MiB, make_dev

R = fmt.ROOT_INO
BS = fmt.BLOCK_SIZE


def record_used(dev, sb, k: int) -> int:
    """Bytes of entries in the k-th record (0-based) of the fast-commit area."""
    blk = sb.fc_start + k
    buf = bytes(dev.view[blk * BS:(blk + 1) * BS])
    assert fmt.block_type(buf) == "fast commit"
    return fmt.FC_FMT.unpack_from(buf, fmt.HDR_SIZE)[2]


async def fragmented(fs, nblocks: int):
    """A file, durable, with a block written at every other file block: nblocks/2 extents."""
    fh, f = await fs.create(R, b"frag", 0o644, os.O_RDWR)
    model = bytearray()
    for lblk in range(0, nblocks, 2):
        data = bytes([lblk % 251 + 1]) * BS
        await fs.write(fh, lblk * BS, data)
        model[len(model):] = bytes(lblk * BS - len(model)) + data
    await fs.sync()
    return fh, f, model


async def test_fsync_of_a_file_of_many_extents_is_one_small_record():
    dev = await make_dev(32 * MiB)
    fs = await Filesystem.mount(dev)
    fh, f, model = await fragmented(fs, 1200)
    assert len(f.ext_lblk) == 600 and len(f.chain) > 1
    commits = fs.journal.commits

    async def change(off, data):
        await fs.write(fh, off, data)
        model[len(model):] = bytes(max(0, off - len(model)))
        model[off:off + len(data)] = data

    await change(1 * BS, b"h" * BS)                # fills a hole: two extents become one
    await fs.fsync(fh)
    await change(601 * BS + 100, b"u" * 5000)      # two holes, unaligned
    await fs.fsync(fh, datasync=True)
    await fs.setattr(f.ino, size=900 * BS + 17)   # drops 150 extents
    del model[900 * BS + 17:]
    await fs.fsync(fh)
    await change(len(model) + 3 * BS, b"t" * 3 * BS)   # a hole, then an append
    await fs.fsync(fh)
    assert fs.journal.commits == commits, "an fsync did a full commit"
    assert fs.fc.records == 4
    # what changed, not the file's 600 extents (16 bytes each)
    assert all(record_used(dev, fs.sb, k) < 512 for k in range(4))
    dev.power_fail()
    msgs = []
    assert (await check(dev, out=msgs.append))[0] == EXIT_OK, msgs
    assert any("fast-commit area holds 4 inode record(s)" in m for m in msgs), msgs
    fs = await Filesystem.mount(dev)
    g = await fs.lookup(R, b"frag")
    assert g.size == len(model)
    fh = await fs.open(g.ino, os.O_RDONLY)
    assert await fs.read(fh, 0, len(model) + BS) == bytes(model)
    await fs.release(fh)
    await fs.unmount()
    assert (await check(dev))[0] == EXIT_OK


async def test_a_file_with_too_many_changed_ranges_commits_in_full():
    """More changed ranges than a record holds: fsync falls back to a full commit, and
    the next small change is a record again."""
    dev = await make_dev(32 * MiB)
    fs = await Filesystem.mount(dev)
    fh, f, model = await fragmented(fs, 1400)
    commits = fs.journal.commits
    for lblk in range(1, 1400, 2):              # 700 separate holes filled
        await fs.write(fh, lblk * BS, b"z" * 10)
    await fs.fsync(fh)
    assert fs.journal.commits == commits + 1
    await fs.write(fh, 5, b"small")
    await fs.fsync(fh)
    assert fs.journal.commits == commits + 1 and fs.fc.records == 1
    await fs.release(fh)
    await fs.unmount()
    assert (await check(dev))[0] == EXIT_OK


def encode_whole_record(inode, sb, lsn: int) -> bytes:
    """A record as daxfs wrote them before ranges (format.FC_WHOLE): the whole inode."""
    n = len(inode.ext_lblk)
    entry = bytearray(fmt.FC_ENTRY_FMT.pack(inode.ino, len(inode.chain),
                                            n if n > fmt.INLINE_EXTENTS else 0))
    entry += inode.pack(sb.uuid)
    for b in inode.chain:
        entry += b.to_bytes(8, "little")
    if n > fmt.INLINE_EXTENTS:
        for e in inode.extents():
            entry += fmt.EXTENT_FMT.pack(*e)
    buf = fmt.pack_fields(fmt.FC_WHOLE, fmt.FC_FMT, 1, 1, len(entry))
    buf[fmt.FC_START:fmt.FC_START + len(entry)] = entry
    return fmt.seal(buf, sb.fc_start, sb.uuid, lsn)


async def test_a_record_written_before_ranges_still_replays():
    dev = await make_dev(32 * MiB)
    fs = await Filesystem.mount(dev)
    fh, f, model = await fragmented(fs, 40)
    await fs.write(fh, 41 * BS, b"new extent")
    await fs.setattr(f.ino, size=10 * BS)
    await fs.write(fh, 3 * BS, b"hole filled")
    model = bytearray(model[:10 * BS])
    model[3 * BS:3 * BS + 11] = b"hole filled"
    await write_blocks(dev, fs.sb.fc_start, encode_whole_record(f, fs.sb, fs.journal.seq),
                       preflush=True, fua=True)
    dev.power_fail()
    assert (await check(dev))[0] == EXIT_OK
    fs = await Filesystem.mount(dev)
    g = await fs.lookup(R, b"frag")
    fh = await fs.open(g.ino, os.O_RDONLY)
    assert await fs.read(fh, 0, 20 * BS) == bytes(model)
    await fs.release(fh)
    await fs.unmount()
    assert (await check(dev))[0] == EXIT_OK


_pending = None


async def pending_records():
    """An image whose fast-commit area holds three live records of a file of 300 extents
    (fsynced after power failure, not yet committed in full); built once."""
    global _pending
    if _pending is None:
        dev = await make_dev(16 * MiB)
        fs = await Filesystem.mount(dev)
        fh, f, _ = await fragmented(fs, 600)
        for lblk in (1, 301, 599):
            await fs.write(fh, lblk * BS, b"r" * 6000)
            await fs.fsync(fh)
        await fs.setattr(f.ino, size=500 * BS)
        await fs.fsync(fh)
        assert fs.fc.records == 4
        dev.power_fail()
        _pending = bytes(dev.media), fs.sb
    return _pending


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(k=st.integers(0, 3), part=st.sampled_from(["entry", "ranges", "ranges", "ranges"]),
       at=st.integers(0, fmt.FC_SPACE - 1), value=st.integers(0, 255),
       width=st.sampled_from([1, 2, 4, 8]))
async def test_a_damaged_record_sealed_again_is_refused_or_repaired(k, part, at, value, width):
    """A record changed and sealed again with a valid checksum (as a buggy writer would):
    mount refuses it with a CorruptError, or applies what it says and leaves a filesystem
    that fsck finds clean; fsck -y leaves one that checks clean and mounts."""
    image, sb = await pending_records()
    dev = MemoryBlockDevice(len(image) // 512)
    dev.view[:] = dev.media[:] = image
    blk = sb.fc_start + k
    buf = bytearray(image[blk * BS:(blk + 1) * BS])
    used = fmt.FC_FMT.unpack_from(buf, fmt.HDR_SIZE)[2]
    head = fmt.FC_ENTRY_FMT.size + fmt.INODE_SIZE     # then the ranges, 16 bytes each
    lo = fmt.FC_START + (at % used if part == "entry" else head + at % (used - head))
    width = min(width, fmt.FC_START + used - lo)
    buf[lo:lo + width] = bytes([value]) * width
    lsn = fmt.HDR_FMT.unpack_from(buf, 0)[5]
    sealed = fmt.seal(buf, blk, sb.uuid, lsn)
    dev.view[blk * BS:(blk + 1) * BS] = dev.media[blk * BS:(blk + 1) * BS] = sealed
    try:
        fs = await Filesystem.mount(dev)
    except CorruptError:
        pass
    else:
        # what it applied must be a consistent filesystem
        assert not fs.read_only
        await fs.unmount()
        msgs = []
        assert (await check(dev, out=msgs.append))[0] == EXIT_OK, msgs
    assert (await check(dev, repair=True))[0] in (EXIT_OK, EXIT_FIXED)
    msgs = []
    assert (await check(dev, out=msgs.append))[0] == EXIT_OK, msgs
    fs = await Filesystem.mount(dev)
    await fs.unmount()


async def test_a_record_whose_ranges_overlap_is_refused():
    """Two mapped ranges over the same file block, each to free blocks: nothing a writer
    produces, and mount refuses it rather than map a block twice."""
    image, sb = await pending_records()
    dev = MemoryBlockDevice(len(image) // 512)
    dev.view[:] = dev.media[:] = image
    blk = sb.fc_start
    buf = bytearray(image[blk * BS:(blk + 1) * BS])
    seq, count, used = fmt.FC_FMT.unpack_from(buf, fmt.HDR_SIZE)
    head = fmt.FC_START + fmt.FC_ENTRY_FMT.size + fmt.INODE_SIZE
    ino, nranges, flags = fmt.FC_ENTRY_FMT.unpack_from(buf, fmt.FC_START)
    lblk, ln, pblk = fmt.EXTENT_FMT.unpack_from(buf, head)
    assert pblk and nranges == 1
    fmt.EXTENT_FMT.pack_into(buf, head + 16, lblk, ln, sb.total_blocks - 100)
    fmt.FC_ENTRY_FMT.pack_into(buf, fmt.FC_START, ino, 2, flags)
    fmt.FC_FMT.pack_into(buf, fmt.HDR_SIZE, seq, count, used + 16)
    sealed = fmt.seal(buf, blk, sb.uuid, fmt.HDR_FMT.unpack_from(buf, 0)[5])
    dev.view[blk * BS:(blk + 1) * BS] = dev.media[blk * BS:(blk + 1) * BS] = sealed
    with pytest.raises(CorruptError, match="ranges overlap"):
        await Filesystem.mount(dev)


FILES = ["a", "b"]
SECTOR = 512


class FastCommitModel(RuleBasedStateMachine):
    """After a power failure each file has the size of a state made durable (by its last
    fsync, or by a full commit since, which may have caught any later state), and each
    sector holds what it held in one of the states since then: data written in place may
    reach the media before any commit, as on Linux. What an fsync acknowledged, and no
    later write overwrote, is always there."""

    def __init__(self):
        super().__init__()
        self.dev = MemoryBlockDevice(16 * MiB >> 9)
        trio.run(mkfs, self.dev)
        self.fs = trio.run(Filesystem.mount, self.dev)
        self.now = {n: b"" for n in FILES}
        self.durable = {n: [b""] for n in FILES}    # whole states a power failure may leave
        self.later = {n: [] for n in FILES}         # states whose data may have reached it

        async def go():
            for n in FILES:
                fh, _ = await self.fs.create(R, n.encode(), 0o644, os.O_RDWR)
                await self.fs.release(fh)
            await self.fs.sync()
        trio.run(go)
        self.commits = self.fs.journal.commits
        self.fsyncs = 0                             # since the last power failure

    def _after(self, n: str | None, before: bytes | None) -> None:
        """Account for an operation that changed file n from before to now."""
        if n is not None:
            self.later[n].append(self.now[n])
        if self.fs.journal.commits != self.commits:
            # a full commit ran during the operation: it caught every file as it was then
            self.commits = self.fs.journal.commits
            for m in FILES:
                self.durable[m] = [self.now[m]] + ([before] if m == n else [])
                self.later[m] = []

    async def _fh(self, n: str):
        return await self.fs.open((await self.fs.lookup(R, n.encode())).ino, os.O_RDWR)

    def _apply(self, n: str, writes) -> None:
        async def go():
            fh = await self._fh(n)
            for off, data in writes:
                await self.fs.write(fh, off, data)
            await self.fs.release(fh)
        before = self.now[n]
        trio.run(go)
        cur = bytearray(before)
        for off, data in writes:
            cur[len(cur):] = bytes(max(0, off - len(cur)))
            cur[off:off + len(data)] = data
        self.now[n] = bytes(cur)
        self._after(n, before)

    @rule(n=st.sampled_from(FILES), blk=st.integers(0, 400), blocks=st.integers(1, 3),
          skew=st.sampled_from([0, 0, 100]), byte=st.integers(1, 255))
    def write(self, n, blk, blocks, skew, byte):
        self._apply(n, [(blk * BS + skew, bytes([byte]) * (blocks * BS))])

    @rule(n=st.sampled_from(FILES), start=st.integers(0, 300))
    def scatter(self, n, start):
        """Every other block over 600 blocks: more extents than one record could carry
        whole."""
        self._apply(n, [(lblk * BS, b"s%d" % lblk) for lblk in range(start, start + 600, 2)])

    @rule(n=st.sampled_from(FILES), size=st.integers(0, 500 * BS))
    def truncate(self, n, size):
        async def go():
            await self.fs.setattr((await self.fs.lookup(R, n.encode())).ino, size=size)
        before = self.now[n]
        trio.run(go)
        self.now[n] = before[:size].ljust(size, b"\0")
        self._after(n, before)

    @rule(n=st.sampled_from(FILES), blk=st.integers(0, 400), size=st.integers(0, 500 * BS),
          datasync=st.booleans())
    def change_and_fsync(self, n, blk, size, datasync):
        """The pattern fast commits are for: a change, then fsync of the file alone."""
        if blk % 3:
            self._apply(n, [(blk * BS + blk % 2 * 100, b"c%d" % blk * 700)])
        else:
            self.truncate(n, size)
        self.fsync(n, datasync)

    @rule(n=st.sampled_from(FILES), datasync=st.booleans())
    def fsync(self, n, datasync):
        async def go():
            fh = await self._fh(n)
            await self.fs.fsync(fh, datasync=datasync)
            await self.fs.release(fh)
        trio.run(go)
        self._after(None, None)
        self.durable[n] = [self.now[n]]
        self.later[n] = []
        self.fsyncs += 1

    @rule()
    def sync(self):
        trio.run(self.fs.sync)
        self._after(None, None)

    @precondition(lambda self: self.fsyncs)
    @rule()
    def power_fail(self):
        self.fsyncs = 0
        self.dev.power_fail()
        msgs = []
        assert trio.run(lambda: check(self.dev, out=msgs.append))[0] == EXIT_OK, msgs
        self.fs = trio.run(Filesystem.mount, self.dev)

        async def read_all():
            got = {}
            for n in FILES:
                f = await self.fs.lookup(R, n.encode())
                fh = await self.fs.open(f.ino, os.O_RDONLY)
                got[n] = await self.fs.read(fh, 0, f.size + BS)
                await self.fs.release(fh)
            return got
        got = trio.run(read_all)
        for n in FILES:
            sizes = {len(c) for c in self.durable[n]}
            assert len(got[n]) in sizes, f"{n}: size {len(got[n])}, durable were {sizes}"
            states = self.durable[n] + self.later[n]
            for at in range(0, len(got[n]), SECTOR):
                seen = got[n][at:at + SECTOR]
                k = len(seen)                   # less than a sector at the end of the file
                assert any(s[at:at + k].ljust(k, b"\0") == seen for s in states), \
                    f"{n}: bytes {at}..{at + SECTOR - 1} are from no state since its fsync"
            self.now[n] = got[n]
            self.durable[n] = [got[n]]
            self.later[n] = []
        self.commits = self.fs.journal.commits

    @invariant()
    def sizes_match(self):
        async def go():
            for n in FILES:
                assert (await self.fs.lookup(R, n.encode())).size == len(self.now[n])
        trio.run(go)

    def teardown(self):
        trio.run(self.fs.unmount)
        assert trio.run(check, self.dev)[0] == EXIT_OK


TestFastCommitModel = FastCommitModel.TestCase
TestFastCommitModel.settings = settings(max_examples=80, stateful_step_count=30, deadline=None,
                                        suppress_health_check=list(HealthCheck))
