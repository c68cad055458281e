"""The volume group model: PVs, LVs and their segments, extent allocation, names.

A VG is what its text metadata says (metadata.py) plus, for each PV, the device it was
found on in this scan (devno, DAX capability), which the metadata only hints at. Snapshots
are modelled as LVM2 does: the user's snapshot LV ("snap0") holds the COW extents as an
ordinary striped segment, and a hidden LV "snapshotN" with one segment of type "snapshot"
ties origin and COW together (origin = "lv0", cow_store = "snap0", chunk_size).
"""
import os
import re
import secrets
import socket
import string
import time
from dataclasses import dataclass, field

from .errors import LvmError

_UUID_CHARS = string.ascii_letters + string.digits
_NAME_RE = re.compile(r"^[a-zA-Z0-9+_.][a-zA-Z0-9+_.-]*$")
# Prefixes and suffixes lvm2 keeps for its own hidden LVs (lib/misc/lvm-string.c).
_RESERVED_PREFIXES = ("snapshot", "pvmove")
_RESERVED_PARTS = ("_cdata", "_cmeta", "_corig", "_mlog", "_mimage", "_pmspare", "_rimage",
                   "_rmeta", "_tdata", "_tmeta", "_vorigin", "_vdata")
NAME_LEN = 127


def new_uuid() -> str:
    raw = "".join(secrets.choice(_UUID_CHARS) for _ in range(32))
    parts, pos = [], 0
    for n in (6, 4, 4, 4, 4, 4, 6):
        parts.append(raw[pos:pos + n])
        pos += n
    return "-".join(parts)


def check_name(name: str, what: str) -> None:
    """LVM's validate_name: [a-zA-Z0-9.-_+], no leading '-', not '.' or '..'."""
    if not name:
        raise LvmError(f"{what} name must not be empty.", 3)
    if len(name) > NAME_LEN:
        raise LvmError(f'Name "{name}" is too long.', 3)
    if name in (".", "..") or not _NAME_RE.match(name):
        if name.startswith("-"):
            raise LvmError(f'Name "{name}" is invalid: it may not start with a hyphen.', 3)
        raise LvmError(f'Name "{name}" contains invalid character, valid set contains: '
                       f'[a-zA-Z0-9.-_+].', 3)


def check_lv_name(name: str) -> None:
    check_name(name, "Logical volume")
    for p in _RESERVED_PREFIXES:
        if name.startswith(p):
            raise LvmError(f'Names starting "{p}" are reserved. Please choose a different LV name.', 3)
    for p in _RESERVED_PARTS:
        if p in name:
            raise LvmError(f'Names including "{p}" are reserved. Please choose a different LV name.', 3)


@dataclass
class PV:
    """One physical volume of a VG (section ``pvN`` of physical_volumes).

    id        the PV's uuid, dashed; the label on the device holds it without dashes
    device    the device it was last seen on: a hint only, the label decides
    dev_size  sectors of the device
    pe_start  sector of extent 0 (2048: 1 MiB)
    pe_count  whole extents between pe_start and the end of the device
    """
    key: str
    id: str
    device: str
    dev_size: int
    pe_start: int
    pe_count: int
    status: list = field(default_factory=lambda: ["ALLOCATABLE"])
    # Found in this scan, not stored:
    devno: str | None = None
    dax: bool = False


@dataclass
class Segment:
    """segmentN of an LV: extents [start_extent, start_extent + extent_count) of the LV.

    striped (one stripe here, i.e. linear): stripes = [(pv key, first PE)]
    snapshot: origin and cow_store name LVs of the VG; chunk_size in sectors; merging
              when lvconvert --merge started it back into the origin (the metadata then
              says merging_store instead of cow_store, as lvm2 writes it)
    """
    start_extent: int
    extent_count: int
    type: str = "striped"
    stripes: list = field(default_factory=list)
    chunk_size: int = 0
    origin: str = ""
    cow_store: str = ""
    merging: bool = False


@dataclass
class LV:
    name: str
    id: str
    status: list = field(default_factory=lambda: ["READ", "WRITE", "VISIBLE"])
    segments: list = field(default_factory=list)
    creation_time: int = 0
    creation_host: str = ""

    @property
    def extents(self) -> int:
        return sum(s.extent_count for s in self.segments)

    @property
    def visible(self) -> bool:
        return "VISIBLE" in self.status


@dataclass
class VG:
    name: str
    id: str
    extent_size: int                     # sectors
    seqno: int = 0
    pvs: dict = field(default_factory=dict)     # key -> PV, in metadata order
    lvs: dict = field(default_factory=dict)     # name -> LV, in metadata order
    status: list = field(default_factory=lambda: ["RESIZEABLE", "READ", "WRITE"])

    # -- snapshots -------------------------------------------------------------------------

    def snapshot_segments(self):
        for lv in self.lvs.values():
            for s in lv.segments:
                if s.type == "snapshot":
                    yield lv, s

    def snapshots_of(self, origin: str) -> list[str]:
        """Names of the COW LVs (what users call the snapshots) of ``origin``."""
        return [s.cow_store for _, s in self.snapshot_segments() if s.origin == origin]

    def snapshot_of_cow(self, cow: str):
        """(hidden snapshotN LV, its segment) for a COW LV, or None."""
        return next(((lv, s) for lv, s in self.snapshot_segments() if s.cow_store == cow), None)

    def is_origin(self, name: str) -> bool:
        return bool(self.snapshots_of(name))

    def is_cow(self, name: str) -> bool:
        return self.snapshot_of_cow(name) is not None

    def merging_into(self, origin: str) -> str | None:
        """The COW LV being merged into ``origin``, if a merge was started."""
        return next((s.cow_store for _, s in self.snapshot_segments()
                     if s.origin == origin and s.merging), None)

    def is_merging_cow(self, name: str) -> bool:
        found = self.snapshot_of_cow(name)
        return bool(found and found[1].merging)

    def missing_pvs(self) -> list[PV]:
        """PVs of the metadata whose label no scanned device carries."""
        return [pv for pv in self.pvs.values() if pv.devno is None]

    def user_lvs(self) -> list[LV]:
        return [lv for lv in self.lvs.values() if lv.visible]

    def next_snapshot_name(self) -> str:
        i = 0
        while f"snapshot{i}" in self.lvs:
            i += 1
        return f"snapshot{i}"

    def next_lv_name(self) -> str:
        i = 0
        while f"lvol{i}" in self.lvs:
            i += 1
        return f"lvol{i}"

    # -- extents ---------------------------------------------------------------------------

    def extent_bytes(self) -> int:
        return self.extent_size * 512

    def used_map(self) -> dict[str, list[tuple[int, int]]]:
        """Per PV, the (first PE, count) areas LVs hold."""
        used = {k: [] for k in self.pvs}
        for lv in self.lvs.values():
            for s in lv.segments:
                if s.type == "striped":
                    for pv, pe in s.stripes:
                        used.setdefault(pv, []).append((pe, s.extent_count))
        return used

    def free_areas(self, pvkey: str) -> list[tuple[int, int]]:
        pv = self.pvs[pvkey]
        taken = sorted(self.used_map().get(pvkey, []))
        out, pos = [], 0
        for pe, n in taken:
            if pe > pos:
                out.append((pos, pe - pos))
            pos = max(pos, pe + n)
        if pos < pv.pe_count:
            out.append((pos, pv.pe_count - pos))
        return out

    def free_extents(self, pvkeys=None, ranges=None) -> int:
        keys = self.pvs if pvkeys is None else pvkeys
        return sum(n for k in keys if "ALLOCATABLE" in self.pvs[k].status
                   for _, n in self.free_areas_in(k, ranges))

    def free_areas_in(self, pvkey: str, ranges=None) -> list[tuple[int, int]]:
        """Free areas of a PV cut to ``ranges`` ({pv key: [(first PE, count)]}, the PE
        ranges a command line named), or all of them when ranges is None."""
        free = self.free_areas(pvkey)
        if ranges is None:
            return free
        out = []
        for s, n in free:
            for rs, rn in sorted(ranges.get(pvkey, [])):
                a, b = max(s, rs), min(s + n, rs + rn)
                if a < b and not (out and out[-1][0] + out[-1][1] >= b):
                    if out and out[-1][0] + out[-1][1] >= a:      # overlapping ranges given
                        a = out.pop()[0]
                    out.append((a, b - a))
        return out

    def total_extents(self) -> int:
        return sum(pv.pe_count for pv in self.pvs.values())

    def allocate(self, count: int, pvkeys: list[str], after=None,
                 ranges=None) -> list[tuple[str, int, int]]:
        """Areas (pv, first PE, n) for ``count`` extents on ``pvkeys``, in order.

        Like LVM's "normal" policy in its simplest form: continue right after ``after``
        (pv, pe) when that space is free, else prefer one area that holds everything, else
        fill areas in PV order. ``ranges`` limits it to the PE ranges a command line named.
        """
        avail = self.free_extents(pvkeys, ranges)
        if avail < count:
            raise LvmError(f"Insufficient free space: {count} extents needed, but only "
                           f"{avail} available")
        areas = {k: self.free_areas_in(k, ranges) for k in pvkeys
                 if "ALLOCATABLE" in self.pvs[k].status}
        out, need = [], count
        if after is not None:
            pv, pe = after
            for start, n in areas.get(pv, []):
                if start == pe:
                    take = min(n, need)
                    out.append((pv, start, take))
                    need -= take
                    areas[pv] = [(s, m) if s != start else (s + take, m - take)
                                 for s, m in areas[pv] if s != start or m > take]
                    break
        if need:
            whole = next(((k, s) for k in areas for s, n in areas[k] if n >= need), None)
            if whole:
                out.append((whole[0], whole[1], need))
                need = 0
        for k in areas:
            for s, n in areas[k]:
                if not need:
                    break
                take = min(n, need)
                out.append((k, s, take))
                need -= take
        return out

    def lv_pvs(self, lv: LV) -> list[str]:
        keys = []
        for s in lv.segments:
            for pv, _ in s.stripes:
                if pv not in keys:
                    keys.append(pv)
        return keys

    def add_areas(self, lv: LV, areas) -> None:
        """Append allocated areas to an LV, merging with its last segment where contiguous."""
        for pv, pe, n in areas:
            last = lv.segments[-1] if lv.segments else None
            if (last is not None and last.type == "striped" and last.stripes[0][0] == pv
                    and last.stripes[0][1] + last.extent_count == pe):
                last.extent_count += n
            else:
                start = lv.extents
                lv.segments.append(Segment(start, n, "striped", [(pv, pe)]))

    # -- text metadata ---------------------------------------------------------------------

    def to_tree(self) -> dict:
        pvs = {}
        for pv in self.pvs.values():
            pvs[pv.key] = {"id": pv.id, "device": pv.device, "status": pv.status, "flags": [],
                           "dev_size": pv.dev_size, "pe_start": pv.pe_start, "pe_count": pv.pe_count}
        lvs = {}
        for lv in self.lvs.values():
            d = {"id": lv.id, "status": lv.status, "flags": [],
                 "creation_time": lv.creation_time, "creation_host": lv.creation_host,
                 "segment_count": len(lv.segments)}
            for i, s in enumerate(lv.segments, 1):
                seg = {"start_extent": s.start_extent, "extent_count": s.extent_count, "type": s.type}
                if s.type == "snapshot":
                    seg.update(chunk_size=s.chunk_size, origin=s.origin)
                    seg["merging_store" if s.merging else "cow_store"] = s.cow_store
                else:
                    seg.update(stripe_count=len(s.stripes),
                               stripes=[x for pv, pe in s.stripes for x in (pv, pe)])
                d[f"segment{i}"] = seg
            lvs[lv.name] = d
        vg = {"id": self.id, "seqno": self.seqno, "format": "lvm2", "status": self.status,
              "flags": [], "extent_size": self.extent_size, "max_lv": 0, "max_pv": 0,
              "metadata_copies": 0, "physical_volumes": pvs}
        if lvs:
            vg["logical_volumes"] = lvs
        return {self.name: vg}

    def export(self) -> dict:
        """The tree of the on-disk copy: the VG first, then LVM's trailer settings."""
        tree = self.to_tree()
        tree.update({"contents": "Text Format Volume Group", "version": 1, "description": "",
                     "creation_host": socket.gethostname(), "creation_time": int(time.time())})
        return tree

    @classmethod
    def from_tree(cls, tree: dict) -> "VG":
        names = [k for k, v in tree.items() if isinstance(v, dict)]
        if len(names) != 1:
            raise LvmError("Metadata holds no volume group")
        name = names[0]
        d = tree[name]
        vg = cls(name, d["id"], int(d["extent_size"]), int(d.get("seqno", 0)),
                 status=list(d.get("status", [])))
        for key, p in d.get("physical_volumes", {}).items():
            vg.pvs[key] = PV(key, p["id"], p.get("device", ""), int(p.get("dev_size", 0)),
                             int(p["pe_start"]), int(p["pe_count"]), list(p.get("status", [])))
        for lname, l in d.get("logical_volumes", {}).items():
            lv = LV(lname, l["id"], list(l.get("status", [])), [],
                    int(l.get("creation_time", 0)), str(l.get("creation_host", "")))
            for i in range(1, int(l.get("segment_count", 0)) + 1):
                s = l[f"segment{i}"]
                seg = Segment(int(s["start_extent"]), int(s["extent_count"]), s["type"])
                if seg.type == "snapshot":
                    seg.chunk_size = int(s["chunk_size"])
                    seg.origin = s["origin"]
                    seg.cow_store = s.get("cow_store") or s.get("merging_store", "")
                    seg.merging = "merging_store" in s
                else:
                    st = s.get("stripes", [])
                    seg.stripes = [(st[j], int(st[j + 1])) for j in range(0, len(st), 2)]
                lv.segments.append(seg)
            vg.lvs[lname] = lv
        return vg


def host() -> str:
    return socket.gethostname() or os.uname().nodename
