"""pvs, vgs and lvs: LVM's report fields, column layout and JSON format.

Columns: the heading left-aligned, string values left-aligned, numbers right-aligned, each
as wide as its widest entry (percent fields at least 6, as lvm2's columns.h), one space
between, two spaces before each line. JSON (--reportformat json) as lvm2's report_output:
one object per row on a line, every value a string.
"""
import json
import re

from .errors import EINVALID_CMD_LINE, LvmError
from .units import parse_size, report_size


class Size(int):
    """A size in bytes in a report row: printed with --units and --nosuffix, compared as a
    number by -S."""

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
    "seg_type": ("Type", False, 0), "seg_pe_ranges": ("PE Ranges", False, 0),
    "seg_start": ("Start", True, 0), "seg_start_pe": ("Start", True, 0),
    "seg_size": ("SSize", True, 0), "seg_size_pe": ("SSize", True, 0),
}
# Fields of a segment: asking for one makes lvs print a row per segment, as lvm2 does.
SEG_FIELDS = {"devices", "seg_type", "seg_pe_ranges", "seg_start", "seg_start_pe", "seg_size",
              "seg_size_pe"}
# lvm2's aliases; a short name ("size") also resolves to the report's own field ("lv_size").
ALIASES = {"snap_percent": "data_percent", "segtype": "seg_type"}

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
            key = field_name(kind, n)
            if key is None:
                raise LvmError(f"Unrecognised field: {n}", 3)
            resolved.append(key)
        fields = fields + resolved if extra else resolved
    return fields


def field_name(kind: str, name: str) -> str | None:
    key = ALIASES.get(name, name)
    if key not in FIELDS:
        key = f"{kind}_{name}"
    return key if key in FIELDS else None


def render(kind: str, fields: list[str], rows: list[dict], *, headings: bool = True,
           fmt: str = "basic", units: str = "h", suffix: bool = True,
           separator: str | None = None) -> str:
    rows = [{f: (report_size(v, units, suffix) if isinstance(v, Size) else v)
             for f, v in r.items()} for r in rows]
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
    if separator is not None:
        # --separator: no padding, as lvm2 without --aligned.
        out = (["  " + separator.join(FIELDS[f][0] for f in fields)] if headings else [])
        out += ["  " + separator.join(str(r.get(f, "")) for f in fields) for r in rows]
        return "\n".join(out) + "\n"
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



# -- -S/--select: the common forms of lvm2's selection language ---------------------------

_CLAUSE_RE = re.compile(r"^\s*(!?)\s*([A-Za-z_]+)\s*(=~|!~|!=|<=|>=|=|<|>)\s*(.*?)\s*$")


def _split(text: str, seps: tuple[str, ...]) -> list[str]:
    """Split on separators outside quotes."""
    parts, cur, quote, i = [], "", None, 0
    while i < len(text):
        c = text[i]
        if quote:
            quote = None if c == quote else quote
        elif c in "\"'":
            quote = c
        else:
            sep = next((s for s in seps if text.startswith(s, i)), None)
            if sep:
                parts.append(cur)
                cur, i = "", i + len(sep)
                continue
        cur += c
        i += 1
    parts.append(cur)
    return parts


def _parse(selection: str):
    """[[(negate, field, op, value)]]: OR of ANDs. '||' or '#' is OR, '&&' or ',' AND."""
    out = []
    for alt in _split(selection, ("||", "#")):
        clauses = []
        for c in _split(alt, ("&&", ",")):
            m = _CLAUSE_RE.match(c)
            if not m:
                raise LvmError(f"Selection syntax error at '{c.strip()}'.", EINVALID_CMD_LINE)
            neg, name, op, value = m.groups()
            if value[:1] in "\"'" and value[-1:] == value[:1] and len(value) > 1:
                value = value[1:-1]
            clauses.append((bool(neg), name, op, value))
        out.append(clauses)
    return out


def select_fields(selection: str | None) -> set:
    if not selection:
        return set()
    return {ALIASES.get(c[1], c[1]) for alt in _parse(selection) for c in alt}


def select(rows: list[dict], selection: str | None, kind: str = "lv") -> list[dict]:
    """The rows -S keeps. Sizes compare as sizes (a bare number is MiB, as lvm2), numbers as
    numbers, anything else as text; =~ and !~ take a regular expression."""
    if not selection:
        return rows
    alts = _parse(selection)
    for alt in alts:
        for _, name, _, _ in alt:
            if not rows:
                break
            if field_name(kind, name) is None and not any(
                    field_name(k, name) in rows[0] for k in ("lv", "vg", "pv")):
                raise LvmError(f"Unrecognised selection field: {name}", EINVALID_CMD_LINE)
    return [r for r in rows if any(all(_match(r, c) for c in alt) for alt in alts)]


def _match(row: dict, clause) -> bool:
    neg, name, op, want = clause
    key = next((k for k in (field_name(x, name) for x in ("lv", "vg", "pv")) if k in row), name)
    have = row.get(key, "")
    if op in ("=~", "!~"):
        try:
            hit = re.search(want, str(have)) is not None
        except re.error:
            raise LvmError(f"Selection syntax error at '{want}'.", EINVALID_CMD_LINE)
        result = hit if op == "=~" else not hit
    else:
        if isinstance(have, Size):
            try:
                want_v = parse_size(want, "m", option="-S")[1]
            except LvmError:
                raise LvmError(f"Invalid size value {want} in selection.", EINVALID_CMD_LINE)
            have_v = int(have)
        elif isinstance(have, (int, float)) or (op in "<=>=" and _number(have) is not None):
            have_v, want_v = _number(have), _number(want)
            if want_v is None or have_v is None:
                raise LvmError(f"Invalid number value {want} in selection.", EINVALID_CMD_LINE)
        else:
            if op not in ("=", "!="):
                raise LvmError(f"Operator {op} can be used only with number or size fields: "
                               f"{name}.", EINVALID_CMD_LINE)
            have_v, want_v = str(have), want
        result = {"=": have_v == want_v, "!=": have_v != want_v, "<": have_v < want_v,
                  "<=": have_v <= want_v, ">": have_v > want_v, ">=": have_v >= want_v}[op]
    return result != neg


def _number(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
