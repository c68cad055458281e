"""The option values several lvm commands share, checked and converted as lvm2 does: -s
extent size, -c chunk size, -L/-l sizes (with lvm2's rounding messages) and PV lists.
"""
import re

from ..errors import EINVALID_CMD_LINE, LvmError
from ..store import Store
from ..units import SECTOR, long_size, parse_extents, parse_size
from ..vg import LV, VG
from .common import say

DEFAULT_EXTENT = 8192           # sectors: 4 MiB, lvm2's DEFAULT_EXTENT_SIZE
DEFAULT_CHUNK = 8               # sectors: 4 KiB, lvm2's DEFAULT_SNAPSHOT_CHUNK


def extent_size(text: str | None) -> int:
    if text is None:
        return DEFAULT_EXTENT
    _, nbytes = parse_size(text, "m", option="-s")
    sectors = nbytes // SECTOR
    if nbytes % SECTOR or sectors < 2 or sectors & (sectors - 1):
        raise LvmError("Physical extent size must be a power of 2 of at least 1.00 KiB.",
                       EINVALID_CMD_LINE)
    return sectors


def chunk_size(text: str | None) -> int:
    if text is None:
        return DEFAULT_CHUNK
    _, nbytes = parse_size(text, "k", option="--chunksize")
    sectors = nbytes // SECTOR
    if nbytes % SECTOR or sectors < 8 or sectors > 1024 or sectors & (sectors - 1):
        raise LvmError("Chunk size must be a power of 2 in the range 4K to 512K.",
                       EINVALID_CMD_LINE)
    return sectors


def wanted_extents(vg: VG, args, *, current: int = 0, origin: LV | None = None,
                    pvkeys=None, resize: bool = False, signs: str = "+",
                   ranges=None) -> int:
    """Extents for -L/-l, relative to ``current`` when signed; rounding as lvm2.

    ``signs`` are the signs the command's option type takes (lvcreate and lvextend '+',
    lvreduce '-', lvresize both), as lvm2's PSizeMB / NSizeMB / SSizeMB argument types."""
    size, extents = getattr(args, "size", None), getattr(args, "extents", None)
    if size is not None and extents is not None:
        raise LvmError("Please specify either size or extents (not both).", EINVALID_CMD_LINE)
    if size is None and extents is None:
        raise LvmError("Please specify either size or extents.", EINVALID_CMD_LINE)
    if size is not None:
        sign, nbytes = parse_size(size, "m", option="--size")
        if sign and sign not in signs:
            raise LvmError(f"Invalid argument for --size: {size}", EINVALID_CMD_LINE)
        sectors = -(-nbytes // SECTOR)
        n = -(-sectors // vg.extent_size)
        if n * vg.extent_size != sectors:
            # lvcreate and lvresize word this differently in lvm2 (lv_manip.c, lvresize).
            if resize:
                say(f"Rounding size to boundary between physical extents: "
                    f"{long_size(n * vg.extent_bytes())}.")
            else:
                say(f"Rounding up size to full physical extent {long_size(n * vg.extent_bytes())}")
    else:
        sign, num, pct = parse_extents(extents, option="--extents")
        if sign and sign not in signs:
            raise LvmError(f"Invalid argument for --extents: {extents}", EINVALID_CMD_LINE)
        if pct is None:
            n = num
        else:
            base = {"FREE": vg.free_extents(pvkeys, ranges), "VG": vg.total_extents(),
                    "PVS": sum(vg.pvs[p].pe_count for p in (pvkeys or vg.pvs)),
                    "ORIGIN": origin.extents if origin else 0}[pct]
            n = base * num // 100
    if sign == "+":
        n += current
    elif sign == "-":
        n = current - n
    if n <= 0 and not current:
        raise LvmError("Unable to create new logical volume with no extents.")
    return n


def pv_keys(st: Store, vg: VG, devices: list[str]) -> list[str] | None:
    """The PVs (keys of vg.pvs) named on the command line, in order, or None for all."""
    ranges = pe_ranges(st, vg, devices)
    return None if ranges is None else list(ranges)


def pe_ranges(st: Store, vg: VG, devices: list[str]) -> dict[str, list[tuple[int, int]]] | None:
    """PV[:PE[-PE|+N]]... arguments as {pv key: [(first PE, count), ...]}, as lvm2's
    create_pv_list: a bare PV means all of it, ranges of one PV named twice add up."""
    if not devices:
        return None
    out: dict[str, list[tuple[int, int]]] = {}
    for arg in devices:
        name, colon, spec = arg.partition(":")
        d = st.disk(name)
        pv = next((p for p in vg.pvs.values() if p.id == d.pv_uuid), None)
        if pv is None:
            raise LvmError(f'Physical Volume "{d.name}" not found in Volume Group "{vg.name}".')
        out.setdefault(pv.key, []).extend(_parse_pes(colon + spec, pv.pe_count))
    return out


_PE_RE = re.compile(r"(\d*)(?:([-+])(\d*))?")


def _parse_pes(text: str, size: int) -> list[tuple[int, int]]:
    """lvm2's _parse_pes: ':S', ':S-E', ':S-', ':-E', ':S+N', several in a row."""
    if not text:
        return [(0, size)]
    out = []
    rest = text
    while rest:
        if rest[0] != ":" or rest[1:2] in ("", ":"):
            raise LvmError(f"Physical extent parsing error at {rest}.")
        m = _PE_RE.match(rest, 1)
        first, op, second = m.groups()
        if not first and not op:
            raise LvmError(f"Physical extent parsing error at {rest[1:]}.")
        start = int(first) if first else 0
        end = start if first and not op else size - 1
        if op == "-" and second:
            end = int(second)
        elif op == "+" and second:
            end = start + max(int(second) - 1, 0)
        after = rest[m.end():]
        if after and after[0] != ":":
            raise LvmError(f"Physical extent parsing error at {after}.")
        if start > end or end > size - 1:
            raise LvmError(f"PE range error: start extent {start} to end extent {end}.")
        out.append((start, end - start + 1))
        rest = after
    return out
