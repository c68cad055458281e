"""The option values several lvm commands share, checked and converted as lvm2 does: -s
extent size, -c chunk size, -L/-l sizes (with lvm2's rounding messages) and PV lists.
"""
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
                    pvkeys=None, resize: bool = False) -> int:
    """Extents for -L/-l, relative to ``current`` when signed ('+'); rounding as lvm2."""
    size, extents = getattr(args, "size", None), getattr(args, "extents", None)
    if size is not None and extents is not None:
        raise LvmError("Please specify either size or extents (not both).", EINVALID_CMD_LINE)
    if size is None and extents is None:
        raise LvmError("Please specify either size or extents.", EINVALID_CMD_LINE)
    if size is not None:
        sign, nbytes = parse_size(size, "m", option="--size")
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
        if pct is None:
            n = num
        else:
            base = {"FREE": vg.free_extents(pvkeys), "VG": vg.total_extents(),
                    "PVS": sum(vg.pvs[p].pe_count for p in (pvkeys or vg.pvs)),
                    "ORIGIN": origin.extents if origin else 0}[pct]
            n = base * num // 100
    if sign == "+":
        n += current
    elif sign == "-":
        raise LvmError("Negative sizes are not accepted here.", EINVALID_CMD_LINE)
    if n <= 0 and not current:
        raise LvmError("Unable to create new logical volume with no extents.")
    return n


def pv_keys(st: Store, vg: VG, devices: list[str]) -> list[str] | None:
    if not devices:
        return None
    keys = []
    for name in devices:
        d = st.disk(name)
        key = next((p.key for p in vg.pvs.values() if p.id == d.pv_uuid), None)
        if key is None:
            raise LvmError(f'Physical Volume "{d.name}" not found in Volume Group "{vg.name}".')
        keys.append(key)
    return keys
