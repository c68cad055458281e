"""How users name LVs: 'vg0/lv0', '/dev/vg0/lv0', '/dev/mapper/vg0-lv0', or 'lv0' with a VG."""
from .activate import split_dm_name
from .errors import LvmError


def parse_lv(text: str, default_vg: str | None = None) -> tuple[str, str]:
    """(vg, lv) from any of the names LVM accepts for a logical volume."""
    t = text
    if t.startswith("/dev/mapper/"):
        parts = split_dm_name(t[len("/dev/mapper/"):])
        if not parts or parts[2]:
            raise LvmError(f'"{text}": Invalid path for Logical Volume.', 3)
        return parts[0], parts[1]
    if t.startswith("/dev/"):
        t = t[len("/dev/"):]
        if t.count("/") != 1:
            raise LvmError(f'"{text}": Invalid path for Logical Volume.', 3)
    if "/" in t:
        vg, _, lv = t.partition("/")
        if not vg or not lv or "/" in lv:
            raise LvmError(f'"{text}": Invalid path for Logical Volume.', 3)
        return vg, lv
    if default_vg is None:
        raise LvmError(f'"{text}": Invalid path for Logical Volume.', 3)
    return default_vg, t


def parse_vg_or_lv(text: str) -> tuple[str, str | None]:
    """A report argument: 'vg0' or any LV name form."""
    if "/" not in text:
        return text, None
    return parse_lv(text)
