"""Copy-on-write between an origin and its snapshots (dm-snap's origin side).

Snapshots register under the device they are snapshots *of* (the origin's lower device,
``vg0-lv0-real`` in LVM's stacks), as dm-snap keys its ``_origins`` table by bdev. Before a
write to an origin chunk may proceed, every valid, active snapshot of that device gets a
copy of the chunk; then every lease that still reads the old chunk through the origin (a
snapshot's read mapping) is revoked, and only after the holders acknowledged is the write
mapping handed out. One lock per origin serialises the copies, so no writer can ever be
handed a mapping of a chunk whose copy is still on its way.
"""
import logging

import trio

log = logging.getLogger(__name__)

# How far a write region may grow around the chunk asked for, over chunks every snapshot
# already holds: forward far (a rewrite then costs one round trip per 4 MiB), backward a
# little (enough for the new lease to replace the one before it; a long scan back on every
# copy-on-write dominated the profile).
MAX_AHEAD_CHUNKS = 1024
MAX_BEHIND_CHUNKS = 64


class Origins:
    def __init__(self, dm):
        self.dm = dm
        self._snapshots: dict[int, list] = {}   # id(origin device) -> [SnapshotTarget]
        self._locks: dict[int, trio.Lock] = {}

    def register(self, snap) -> None:
        self._snapshots.setdefault(id(snap.origin), []).append(snap)

    def unregister(self, snap) -> None:
        lst = self._snapshots.get(id(snap.origin), [])
        if snap in lst:
            lst.remove(snap)
        if not lst:
            self._snapshots.pop(id(snap.origin), None)

    def snapshots_of(self, dev) -> list:
        return list(self._snapshots.get(id(dev), []))

    def sharing_cow(self, origin, cow) -> list:
        """__find_snapshots_sharing_cow: the snapshots of ``origin`` on the COW device ``cow``."""
        return [s for s in self.snapshots_of(origin) if s.cow is cow]

    def lock(self, dev) -> trio.Lock:
        return self._locks.setdefault(id(dev), trio.Lock())

    def _active(self, dev) -> list:
        return [s for s in self.snapshots_of(dev) if s.active and s.valid]

    async def origin_write(self, dev, sector: int, limit: int) -> tuple[int, int]:
        """Copy the chunk holding ``sector`` of ``dev`` to every snapshot that lacks it.

        Returns the region [start, end) of ``dev`` around ``sector`` that may now be
        written freely (every snapshot has its copy), clipped to [0, limit).
        """
        async with self.lock(dev):
            snaps = self._active(dev)
            if not snaps:
                return 0, limit
            step = min(s.chunk_size for s in snaps)
            start = sector - sector % step
            copied = False
            for snap in snaps:
                if snap.copy_origin_chunk(sector):
                    copied = True
            # A snapshot may have been invalidated by the copy (its store was full): its
            # mappings go before this write may proceed, so nobody reads it afterwards.
            for snap in snaps:
                if not snap.valid:
                    await snap.revoke_all("snapshot invalidated")
            snaps = self._active(dev)
            if copied:
                lo, hi = self._chunk_span(snaps, sector, start, step)
                await self.dm.revoke_reaching(dev, lo, hi, "copy-on-write")
            if not snaps:
                return 0, limit
            return self._writable_region(snaps, start, step, limit)

    def held_region(self, dev, sector: int, limit: int) -> tuple[int, int] | None:
        """The region around ``sector`` that every active snapshot already holds, or None
        if a copy is still to be made."""
        snaps = self._active(dev)
        if not snaps:
            return 0, limit
        step = min(s.chunk_size for s in snaps)
        start = sector - sector % step
        if not all(s.has_exception(sector // s.chunk_size) for s in snaps):
            return None
        return self._writable_region(snaps, start, step, limit)

    @staticmethod
    def _chunk_span(snaps, sector, start, step):
        lo, hi = start, start + step
        for s in snaps:
            c = sector // s.chunk_size * s.chunk_size
            lo, hi = min(lo, c), max(hi, c + s.chunk_size)
        return lo, hi

    @staticmethod
    def _writable_region(snaps, start: int, step: int, limit: int) -> tuple[int, int]:
        def held(x):
            return all(s.has_exception(x // s.chunk_size) for s in snaps)
        lo, hi = start, min(start + step, limit)
        n = 0
        while hi < limit and n < MAX_AHEAD_CHUNKS and held(hi):
            hi = min(hi + step, limit)
            n += 1
        n = 0
        while lo > 0 and n < MAX_BEHIND_CHUNKS and held(lo - step):
            lo -= step
            n += 1
        return lo, hi
