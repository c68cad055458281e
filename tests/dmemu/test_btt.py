"""Sector mode: a BTT makes each sector write atomic across a power failure.

The proof tears writes the way pmem tears them: the namespace is adr, every bio write is
traced, and a crash image is rebuilt at every fence with the write in flight at that moment
kept in part (random 64-byte lines of it, each torn at 8-byte words). On a BTT every sector
then reads as one whole version, the last one committed or the one in flight; on a raw
namespace the same crash images show sectors that mix two versions.
"""
import struct

import pytest

from dmemu import client
from dmemu.btt import MAP_SET, Btt, BttError, NFREE
from tests.helpers import ok, tool

SECTORS = 6             # BTT sectors written over and over
ROUNDS = 3


class ImageMedia:
    """A crash image as the BTT's media: what dmemud would open at the next start."""

    def __init__(self, data: bytes):
        self.b = bytearray(data)

    def read(self, off, n):
        return bytes(self.b[off:off + n])

    def write(self, off, data, fua=False):
        self.b[off:off + len(data)] = data


def pattern(lba: int, version: int, lbasize: int) -> bytes:
    return struct.pack("<II", lba, version) * (lbasize // 8)


def test_format_write_reopen_and_refusals():
    m = ImageMedia(bytes(1 << 20))
    btt = Btt.format(m, 1 << 20, 4096)
    btt.write(0, pattern(0, 1, 4096))
    btt.write(9, b"x" * 512)                 # part of BTT sector 1: the rest stays zero
    again = Btt.open(m, 1 << 20)
    assert again.read(0, 4096) == pattern(0, 1, 4096)
    assert again.read(8, 4096) == bytes(512) + b"x" * 512 + bytes(3072)
    with pytest.raises(BttError, match="access beyond end"):
        again.read(again.nr_sectors, 512)
    with pytest.raises(BttError, match="no BTT info block"):
        Btt.open(ImageMedia(bytes(1 << 20)), 1 << 20)
    m.b[20] ^= 1
    with pytest.raises(BttError, match="checksum"):
        Btt.open(m, 1 << 20)
    with pytest.raises(BttError, match="cannot hold a BTT"):
        Btt.format(ImageMedia(bytes(8192)), 8192, 512)


def test_a_damaged_map_entry_is_refused_at_open():
    """A map entry naming another sector's block, a spare, or a block past the data area
    would send writes over live data or the BTT's own metadata: refused, naming why."""
    m = ImageMedia(bytes(1 << 20))
    btt = Btt.format(m, 1 << 20, 4096)
    btt.write(0, pattern(0, 1, 4096))
    good = bytes(m.b)
    for entry, why in ((1 | MAP_SET, "overlap"), (btt.free[0] | MAP_SET, "overlap"),
                       ((btt.internal_nlba + 5) | MAP_SET, "past the data area")):
        m.b[:] = good
        struct.pack_into("<I", m.b, btt.map_off + 3 * 4, entry)     # sector 3
        with pytest.raises(BttError, match=why):
            Btt.open(m, 1 << 20)
    m.b[:] = good
    assert Btt.open(m, 1 << 20).read(0, 4096) == pattern(0, 1, 4096)


async def _write_rounds(name: str, lbasize: int) -> list[tuple[int, int]]:
    """Version 0 of every sector before the trace, then ROUNDS versions in an interleaved
    order under it; returns the traced writes, in order."""
    per = lbasize // 512
    async with client.open_device(name) as dev:
        for lba in range(SECTORS):
            await dev.write(lba * per, pattern(lba, 0, lbasize))
    assert "trace started" in ok("dmemu", "trace", "start", name)
    order = [(lba, v) for v in range(1, ROUNDS + 1) for lba in
             (range(SECTORS) if v % 2 else reversed(range(SECTORS)))]
    async with client.open_device(name) as dev:
        for lba, v in order:
            await dev.write(lba * per, pattern(lba, v, lbasize))
    ok("dmemu", "trace", "stop", name)
    return order


def _crash_images(name, nfences, tmp_path, seeds=range(3)):
    for k in range(nfences + 1):
        for seed in seeds:
            out = tmp_path / f"{name}-{k}-{seed}"
            # a seed per image: the in-flight record's first line takes the first draws
            ok("dmemu", "crash-image", name, "--fence", str(k), "-o", str(out),
               "--unflushed", "0.6", "--tear", "--in-flight", "1", "--seed", str(100 * k + seed))
            yield k, out.read_bytes()
            out.unlink()


@pytest.mark.parametrize("lbasize", [512, 4096])
async def test_a_torn_write_leaves_the_old_or_the_new_sector(dmemu_root, tmp_path, lbasize):
    ok("ndctl", "create-namespace", "-s", "4M", "--persistence", "adr", "-m", "sector",
       "-l", str(lbasize))
    order = await _write_rounds("pmem0s", lbasize)
    nfences = int(ok("dmemu", "trace", "status", "pmem0s").split(": ")[1].split()[0])
    # a BTT write is four durable steps: data into a free block, the two halves of the
    # lane's log entry (the second, with the sequence number, commits), the map entry
    assert nfences == 4 * len(order)
    mixed = 0
    for k, img in _crash_images("pmem0s", nfences, tmp_path):
        btt = Btt.open(ImageMedia(img), 4 << 20)      # recovery, as at the next start
        done = [i for i in range(len(order)) if 4 * i + 3 <= k]
        flying = [i for i in range(len(order)) if 4 * i <= k < 4 * i + 3]
        for lba in range(SECTORS):
            committed = max((order[i][1] for i in done if order[i][0] == lba), default=0)
            maybe = {order[i][1] for i in flying if order[i][0] == lba}
            got = btt.read(lba * lbasize // 512, lbasize)
            allowed = {committed} | maybe
            assert any(got == pattern(lba, v, lbasize) for v in allowed), \
                f"fence {k}: sector {lba} is not one whole version of {sorted(allowed)}"
            mixed += got != pattern(lba, committed, lbasize)
    assert mixed, "no crash image caught a write in flight: the test would prove nothing"
    # the lanes' spare blocks stay distinct from every mapped block after all of it
    assert len(set(btt.free)) == NFREE


async def test_a_raw_namespace_tears_the_same_writes(dmemu_root, tmp_path):
    """The contrast that shows the check above can fail: without a BTT the write in flight
    leaves sectors that are part old, part new."""
    ok("ndctl", "create-namespace", "-s", "4M", "--persistence", "adr", "-m", "raw")
    order = await _write_rounds("pmem0", 4096)
    nfences = int(ok("dmemu", "trace", "status", "pmem0").split(": ")[1].split()[0])
    assert nfences == len(order)
    torn = 0
    for k, img in _crash_images("pmem0", nfences, tmp_path, seeds=range(2)):
        for lba in range(SECTORS):
            got = img[lba * 4096:(lba + 1) * 4096]
            torn += not any(got == pattern(lba, v, 4096) for v in range(ROUNDS + 1))
    assert torn


def test_sector_mode_refusals_change_nothing(dmemu_root):
    r = tool("ndctl", "create-namespace", "-s", "4M", "-l", "4096")
    assert r.returncode != 0 and "only sector mode (a BTT) takes 4096" in r.stderr
    r = tool("ndctl", "create-namespace", "-s", "4M", "-m", "sector", "-l", "1024")
    assert r.returncode != 0 and "sector size 1024 is not supported for mode sector" in r.stderr
    assert tool("ndctl", "list").stdout.strip() in ("", "[]")


async def test_damaged_btt_metadata_fails_io_with_the_way_out_not_dmemud(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "4M", "-m", "sector")
    ok("dmemud", "stop")
    (img,) = (dmemu_root / "images").glob("*.img")
    with open(img, "r+b") as f:             # the info block's geometry, under its checksum
        f.seek(24)
        f.write(b"\xff\xff")
    with pytest.raises(OSError, match=r"pmem0s: the BTT info block fails its checksum: "
                                      r"reconfigure the namespace .*-m sector"):
        async with client.open_device("pmem0s") as dev:
            await dev.read(0, 512)
    assert "pmem0s" in ok("dmemu", "lsblk")                # dmemud serves on
    ok("ndctl", "create-namespace", "-f", "-e", "namespace0.0", "-m", "sector")
    async with client.open_device("pmem0s") as dev:
        await dev.write(0, b"y" * 512)
        assert await dev.read(0, 512) == b"y" * 512
