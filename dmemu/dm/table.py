"""Table text (what `dmsetup create/load` reads) to small value objects, and back.

A table is lines of ``<start> <length> <target> <args...>``, numbers in 512-byte sectors.
Like dm-table.c we insist that the first line starts at sector 0, that every line starts
where the previous one ended ("Gap in table"), that no line is empty ("zero-length
target") and that the target type is registered ("unknown target type"). Unlike the
kernel, which says "Gap in table" for an overlap too and only logs the device name, every
error here names the line number, the line itself and the problem, because users of the
emulation read these messages directly.

Target arguments stay strings: target constructors (dmemu.dm.target_args) and the
daemon's device lookup give them meaning.
"""
import errno
import re
from dataclasses import dataclass

from .errors import TableError

# The target types dmemu registers (dm_register_target in the kernel). The daemon may pass
# its own set; a name not in it is "unknown target type", as in dm_table_add_target().
TARGET_TYPES = frozenset({"linear", "snapshot-origin", "snapshot", "zero", "error"})

# dmsetup reads start and length with sscanf("%llu"): plain decimal, no sign.
_NUMBER = re.compile(r"[0-9]+\Z")
# sector_t is 64 bits; a table line beyond that cannot describe a device.
_MAX_SECTOR = (1 << 64) - 1


@dataclass(frozen=True)
class TableLine:
    """One target line of a table.

    lineno: 1-based line number in the text it came from (comments and blanks counted),
            so errors found later (by a constructor) can still point at the line.
    start, length: in sectors; start == end of the previous line, length > 0.
    target_name: a registered target type.
    args: the target's constructor arguments, split on whitespace.
    """
    lineno: int
    start: int
    length: int
    target_name: str
    args: tuple[str, ...]

    @property
    def end(self) -> int:
        """First sector after this line."""
        return self.start + self.length

    @property
    def text(self) -> str:
        """The line as written, normalised to single spaces (for messages)."""
        return " ".join([str(self.start), str(self.length), self.target_name, *self.args])


def _error(lineno: int, words: list[str], problem: str) -> TableError:
    return TableError(errno.EINVAL, f"line {lineno}: {' '.join(words)}: {problem}")


def _sector_number(lineno: int, words: list[str], what: str, word: str) -> int:
    if not _NUMBER.match(word):
        raise _error(lineno, words, f"invalid {what} '{word}': expected a number of sectors")
    value = int(word)
    if value > _MAX_SECTOR:
        raise _error(lineno, words, f"{what} {word} is beyond the largest sector number")
    return value


def parse_table(text: str, target_types=TARGET_TYPES) -> list[TableLine]:
    """Parse a whole table; raise TableError (EINVAL) at the first bad line.

    Blank lines and lines whose first non-blank character is ``#`` are skipped, as dmsetup
    does. An empty table parses to ``[]``; whether that is acceptable is the caller's call
    (dmsetup creates a device without a table then).
    """
    lines: list[TableLine] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) < 3:
            # dmsetup: "Invalid format on line %d of table": name what is missing.
            missing = "length and target type" if len(words) == 1 else "target type"
            raise _error(lineno, words, f"missing {missing}")
        start = _sector_number(lineno, words, "start", words[0])
        length = _sector_number(lineno, words, "length", words[1])
        target_name = words[2]
        if length == 0:
            raise _error(lineno, words, "zero-length target")
        if target_name not in target_types:
            raise _error(lineno, words, f"{target_name}: unknown target type")
        expected = lines[-1].end if lines else 0
        if start > expected:
            if lines:
                problem = (f"Gap in table: sectors {expected}-{start - 1} are not mapped "
                           f"(line {lines[-1].lineno} ends at sector {expected})")
            else:
                problem = "Gap in table: the first line must start at sector 0"
            raise _error(lineno, words, problem)
        if start < expected:
            prev = lines[-1]
            raise _error(lineno, words,
                         f"overlapping targets: starts at sector {start}, inside line "
                         f"{prev.lineno} (sectors {prev.start}-{prev.end - 1})")
        if start + length - 1 > _MAX_SECTOR:
            raise _error(lineno, words, "ends beyond the largest sector number")
        lines.append(TableLine(lineno, start, length, target_name, tuple(words[3:])))
    return lines


def format_table_line(start: int, length: int, target: str, text: str) -> str:
    """One line of `dmsetup table`/`status` output.

    libdm prints ``"%llu %llu %s "`` and then the target's text, so the space after the
    target name stays even when the text is empty (e.g. ``0 8 zero `` or a linear status).
    """
    return f"{start} {length} {target} {text}"


def table_length(lines: list[TableLine]) -> int:
    """The device size a table gives, in sectors (dm_table_get_size)."""
    return lines[-1].end if lines else 0
