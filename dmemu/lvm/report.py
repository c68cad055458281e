"""pvs, vgs and lvs: LVM's report fields, column layout and JSON format.

Columns: the heading left-aligned, string values left-aligned, numbers right-aligned, each
as wide as its widest entry (percent fields at least 6, as lvm2's columns.h), one space
between, two spaces before each line. JSON (--reportformat json) as lvm2's report_output:
one object per row on a line, every value a string.
"""
import json

from .errors import LvmError

# field name -> (heading, is_number, minimum width)
FIELDS = {
    "pv_name": ("PV", False, 0), "vg_name": ("VG", False, 0), "pv_fmt": ("Fmt", False, 0),
    "pv_attr": ("Attr", False, 0), "pv_size": ("PSize", True, 0), "pv_free": ("PFree", True, 0),
    "pv_uuid": ("PV UUID", False, 0), "pe_start": ("1st PE", True, 0),
    "pv_pe_count": ("PE", True, 0), "pv_pe_alloc_count": ("Alloc", True, 0),
    "dev_size": ("DevSize", True, 0),
    "pv_count": ("#PV", True, 0), "lv_count": ("#LV", True, 0), "snap_count": ("#SN", True, 0),
    "vg_attr": ("Attr", False, 0), "vg_size": ("VSize", True, 0), "vg_free": ("VFree", True, 0),
    "vg_uuid": ("VG UUID", False, 0), "vg_extent_size": ("Ext", True, 0),
    "vg_extent_count": ("#Ext", True, 0), "vg_free_count": ("Free", True, 0),
    "vg_seqno": ("Seq", True, 0),
    "lv_name": ("LV", False, 0), "lv_attr": ("Attr", False, 0), "lv_size": ("LSize", True, 0),
    "pool_lv": ("Pool", False, 0), "origin": ("Origin", False, 0),
    "data_percent": ("Data%", True, 6), "metadata_percent": ("Meta%", True, 6),
    "move_pv": ("Move", False, 0), "mirror_log": ("Log", False, 0),
    "copy_percent": ("Cpy%Sync", True, 8), "convert_lv": ("Convert", False, 0),
    "lv_uuid": ("LV UUID", False, 0), "lv_path": ("Path", False, 0),
    "lv_dm_path": ("DMPath", False, 0), "devices": ("Devices", False, 0),
    "seg_count": ("#Seg", True, 0), "chunk_size": ("Chunk", True, 0),
    "lv_active": ("Active", False, 0), "lv_dax": ("DAX", False, 0),
}
# lvm2's aliases; a short name ("size") also resolves to the report's own field ("lv_size").
ALIASES = {"snap_percent": "data_percent"}

DEFAULTS = {
    "pv": "pv_name,vg_name,pv_fmt,pv_attr,pv_size,pv_free",
    "vg": "vg_name,pv_count,lv_count,snap_count,vg_attr,vg_size,vg_free",
    "lv": "lv_name,vg_name,lv_attr,lv_size,pool_lv,origin,data_percent,metadata_percent,"
          "move_pv,mirror_log,copy_percent,convert_lv",
}


def columns(kind: str, options: list[str] | None) -> list[str]:
    """The fields of -o: 'a,b', '+c' appends to the defaults; short names like 'size'."""
    fields = DEFAULTS[kind].split(",")
    for opt in options or []:
        extra = opt.startswith("+")
        names = [n.strip() for n in opt.lstrip("+").split(",") if n.strip()]
        resolved = []
        for n in names:
            key = n
            key = ALIASES.get(key, key)
            if key not in FIELDS:
                key = f"{kind}_{n}"
            if key not in FIELDS:
                raise LvmError(f"Unrecognised field: {n}", 3)
            resolved.append(key)
        fields = fields + resolved if extra else resolved
    return fields


def render(kind: str, fields: list[str], rows: list[dict], *, headings: bool = True,
           fmt: str = "basic") -> str:
    if fmt == "json":
        lines = ["  {", '      "report": [', "          {", f'              "{kind}": [']
        objs = []
        for r in rows:
            objs.append("                  {" + ", ".join(
                f'{json.dumps(f)}:{json.dumps(str(r.get(f, "")))}' for f in fields) + "}")
        if objs:
            lines.append(",\n".join(objs))
        lines += ["              ]", "          }", "      ]", "  }"]
        return "\n".join(lines) + "\n"
    if not rows:
        return ""
    widths = []
    for f in fields:
        heading, _, minimum = FIELDS[f]
        w = max([len(str(r.get(f, ""))) for r in rows] + [minimum] + ([len(heading)] if headings else []))
        widths.append(w)
    out = []
    if headings:
        out.append("  " + " ".join(FIELDS[f][0].ljust(w) for f, w in zip(fields, widths)))
    for r in rows:
        cells = []
        for f, w in zip(fields, widths):
            v = str(r.get(f, ""))
            cells.append(v.rjust(w) if FIELDS[f][1] else v.ljust(w))
        out.append("  " + " ".join(cells))
    return "\n".join(out) + "\n"

