"""Resolution of a device range down to the media: the data structure leases are made of.

A Region is a stretch of a device's sectors together with the segments that say, for each
part of it, where it lives: ``map`` (a base device and the sector there), ``poison`` (a
media error: loads fail), ``zero`` (reads give zeroes, writes are dropped) or ``error``
(every I/O fails). Targets answer with one remap of a range onto a lower device; the core
resolves the lower device in turn, intersects, and shifts the answer back up, so a stack of
any depth ends as segments on base devices.
"""
from dataclasses import dataclass, field


@dataclass(slots=True)
class Seg:
    start: int              # first sector, in the coordinates of the device being resolved
    end: int
    kind: str               # map, poison, zero, error, bio (dmemud carries out the I/O)
    base: object = None     # the base device (map, poison)
    base_sector: int = 0    # its sector at ``start``

    def shifted(self, delta: int, lo: int, hi: int) -> "Seg | None":
        """This segment clipped to [lo, hi) and moved by ``delta`` sectors."""
        s, e = max(self.start, lo), min(self.end, hi)
        if s >= e:
            return None
        return Seg(s + delta, e + delta, self.kind, self.base, self.base_sector + (s - self.start))


@dataclass(slots=True)
class Region:
    start: int
    end: int
    segs: list
    path: list = field(default_factory=list)   # the mapped devices resolution went through

    def backing(self) -> list:
        """The base ranges this region reaches: what a revocation matches leases on."""
        return [(s.base, s.base_sector, s.base_sector + (s.end - s.start))
                for s in self.segs if s.base is not None]


@dataclass(slots=True)
class Remap:
    """A target's answer: target-relative sectors [start, start+length) are ``kind``; for
    ``remap`` they map to ``lower`` at ``lower_start`` onwards."""
    start: int
    length: int
    kind: str = "remap"     # remap, zero, error, bio
    lower: object = None
    lower_start: int = 0


def lift(lower: Region, remap: Remap, begin: int, sector: int) -> Region:
    """Bring the lower device's region up through a remap of the target starting at
    ``begin`` (device sector of the target's first sector)."""
    lo = max(lower.start, remap.lower_start)
    hi = min(lower.end, remap.lower_start + remap.length)
    delta = begin + remap.start - remap.lower_start
    segs = [x for x in (s.shifted(delta, lo, hi) for s in lower.segs) if x is not None]
    return Region(lo + delta, hi + delta, segs, list(lower.path))


def flat(remap: Remap, begin: int) -> Region:
    """A zero or error stretch."""
    s = begin + remap.start
    return Region(s, s + remap.length, [Seg(s, s + remap.length, remap.kind)])
