"""Which kind of device a table makes (dm_table_determine_type) and whether a reload may
change it (table_load in dm-ioctl.c): the rule behind the 2018 DAX-snapshot failure.

A bio-based table is DAX_BIO_BASED when every target implements direct_access (the
``error`` target does, but as a wildcard it never counts) and every device under it is
DAX-capable; a table with no devices at all (only ``zero``/``error``) inherits DAX from
the live table. The first table fixes the device's type; a later one must have the same
type, or upgrade BIO_BASED to DAX_BIO_BASED. Linux refuses anything else with EINVAL and
a log line nobody sees; dmemu refuses with that line plus which devices and targets are
and are not DAX-capable, and what to do about it (design.md section 3).
"""
import enum
import errno
from collections.abc import Sequence

from .errors import DMError


class QueueMode(enum.IntEnum):
    """enum dm_queue_mode (the numbers appear in the kernel's message)."""
    NONE = 0
    BIO_BASED = 1
    REQUEST_BASED = 2
    DAX_BIO_BASED = 3


# Targets with a direct_access method in mainline (dm-linear.c, dm-stripe.c,
# dm-log-writes.c; dm-target.c's error target as a wildcard). snapshot, snapshot-origin
# and snapshot-merge have none since 4.18. The daemon passes a larger set for its
# DAX-through-snapshots extension.
LINUX_DAX_TARGETS = frozenset({"linear", "stripe", "log-writes", "error"})
# dm_target_is_wildcard(): a target whose DAX support says nothing about the table.
WILDCARD_TARGETS = frozenset({"error"})


def _dax_blockers(targets, dax_targets) -> tuple[list[str], list]:
    """Targets without usable direct_access, and devices that are not DAX-capable."""
    no_dax_targets, no_dax_devices = [], []
    for target_name, devices in targets:
        if target_name not in dax_targets or target_name in WILDCARD_TARGETS:
            no_dax_targets.append(target_name)
        no_dax_devices.extend(d for d in devices if not d.dax_capable)
    return no_dax_targets, no_dax_devices


def determine_type(targets: Sequence[tuple[str, Sequence]], live_type: QueueMode = QueueMode.NONE,
                   *, dax_targets=LINUX_DAX_TARGETS) -> QueueMode:
    """The type of a table of bio-based targets.

    targets: (target_name, devices) per table line, devices being the resolved objects
    the line uses (each with ``dax_capable``); live_type: the type of the live table.
    """
    no_dax_targets, no_dax_devices = _dax_blockers(targets, dax_targets)
    if not targets:
        return QueueMode.BIO_BASED
    has_devices = any(devices for _, devices in targets)
    if not has_devices and live_type == QueueMode.DAX_BIO_BASED:
        return QueueMode.DAX_BIO_BASED
    if not no_dax_targets and not no_dax_devices:
        return QueueMode.DAX_BIO_BASED
    return QueueMode.BIO_BASED


def is_valid_type(current: QueueMode, new: QueueMode) -> bool:
    """dm-ioctl.c is_valid_type(): same type, or bio-based gaining DAX."""
    return current == new or (current == QueueMode.BIO_BASED and new == QueueMode.DAX_BIO_BASED)


def _describe(devs) -> str:
    return ", ".join(f"{d.name} ({d.devno})" for d in devs) or "none"


def check_reload(device_name: str, devno: str, current: QueueMode,
                 targets: Sequence[tuple[str, Sequence]], *,
                 dax_targets=LINUX_DAX_TARGETS) -> QueueMode:
    """Return the new table's type, or raise DMError(EINVAL) if the device may not take it.

    ``current`` is the device's type (NONE before its first table). The message starts
    with the kernel's own line, then says why and what can be done.
    """
    new = determine_type(targets, current, dax_targets=dax_targets)
    if current == QueueMode.NONE or is_valid_type(current, new):
        return new
    kernel = (f"can't change device type (old={int(current)} vs new={int(new)}) "
              f"after initial table load.")
    if current == QueueMode.DAX_BIO_BASED:
        no_dax_targets, no_dax_devices = _dax_blockers(targets, dax_targets)
        all_devices = {d.devno: d for _, devs in targets for d in devs}.values()
        dax_devices = [d for d in all_devices if d.dax_capable]
        reasons = []
        if no_dax_targets:
            names = ", ".join(sorted(set(no_dax_targets)))
            reasons.append(f"target(s) without DAX support: {names}")
        reasons.append(f"DAX-capable devices: {_describe(dax_devices)}; "
                       f"not DAX-capable: {_describe(no_dax_devices)}")
        advice = (f"{device_name} is DAX-capable and the new table would make it not "
                  f"DAX-capable ({'; '.join(reasons)}). Unmount what uses {device_name}, "
                  f"remove the device and create it again with the new table, or load a "
                  f"table whose targets all support DAX over DAX-capable devices.")
    else:
        advice = (f"{device_name} ({devno}) has type {current.name}; a table of type "
                  f"{new.name} cannot replace it.")
    raise DMError(errno.EINVAL, f"{device_name} ({devno}): {kernel} {advice}")
