"""Sizes as LVM reads and prints them.

Size arguments (-L, -s, -c) take a number with an optional fraction and one of LVM's unit
letters; either case means the binary unit (-L 128M = -L 128m = 128 MiB) and a bare number
means the command's default unit (MiB for -L, KiB for -c). Reports print with --units:
lower case binary, upper case SI, h/H picking the largest unit that keeps the value >= 1;
sizes that are not exact at two decimals get LVM's "<" marker.
"""
import re

from .errors import EINVALID_CMD_LINE, LvmError

SECTOR = 512
_BINARY = {"b": 1, "s": 512, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
           "p": 1 << 50, "e": 1 << 60}
_SIZE_RE = re.compile(r"^([+-]?)(\d+(?:\.\d*)?|\.\d+)([bBsSkKmMgGtTpPeE]?)$")
_EXTENTS_RE = re.compile(r"^([+-]?)(\d+)(?:%(FREE|VG|PVS|ORIGIN))?$", re.IGNORECASE)


def parse_size(text: str, default_unit: str = "m", *, option: str = "-L") -> tuple[str, int]:
    """('+' | '-' | '', bytes) from '128M', '1g', '+64m', '4096b'."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise LvmError(f'Invalid argument for {option}: {text}', EINVALID_CMD_LINE)
    sign, num, unit = m.groups()
    value = float(num) * _BINARY[(unit or default_unit).lower()]
    return sign, int(value)


def parse_extents(text: str, *, option: str = "-l") -> tuple[str, int, str | None]:
    """('+' | '-' | '', number, percent-of or None) from '50', '+10', '50%FREE'."""
    m = _EXTENTS_RE.match(text.strip())
    if not m:
        raise LvmError(f'Invalid argument for {option}: {text}', EINVALID_CMD_LINE)
    sign, num, pct = m.groups()
    return sign, int(num), pct.upper() if pct else None


def check_units(units: str) -> str:
    if len(units) != 1 or units.lower() not in "hbskmgtpe":
        raise LvmError(f'Invalid argument for --units: {units}', EINVALID_CMD_LINE)
    return units


def _two_decimals(value: float) -> str:
    text = f"{value:.2f}"
    # LVM marks a value it had to round up with '<': the real size is a little less.
    return ("<" if float(text) > value + 1e-9 else "") + text


def report_size(nbytes: int, units: str = "h", suffix: bool = True) -> str:
    """A size in a report column: '128.00m', '<1.02g', '262144S', '134217728B'."""
    u = units
    if u in "bB":
        return f"{nbytes}" + ("B" if suffix else "")
    if u in "sS":
        return f"{nbytes // SECTOR}" + ("S" if suffix else "")
    base = 1000 if u.isupper() else 1024
    letters = "kmgtpe"
    if u in "hH":
        if nbytes < base:
            return f"{nbytes}" + ("B" if suffix else "") if nbytes else "0 "
        i = 0
        while i + 1 < len(letters) and nbytes >= base ** (i + 2):
            i += 1
        letter = letters[i]
    else:
        letter = u.lower()
        i = letters.index(letter)
    text = _two_decimals(nbytes / base ** (i + 1))
    if not suffix:
        return text
    return text + (letter.upper() if u.isupper() else letter)


def long_size(nbytes: int) -> str:
    """A size in a message: '8.00 MiB', '1.00 GiB'."""
    names = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    i = 0
    while i + 1 < len(names) and nbytes >= 1024 ** (i + 2):
        i += 1
    if nbytes < 1024:
        return f"{nbytes} B"
    return f"{_two_decimals(nbytes / 1024 ** (i + 1))} {names[i]}"
