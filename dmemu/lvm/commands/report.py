"""pvs, vgs and lvs: the rows of each report from metadata and the kernel's state (the
columns and formats are in ..report)."""
import sys

from ..activate import Kernel, dm_name
from ..errors import LvmError
from ..names import parse_vg_or_lv
from ..report import SEG_FIELDS, Size, columns, render, select, select_fields
from ..store import Store
from ..units import SECTOR
from ..vg import LV, VG
from .common import scan


def _percent(status: str | None) -> str:
    """Data% of a snapshot from its kernel status, as lvm2's dm_snapshot parsing."""
    if status is None:
        return ""
    words = status.split()
    text = " ".join(words[3:])
    if text.startswith("Invalid") or text.startswith("Overflow"):
        return "100.00"
    try:
        used, total = (int(x) for x in words[3].split("/"))
        meta = int(words[4])
    except (IndexError, ValueError):
        return ""
    if total <= 0:
        return ""              # a COW device that went away under the snapshot
    if used == meta:
        return "0.00"          # only the store's own metadata: nothing copied yet
    return f"{used * 100 / total:.2f}"


def _seg_rows(vg: VG, lv: LV) -> list[dict]:
    """One row per segment, as lvm2 reports when a segment field is asked for."""
    rows = []
    for s in lv.segments:
        pv = vg.pvs[s.stripes[0][0]] if s.stripes else None
        pe = s.stripes[0][1] if s.stripes else 0
        dev = pv.device if pv is not None and pv.devno is not None else "[unknown]"
        rows.append({"seg_type": "linear" if s.type == "striped" else s.type,
                     "devices": f"{dev}({pe})" if pv else "",
                     "seg_pe_ranges": f"{dev}:{pe}-{pe + s.extent_count - 1}" if pv else "",
                     "seg_start": Size(s.start_extent * vg.extent_bytes()),
                     "seg_start_pe": s.start_extent,
                     "seg_size": Size(s.extent_count * vg.extent_bytes()),
                     "seg_size_pe": s.extent_count})
    return rows or [{}]


def _lv_row(vg: VG, lv: LV, kern: Kernel) -> dict:
    top = dm_name(vg.name, lv.name)
    d = kern.devs.get(top)
    is_origin, is_cow = vg.is_origin(lv.name), vg.is_cow(lv.name)
    merging = vg.is_merging_cow(lv.name) or bool(vg.merging_into(lv.name))
    if is_cow and merging and d is None:
        # A merging snapshot has no device: the origin's snapshot-merge speaks for it.
        d = kern.devs.get(dm_name(vg.name, vg.snapshot_of_cow(lv.name)[1].origin))
        if d and not (d["table"] and "snapshot-merge" in d["table"][0]):
            d = None
    status = d["status"][0] if d and d["live"] and d["status"] else None
    invalid = bool(is_cow and status and status.split()[3:4] == ["Invalid"])
    if not d or not d["live"]:
        state = "-"
    elif invalid:
        state = "S" if d["suspended"] else "I"
    else:
        state = "s" if d["suspended"] else "a"
    kind = "o" if is_origin else "s" if is_cow else "-"
    attr = ((kind.upper() if merging else kind) + ("w" if "WRITE" in lv.status else "r")
            + "i" + "-" + state + ("o" if kern.in_use(top) else "-")
            + ("s" if is_origin or is_cow else "-") + "---")
    origin = vg.snapshot_of_cow(lv.name)[1].origin if is_cow else ""
    chunk = vg.snapshot_of_cow(lv.name)[1].chunk_size * SECTOR if is_cow else 0
    hidden = is_cow and merging       # lvm2 hides it: lvs -a shows it in brackets
    return {"lv_name": f"[{lv.name}]" if hidden else lv.name, "vg_name": vg.name, "lv_attr": attr,
            "lv_size": Size(lv.extents * vg.extent_bytes()),
            "origin": origin, "data_percent": _percent(status) if is_cow else "",
            "lv_uuid": lv.id, "lv_path": f"/dev/{vg.name}/{lv.name}",
            "lv_dm_path": f"/dev/mapper/{top}", "seg_count": len(lv.segments),
            "chunk_size": Size(chunk),
            "lv_active": "active" if d and d["live"] else "",
            "lv_dax": ("yes" if d["dax"] else "no") if d and d["live"] else ""}


async def lvs(k, args) -> None:
    fields = columns("lv", args.options)
    st = await scan(k)
    kern = Kernel(k)
    await kern.refresh()
    wanted = [parse_vg_or_lv(a) for a in args.names]
    rows = []
    for vgname in sorted(st.vgs):
        vg = st.vgs[vgname]
        for lv in sorted(vg.user_lvs(), key=lambda x: x.name):
            if wanted and not any(w[0] == vgname and w[1] in (None, lv.name) for w in wanted):
                continue
            if vg.is_merging_cow(lv.name) and not args.all and not any(w[1] == lv.name for w in wanted):
                continue
            row = {**_vg_row(vg), **_lv_row(vg, lv, kern)}
            if SEG_FIELDS & set(fields) or SEG_FIELDS & select_fields(args.select):
                rows += [{**row, **seg} for seg in _seg_rows(vg, lv)]
            else:
                rows.append(row)
    missing = _missing(st, wanted)
    _print_report("lv", fields, rows, args)
    if missing:
        raise LvmError(missing)


def _missing(st: Store, wanted) -> str | None:
    for vgname, lvname in wanted:
        if vgname not in st.vgs:
            return f'Volume group "{vgname}" not found'
        if lvname is not None and lvname not in st.vgs[vgname].lvs:
            return f'Failed to find logical volume "{vgname}/{lvname}"'
    return None


def _print_report(kind, fields, rows, args) -> None:
    rows = select(rows, args.select, kind)
    fmt = "json" if args.reportformat == "json" else "basic"
    text = render(kind, fields, rows, headings=not args.noheadings, fmt=fmt, units=args.units,
                  suffix=not args.nosuffix, separator=args.separator)
    sys.stdout.write(text)


def _vg_row(vg: VG) -> dict:
    eb = vg.extent_bytes()
    return {"vg_name": vg.name, "pv_count": len(vg.pvs), "lv_count": len(vg.user_lvs()),
            "snap_count": sum(1 for _ in vg.snapshot_segments()),
            "vg_attr": "wz-" + ("p" if vg.missing_pvs() else "-") + "n-",
            "vg_size": Size(vg.total_extents() * eb),
            "vg_free": Size(vg.free_extents() * eb), "vg_uuid": vg.id,
            "vg_extent_size": Size(eb), "vg_extent_count": vg.total_extents(),
            "vg_free_count": vg.free_extents(), "vg_seqno": vg.seqno}


async def vgs(k, args) -> None:
    fields = columns("vg", args.options)
    st = await scan(k)
    rows = []
    for name in sorted(st.vgs):
        if args.names and name not in args.names:
            continue
        rows.append(_vg_row(st.vgs[name]))
    _print_report("vg", fields, rows, args)
    for name in args.names:
        if name not in st.vgs:
            raise LvmError(f'Volume group "{name}" not found')


async def pvs(k, args) -> None:
    fields = columns("pv", args.options)
    st = await scan(k)
    rows = []
    for d in sorted(st.disks.values(), key=lambda x: x.name):
        if args.devices and d.name not in {"/dev/" + x.removeprefix("/dev/") for x in args.devices}:
            continue
        if d.header is None:
            if args.all:
                # pvs -a: devices LVM could use but that carry no PV, as lvm2 lists them.
                rows.append({"pv_name": d.name, "vg_name": "", "pv_fmt": "", "pv_attr": "---",
                             "pv_size": Size(0), "pv_free": Size(0), "dev_size": Size(d.size),
                             "pv_uuid": "", "pv_pe_count": 0, "pv_pe_alloc_count": 0})
            continue
        vg = st.vg_of_disk(d)
        row = {"pv_name": d.name, "pv_fmt": "lvm2", "pv_uuid": d.pv_uuid,
               "dev_size": Size(d.size),
               "pe_start": Size(1 << 20)}
        if vg is not None:
            pv = next(p for p in vg.pvs.values() if p.id == d.pv_uuid)
            eb = vg.extent_bytes()
            free = vg.free_extents([pv.key])
            row.update(vg_name=vg.name, pv_attr="a--",
                       pv_size=Size(pv.pe_count * eb),
                       pv_free=Size(free * eb),
                       pv_pe_count=pv.pe_count, pv_pe_alloc_count=pv.pe_count - free)
        else:
            row.update(vg_name="", pv_attr="---", pv_size=Size(d.size),
                       pv_free=Size(d.size), pv_pe_count=0, pv_pe_alloc_count=0)
        rows.append(row)
    for vg in st.vgs.values():
        for pv in vg.missing_pvs():
            if not args.devices:
                eb = vg.extent_bytes()
                rows.append({"pv_name": "[unknown]", "vg_name": vg.name, "pv_fmt": "lvm2",
                             "pv_attr": "a-m", "pv_uuid": pv.id,
                             "pv_size": Size(pv.pe_count * eb),
                             "pv_free": Size(vg.free_extents([pv.key]) * eb)})
    _print_report("pv", fields, rows, args)
    for name in args.devices:
        d = st.disk(name)
        if d.header is None:
            raise LvmError(f"Failed to find physical volume \"{d.name}\".")
