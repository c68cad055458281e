"""Copy-on-write between an origin and its snapshots (dm-snap's origin side).

Snapshots register under the device they are snapshots *of* (the origin's lower device,
``vg0-lv0-real`` in LVM's stacks), as dm-snap keys its ``_origins`` table by bdev. Before a
write to an origin chunk may proceed, every valid, active snapshot of that device gets a
copy of the chunk; then every lease that still reads the old chunk through the origin (a
snapshot's read mapping) is revoked, and only after the holders acknowledged is the write
mapping handed out. A write over many chunks copies them all in one batch: one request,
one copy per run of chunks, one exception-store commit, one revocation. One lock per origin serialises the copies, so no writer can ever be
handed a mapping of a chunk whose copy is still on its way.
"""
import logging

import trio

log = logging.getLogger(__name__)

# How far a write region may grow around the chunk asked for, over chunks every snapshot
# already holds: forward far (a rewrite then costs one round trip per 64 MiB), backward a
# little (enough for the new lease to replace the one before it; a long scan back on every
# copy-on-write dominated the profile).
MAX_AHEAD_CHUNKS = 16384
MAX_BEHIND_CHUNKS = 64
# The most one origin write copies in one go (4 MiB, at least one chunk): a FUSE write or a
# DAX window is at most 2 MiB, so a batch covers it, while the daemon, which copies
# synchronously, never stalls its other clients for long.
BATCH_SECTORS = 8192


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

    async def origin_write(self, dev, sector: int, limit: int, nr: int = 1) -> tuple[int, int]:
        """Copy the chunks of ``dev`` under a write of [sector, sector+nr) to every snapshot
        that lacks them: one batch per snapshot (one copy per run, one metadata commit).

        Returns the region [start, end) of ``dev`` around ``sector`` that may now be
        written freely (every snapshot has its copy), clipped to [0, limit). It covers the
        whole write unless the write is longer than a batch (BATCH_SECTORS): the writer
        then asks again where the region ends.
        """
        async with self.lock(dev):
            snaps = self._active(dev)
            if not snaps:
                return 0, limit
            step = min(s.chunk_size for s in snaps)
            start = sector - sector % step
            end = min(sector + max(nr, 1), limit, start + max(step, BATCH_SECTORS))
            lo = hi = None
            for snap in snaps:
                span = snap.copy_origin_chunks(sector, end)
                if span is not None:
                    lo = span[0] if lo is None else min(lo, span[0])
                    hi = span[1] if hi is None else max(hi, span[1])
            # A snapshot may have been invalidated by the copy (its store was full): its
            # mappings go before this write may proceed, so nobody reads it afterwards.
            for snap in snaps:
                if not snap.valid:
                    await snap.revoke_all("snapshot invalidated")
            if lo is not None:
                # The snapshots' read mappings of those chunks still point at the origin:
                # take them back. Mappings of the origin itself stay right (they read what
                # the origin holds) and are left alone, so a writer keeps its read leases.
                mds = [s.md for s in self.snapshots_of(dev)]
                await self.dm.revoke_reaching(dev, lo, hi, "copy-on-write", through=mds)
            snaps = self._active(dev)
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
    def _writable_region(snaps, start: int, step: int, limit: int) -> tuple[int, int]:
        """The run of chunks around the one at ``start`` (held by every snapshot) that every
        snapshot holds, at most MAX_BEHIND_CHUNKS back and MAX_AHEAD_CHUNKS on."""
        lo = max(0, start - MAX_BEHIND_CHUNKS * step)
        hi = min(limit, start + (MAX_AHEAD_CHUNKS + 1) * step)
        for s in snaps:
            held, shift = s.exceptions, s.shift
            first = start >> shift
            c = first + 1
            stop = -(-hi >> shift)
            while c < stop and c in held:
                c += 1
            hi = min(hi, c << shift)
            c = first
            floor = lo >> shift
            while c > floor and (c - 1) in held:
                c -= 1
            lo = max(lo, c << shift)
        return lo, max(hi, min(start + step, limit))
