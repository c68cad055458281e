"""Sizes as users type them (ndctl and LVM style: 64M, 1G, 4096) and as tools print them."""
import re
from fractions import Fraction

from .errors import invalid

_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
# At most 20 digits each side of the point: no size needs more, and a longer number is
# either a mistake or an attempt to make the parser work hard.
_SIZE_RE = re.compile(r"^\s*(\d{1,20}(?:\.\d{1,20})?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str, *, what: str = "size") -> int:
    """Bytes from '64M', '1.5G', '4096', '2MiB' (binary units, as ndctl and LVM use)."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise invalid(f"invalid {what} '{text}': use a number with an optional K, M, G or T suffix")
    value = Fraction(m.group(1)) * _SUFFIX[m.group(2).upper()]     # exact, unlike a float
    if value.denominator != 1:
        raise invalid(f"invalid {what} '{text}': not a whole number of bytes")
    return int(value)


def human(nbytes: int) -> str:
    """Binary suffix and at most one decimal, as lsblk prints sizes."""
    value, suffix = float(nbytes), "B"
    for suffix in ("B", "K", "M", "G", "T", "P"):
        if value < 1024 or suffix == "P":
            break
        value /= 1024
    if suffix == "B":
        return f"{nbytes}B"
    return f"{value:.1f}".rstrip("0").rstrip(".") + suffix
