"""Which entries dmemud's devices make in the view, named as udev and LVM name them.

Pure functions of the two lists dmemud answers (``list`` and ``dm_list``), so they can be
tested without a daemon or a mount: base devices by their block device name at the top,
every device-mapper device as ``mapper/NAME``, and for LVM's devices (uuid ``LVM-...``) a
``VG/LV`` symlink to ``../mapper/VG-LV``.
"""
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAPPER = "mapper"
SECTOR_SIZE = 512


@dataclass(frozen=True)
class DeviceEntry:
    """A device file: where it appears and what to open in dmemud to reach it."""
    key: tuple          # identity across refreshes: ("base", uuid) or ("dm", minor)
    parent: str         # "" for the top directory, "mapper" for device-mapper devices
    name: str
    ident: str          # the name dmemud opens it by (stable across a dm rename: dm-N)
    size: int           # bytes
    read_only: bool


@dataclass(frozen=True)
class LinkEntry:
    """An LVM symlink VG/LV -> ../mapper/VG-LV."""
    vg: str
    lv: str
    target: str


def split_lvm_name(dm_name: str) -> tuple[str, str, str] | None:
    """LVM's dm name 'vg-lv[-layer]' with '-' inside names doubled, as (vg, lv, layer).

    Mirrors libdevmapper's dm_split_lvm_name: a single '-' separates, '--' is a '-' of a name.
    None when the name has no separator (not an LVM name after all).
    """
    parts, cur, i = [], [], 0
    while i < len(dm_name):
        c = dm_name[i]
        if c == "-":
            if dm_name[i + 1:i + 2] == "-":
                cur.append("-")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
            if len(parts) == 2:      # the rest is the layer, kept as it is
                parts.append(dm_name[i + 1:])
                break
        else:
            cur.append(c)
        i += 1
    else:
        parts.append("".join(cur))
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1], parts[2] if len(parts) > 2 else ""


def entries(bases: list[dict], dms: list[dict]) -> tuple[list[DeviceEntry], list[LinkEntry]]:
    """The device files and LVM symlinks for dmemud's answers to ``list`` and ``dm_list``."""
    devices, top = [], {MAPPER}
    for b in bases:
        if not b.get("enabled", True):
            continue        # a disabled (hot-removed) device has no node, as in Linux
        devices.append(DeviceEntry(("base", b["uuid"]), "", b["blockdev"], b["blockdev"],
                                   b["size"], False))
        top.add(b["blockdev"])
    links = []
    for d in dms:
        devices.append(DeviceEntry(("dm", d["minor"]), MAPPER, d["name"], f"dm-{d['minor']}",
                                   d["size"] * SECTOR_SIZE, bool(d.get("read_only"))))
        if not (d.get("uuid") or "").startswith("LVM-"):
            continue
        split = split_lvm_name(d["name"])
        if split is None or split[2]:
            continue        # hidden layers (-real, -cow, ...) get no symlink, as with udev
        vg, lv, _ = split
        if vg in top or vg in (".", ".."):
            log.warning("no %s/%s symlink: '%s' is already a name in the view", vg, lv, vg)
            continue
        links.append(LinkEntry(vg, lv, f"../{MAPPER}/{d['name']}"))
    return devices, links
