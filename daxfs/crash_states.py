"""Crash states as the hardware allows them, rebuilt from a recorded workload.

A ``Recording`` is what a workload left on its device, in the order the device completed
it: writes (with FUA or not) and flushes for a disk with a volatile write cache under
log-writes (the ``log`` model), or the persistence trace of an adr pmem namespace, one
record per fence (the ``pmem`` model).

Block model. At a crash point (a FLUSH, or a FUA write) everything completed before the
last FLUSH is durable, the FUA writes since are durable, and the other writes since the
last FLUSH (the *pending* writes) may each have left the cache or not, in any subset.
CrashMonkey's bounded scheme picks from the 2^n subsets: none, all, every subset that drops
exactly one (one-out), every subset that keeps exactly one (one-in), and a seeded sample of
the rest, bounded per point.

pmem model (adr). At a fence every line flushed before it is durable; the lines the next
fence flushes were stored already and may have been written back by the CPU in any subset,
and a line may be torn at 8-byte words (the unit the CPU writes atomically; Chipmunk and
Vinter explore the same): none, every one-out, every one-in, each line torn alone, and a
seeded sample where each line is old, new or torn.

A state is named ``POINT:KIND[N]`` (``812:out3``: at crash point 812 all pending writes but
the fourth). Names and their subsets follow from the recording, the seed and the bounds
only, so a state is found again in a new run and on any worker.

States are checked on an ``OverlayDevice``: a base image (all durable up to the point's
last flush or fence, built once per point and moved forward incrementally) with the
state's writes applied over it at 4 KiB granularity, so a state costs its own writes, not
a copy of the device.
"""
import random
from dataclasses import dataclass, field

BLOCK = 4096
CACHELINE = 64
WORD = 8


@dataclass
class Recording:
    """What one workload left on its device. ``ops``: ("w", byte offset, data, fua) or
    ("f",) for the log model; ("r", byte offset, data) per fence for the pmem model.
    ``initial``: the device before ``ops[0]``, as (offset, bytes) pieces over zeros."""
    workload: str
    model: str                      # "log" or "pmem"
    size: int                       # bytes of the recorded device
    fs_bytes: int                   # the filesystem's part of it (a COW store may follow)
    initial: list
    ops: list
    start: int                      # the first op after mkfs: crash points from there on
    events: list = field(default_factory=list)      # the oracle's promises (crash_oracle)
    position: dict = field(default_factory=dict)    # oracle mark -> op index it precedes
    bounds: dict = field(default_factory=dict)      # what the workload could ever have shown
    snapshot: dict | None = None    # {"at": op index, "cow_offset", "cow_bytes"} if taken


@dataclass(frozen=True)
class State:
    id: str
    point: int
    chosen: tuple        # log: indices into ops; pmem: (line offset, word mask) pairs


def pieces_of(image) -> list:
    """A sparse image as (offset, bytes) of its non-zero 64 KiB chunks."""
    out, step = [], 1 << 16
    zero = bytes(step)
    view = memoryview(image)
    for off in range(0, len(image), step):
        chunk = view[off:off + step]
        if chunk != zero[:len(chunk)]:
            out.append((off, bytes(chunk)))
    return out


# -- enumeration ---------------------------------------------------------------------------

def _subsets(n: int, rng: random.Random, samples: int):
    """(kind, members) for the bounded scheme over n items, without repeats."""
    seen = set()

    def emit(kind, members):
        key = frozenset(members)
        if key not in seen:
            seen.add(key)
            return [(kind, tuple(sorted(members)))]
        return []
    out = emit("none", ())
    out += emit("all", range(n))
    for j in range(n):
        out += emit(f"out{j}", [k for k in range(n) if k != j])
    for j in range(n):
        out += emit(f"in{j}", [j])
    if n >= 3:
        tries = 0
        k = 0
        while k < samples and tries < samples * 4:
            tries += 1
            pick = [j for j in range(n) if rng.random() < 0.5]
            got = emit(f"s{k}", pick)
            if got:
                out += got
                k += 1
    return out


def _rng(seed: int, workload: str, point: int) -> random.Random:
    return random.Random(f"{seed}/{workload}/{point}")


def log_points(rec: Recording):
    """(point, last flush before it or -1) of every FLUSH and FUA op from ``start`` on."""
    lf = -1
    for i, op in enumerate(rec.ops):
        if i >= rec.start and (op[0] == "f" or op[3]):
            yield i, lf
        if op[0] == "f":
            lf = i


def log_states(rec: Recording, seed: int, samples: int):
    """Every State of the block model, point by point."""
    for i, lf in log_points(rec):
        pending = [j for j in range(lf + 1, i) if rec.ops[j][0] == "w" and not rec.ops[j][3]]
        for kind, members in _subsets(len(pending), _rng(seed, rec.workload, i), samples):
            yield State(f"{i}:{kind}", i, tuple(pending[m] for m in members))


def _lines(base, offset: int, data: bytes):
    """(line offset, new bytes, changed-word mask) of each 64-byte line a record changes."""
    end = offset + len(data)
    first = offset - offset % CACHELINE
    for line in range(first, end, CACHELINE):
        a, b = max(line, offset), min(line + CACHELINE, end)
        new = data[a - offset:b - offset]
        if base[a:b] == new:
            continue
        mask = 0
        for w in range(a - a % WORD, b, WORD):
            lo, hi = max(w, a), min(w + WORD, b)
            if base[lo:hi] != data[lo - offset:hi - offset]:
                mask |= 1 << ((w - line) // WORD)
        yield line, mask


def pmem_states_at(rec: Recording, fence: int, base, seed: int, samples: int):
    """The States at ``fence`` (0: before the first record); ``base``: the media there."""
    if fence >= len(rec.ops):
        yield State(f"{fence}:none", fence, ())
        return
    _, offset, data = rec.ops[fence]
    lines = list(_lines(base, offset, data))
    rng = _rng(seed, rec.workload, fence)
    n = len(lines)
    for kind, members in _subsets(n, rng, 0):
        if kind == "all":
            continue          # the next fence's "none"
        yield State(f"{fence}:{kind}", fence, tuple((lines[m][0], 0xFF) for m in members))
    for j, (line, mask) in enumerate(lines):
        if bin(mask).count("1") > 1:
            yield State(f"{fence}:torn{j}", fence, ((line, _torn(rng, mask)),))
    if n >= 2:
        for k in range(samples):
            chosen = []
            for line, mask in lines:
                r = rng.random()
                if r < 0.4:
                    chosen.append((line, 0xFF))
                elif r < 0.6 and bin(mask).count("1") > 1:
                    chosen.append((line, _torn(rng, mask)))
            yield State(f"{fence}:s{k}", fence, tuple(chosen))


def _torn(rng: random.Random, mask: int) -> int:
    """A strict, non-empty part of the changed words of a line."""
    words = [w for w in range(8) if mask & (1 << w)]
    keep = rng.sample(words, rng.randrange(1, len(words)))
    return sum(1 << w for w in keep)


def count_states(rec: Recording, seed: int, samples: int) -> int:
    if rec.model == "log":
        return sum(1 for _ in log_states(rec, seed, samples))
    return sum(1 for _ in pmem_states(rec, seed, samples))


def pmem_states(rec: Recording, seed: int, samples: int, builder=None):
    builder = builder or BaseBuilder(rec)
    for fence in range(rec.start, len(rec.ops) + 1):
        yield from pmem_states_at(rec, fence, builder.base(fence), seed, samples)


def states(rec: Recording, seed: int, samples: int):
    if rec.model == "log":
        return log_states(rec, seed, samples)
    return pmem_states(rec, seed, samples)


def find_state(rec: Recording, state_id: str, seed: int, samples: int) -> State | None:
    point = int(state_id.split(":", 1)[0])
    if rec.model == "log":
        it = (s for s in log_states(rec, seed, samples) if s.point == point)
    else:
        if not rec.start <= point <= len(rec.ops):
            return None
        it = pmem_states_at(rec, point, BaseBuilder(rec).base(point), seed, samples)
    return next((s for s in it if s.id == state_id), None)


# -- rebuilding ----------------------------------------------------------------------------

class BaseBuilder:
    """The durable image at a point, moved forward incrementally: a worker that checks the
    points of a recording in order applies each write once."""

    def __init__(self, rec: Recording):
        self.rec = rec
        self.image = None
        self.at = 0            # ops[:at] are in image (only the durable ones, log model)

    def _reset(self):
        self.image = bytearray(self.rec.size)
        for off, data in self.rec.initial:
            self.image[off:off + len(data)] = data
        self.at = 0

    def base(self, point: int) -> bytearray:
        """log: the image after every write before the last flush before ``point``;
        pmem: the media after records 0..point-1. Do not modify it."""
        upto = point
        if self.rec.model == "log":
            upto = 0
            for j in range(point - 1, -1, -1):
                if self.rec.ops[j][0] == "f":
                    upto = j
                    break
        if self.image is None or upto < self.at:
            self._reset()
        for op in self.rec.ops[self.at:upto]:
            if op[0] in "wr":
                self.image[op[1]:op[1] + len(op[2])] = op[2]
        self.at = max(self.at, upto)
        return self.image


class OverlayDevice:
    """A crash state as a block device: reads see ``base`` with the state's writes over it.
    Writes (fsck's repairs) go to the overlay too, so the base is never changed."""
    logical_block_size = 512
    dax = False

    def __init__(self, base, nr_bytes: int, *, read_only: bool = True, name: str = "crash"):
        self.base = base
        self.nr_sectors = nr_bytes // 512
        self.blocks: dict[int, bytearray] = {}
        self.read_only = read_only
        self.name = name

    def _block(self, b: int) -> bytearray:
        blk = self.blocks.get(b)
        if blk is None:
            blk = self.blocks[b] = bytearray(self.base[b * BLOCK:(b + 1) * BLOCK])
        return blk

    def put(self, offset: int, data) -> None:
        end = offset + len(data)
        pos = offset
        while pos < end:
            b = pos // BLOCK
            n = min(end, (b + 1) * BLOCK) - pos
            self._block(b)[pos - b * BLOCK:pos - b * BLOCK + n] = data[pos - offset:pos - offset + n]
            pos += n

    def writable_copy(self) -> "OverlayDevice":
        dev = OverlayDevice(self.base, self.nr_sectors * 512, read_only=False, name=self.name)
        dev.blocks = {b: bytearray(v) for b, v in self.blocks.items()}
        return dev

    def image(self) -> bytearray:
        img = bytearray(self.base[:self.nr_sectors * 512])
        for b, v in self.blocks.items():
            img[b * BLOCK:(b + 1) * BLOCK] = v
        return img

    async def read(self, sector: int, nbytes: int) -> bytes:
        a = sector * 512
        if a < 0 or a + nbytes > self.nr_sectors * 512:
            import errno
            raise OSError(errno.EIO, f"{self.name}: I/O beyond end of device")
        b = a // BLOCK
        if a + nbytes <= (b + 1) * BLOCK:          # the common case: within one block
            blk = self.blocks.get(b)
            if blk is None:
                return bytes(self.base[a:a + nbytes])
            return bytes(blk[a - b * BLOCK:a - b * BLOCK + nbytes])
        out = bytearray(self.base[a:a + nbytes])
        for blk_no in range(b, (a + nbytes - 1) // BLOCK + 1):
            blk = self.blocks.get(blk_no)
            if blk is not None:
                lo, hi = max(a, blk_no * BLOCK), min(a + nbytes, (blk_no + 1) * BLOCK)
                out[lo - a:hi - a] = blk[lo - blk_no * BLOCK:hi - blk_no * BLOCK]
        return bytes(out)

    async def write(self, sector: int, data, *, fua: bool = False, preflush: bool = False):
        if self.read_only:
            import errno
            raise OSError(errno.EROFS, f"{self.name}: device is read-only")
        self.put(sector * 512, data)

    async def flush(self) -> None:
        pass

    async def discard(self, sector: int, nr_sectors: int) -> None:
        await self.write(sector, bytes(nr_sectors * 512))

    def close(self) -> None:
        pass


def state_device(rec: Recording, state: State, builder: BaseBuilder) -> OverlayDevice:
    """The device as ``state`` leaves it (the whole recorded device, COW store included)."""
    base = builder.base(state.point)
    dev = OverlayDevice(base, rec.size)
    if rec.model == "log":
        lf = -1
        for j in range(state.point - 1, -1, -1):
            if rec.ops[j][0] == "f":
                lf = j
                break
        chosen = set(state.chosen)
        for j in range(lf + 1, state.point + 1):
            op = rec.ops[j]
            if op[0] == "w" and (op[3] or j in chosen):
                dev.put(op[1], op[2])
        return dev
    if state.point < len(rec.ops):
        _, offset, data = rec.ops[state.point]
        for line, mask in state.chosen:
            w = 0
            while w < 8:                     # each run of kept words in one piece
                if not mask & (1 << w):
                    w += 1
                    continue
                first = w
                while w < 8 and mask & (1 << w):
                    w += 1
                lo = max(line + first * WORD, offset)
                hi = min(line + w * WORD, offset + len(data))
                if lo < hi:
                    dev.put(lo, data[lo - offset:hi - offset])
    return dev
