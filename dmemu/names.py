"""Names users give devices, and the names they must not take.

Every device can be named in several ways (pmem0, /dev/pmem0, namespace0.0, 259:0, a
namespace's label, a DM name, dm-3, 253:3), and lookups try them in turn. A name chosen by a
user that reads like another device's kernel name or number would make a later command
(``mkfs.daxfs /dev/pmem3``, a table line ``linear 259:3 0``) reach the wrong device, so such
names are refused when the device is created or renamed, as udev keeps user names out of the
kernel's namespace.
"""
import re

from .errors import invalid

# The shapes the kernel gives devices: block devices of the drivers emulated here and of
# the usual real ones, DM's kernel names, nvdimm's namespaces, regions, btt/pfn/dax devices,
# and major:minor numbers.
KERNEL_NAME = re.compile(
    r"^(?:pmem\d+(?:\.\d+)?s?(?:p\d+)?|namespace\d+\.\d+|region\d+|btt\d+\.\d+|pfn\d+\.\d+"
    r"|dax\d+\.\d+|dm-\d+|loop\d+|ram\d+|sd[a-z]+\d*|vd[a-z]+\d*|nvme\d+n\d+(?:p\d+)?"
    r"|\d+:\d+|\d+)$")


def shadows(name: str) -> str | None:
    """Why ``name`` would be mistaken for another device, or None if it would not."""
    key = name[5:] if name.startswith("/dev/") else name
    if KERNEL_NAME.match(key):
        if re.fullmatch(r"\d+:\d+", key):
            return "it reads as a device number (major:minor)"
        if key.isdigit():
            return "it reads as a number"
        return "it reads as a kernel device name"
    return None


def check_user_name(name: str, what: str) -> None:
    """Refuse a user's name for a device that would shadow a kernel name or number."""
    why = shadows(name)
    if why:
        raise invalid(f"invalid {what} '{name}': {why}, so later commands could reach the wrong "
                      f"device; choose another name")
