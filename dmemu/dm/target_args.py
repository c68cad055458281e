"""Target constructor arguments: parse and validate them as the kernel's ``ctr``s do.

Each ``parse_*`` takes the argument words of one table line and returns a small value
object, or raises TargetError whose message is ``<target>: <ti->error>`` with the
kernel's own text (dm-linear.c, dm-snap.c, dm-exception-store.c, dm-zero.c,
dm-target.c). Device arguments stay strings: dmemud resolves them, then calls the
``check_*`` helpers that need the resolved devices (sizes, block sizes, identity).

The checks run in the kernel's order, so the first error reported is the kernel's.
"""
import errno
import re
from dataclasses import dataclass

from .errors import DMError, TableError, TargetError
from .exception_store import SECTOR_SIZE, validate_chunk_size
from .table import TableLine

# sscanf("%llu%c") / kstrtouint(..., 10): unsigned decimal; kstrtouint allows one '+'.
_UNSIGNED = re.compile(r"\+?[0-9]+\Z")
_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1


def _fail(target: str, message: str, err: int = errno.EINVAL) -> TargetError:
    return TargetError(err, f"{target}: {message}")


def _unsigned(word: str, limit: int) -> int | None:
    if not _UNSIGNED.match(word):
        return None
    value = int(word)
    return value if value <= limit else None


@dataclass(frozen=True)
class LinearArgs:
    """linear <dev> <offset>: sectors [0, len) map to dev at offset + sector."""
    dev: str
    offset: int


@dataclass(frozen=True)
class OriginArgs:
    """snapshot-origin <dev>: the device that snapshots are taken of."""
    dev: str


@dataclass(frozen=True)
class SnapshotArgs:
    """snapshot <origin> <cow> <P|PO|N> <chunk-sectors> [<#feat> <feat>...].

    store_type: "P", "PO" (persistent, userspace understands Overflow) or "N".
    chunk_size: sectors; 0 only makes sense for P/PO (taken from the header, or the
                default for a new store).
    """
    origin: str
    cow: str
    store_type: str
    chunk_size: int
    discard_zeroes_cow: bool = False
    discard_passdown_origin: bool = False

    @property
    def features(self) -> list[str]:
        """The feature words in the order `dmsetup table` prints them."""
        out = []
        if self.discard_zeroes_cow:
            out.append("discard_zeroes_cow")
        if self.discard_passdown_origin:
            out.append("discard_passdown_origin")
        return out


@dataclass(frozen=True)
class ZeroArgs:
    """zero: reads return zeroes, writes are dropped."""


@dataclass(frozen=True)
class ErrorArgs:
    """error [<dev> <offset>]: every bio fails; the optional device only matters for
    zoned devices in Linux (6.5+), we keep it for the same table text."""
    dev: str | None = None
    offset: int = 0


@dataclass(frozen=True)
class LogWritesArgs:
    """log-writes <dev> <log dev>: writes go to dev and are recorded on the log device."""
    dev: str
    log: str


def parse_log_writes_args(args) -> LogWritesArgs:
    if len(args) != 2:
        raise _fail("log-writes", "Invalid argument count")
    return LogWritesArgs(args[0], args[1])


def _parse_dev_offset(target: str, args) -> tuple[str, int]:
    if len(args) != 2:
        raise _fail(target, "Invalid argument count")
    offset = _unsigned(args[1], _U64_MAX)
    if offset is None or args[1].startswith("+"):
        raise _fail(target, "Invalid device sector")
    return args[0], offset


def parse_linear_args(args) -> LinearArgs:
    dev, offset = _parse_dev_offset("linear", args)
    return LinearArgs(dev, offset)


def parse_origin_args(args) -> OriginArgs:
    if len(args) != 1:
        raise _fail("snapshot-origin", "origin: incorrect number of arguments")
    return OriginArgs(args[0])


def parse_zero_args(args) -> ZeroArgs:
    if args:
        raise _fail("zero", "No arguments required")
    return ZeroArgs()


def parse_error_args(args) -> ErrorArgs:
    if not args:
        return ErrorArgs()
    dev, offset = _parse_dev_offset("error", args)
    return ErrorArgs(dev, offset)


def _parse_snapshot_features(args) -> tuple[bool, bool]:
    """parse_snapshot_features(): an optional group ``<#feat> <feat>...`` (0 to 2)."""
    if not args:
        return False, False
    count = _unsigned(args[0], _U32_MAX)
    if count is None or count > 2 or len(args) - 1 < count:
        raise _fail("snapshot", "Invalid number of feature arguments")
    zeroes = passdown = False
    for word in args[1:1 + count]:
        if word.lower() == "discard_zeroes_cow":
            zeroes = True
        elif word.lower() == "discard_passdown_origin":
            passdown = True
        else:
            raise _fail("snapshot", "Unrecognised feature requested")
    if passdown and not zeroes:
        raise _fail("snapshot", "discard_passdown_origin feature depends on discard_zeroes_cow")
    # Words after the group are ignored by the kernel too.
    return zeroes, passdown


def _store_error(reason: str) -> TargetError:
    # snapshot_ctr() replaces the store's own ti->error with "Couldn't create exception
    # store"; we keep both so the user also learns what was wrong.
    return _fail("snapshot", f"Couldn't create exception store: {reason}")


def parse_snapshot_args(args) -> SnapshotArgs:
    if len(args) < 4:
        raise _fail("snapshot", "requires 4 or more arguments")
    zeroes, passdown = _parse_snapshot_features(args[4:])
    origin, cow, store_word, chunk_word = args[:4]
    if cow == origin:
        raise _fail("snapshot", "COW device cannot be the same as origin device")
    # dm_exception_store_create(): the type is chosen by the first letter, any case.
    letter = store_word[0].upper()
    if letter not in "PN":
        raise _store_error("Exception store type is not P or N")
    chunk_size = _unsigned(chunk_word, _U32_MAX)
    if chunk_size is None:
        raise _store_error("Invalid chunk size")
    if chunk_size:
        try:
            validate_chunk_size(chunk_size)
        except DMError as e:
            raise _store_error(e.message) from None
    store_type = letter
    options = store_word[1:]
    if letter == "P" and options:
        # persistent_ctr() looks at the first option letter only; the transient store
        # ignores options altogether.
        if options[0].upper() != "O":
            raise _store_error(f"Unsupported persistent store option: {options}")
        store_type = "PO"
    return SnapshotArgs(origin, cow, store_type, chunk_size, zeroes, passdown)


PARSERS = {
    "linear": parse_linear_args,
    "snapshot-origin": parse_origin_args,
    "snapshot": parse_snapshot_args,
    "snapshot-merge": parse_snapshot_args,      # the same arguments (dm-snap.c)
    "zero": parse_zero_args,
    "error": parse_error_args,
    "log-writes": parse_log_writes_args,
}


def parse_target_args(target_name: str, args):
    """Dispatch on the target type; TargetError on bad arguments."""
    try:
        parser = PARSERS[target_name]
    except KeyError:
        raise _fail(target_name, "unknown target type") from None
    return parser(tuple(args))


def construct_line(line: TableLine):
    """parse_target_args for a parsed table line, errors naming the line like TableError."""
    try:
        return parse_target_args(line.target_name, line.args)
    except TargetError as e:
        raise TableError(e.errno, f"line {line.lineno}: {line.text}: {e.message}") from None


# -- checks that need the resolved devices --------------------------------------------

def check_device_area(target: str, dev, start: int, length: int) -> None:
    """device_area_is_invalid(): the mapped range must lie inside the device.

    The kernel logs "<dev> too small for target: start=..., len=..., dev_size=..." and
    the constructor fails with "Device lookup failed".
    """
    if start + length > dev.nr_sectors:
        raise _fail(target, f"Device lookup failed: {dev.name} too small for target: "
                            f"start={start}, len={length}, dev_size={dev.nr_sectors}")


def check_snapshot_devices(args: SnapshotArgs, origin, cow) -> None:
    """The snapshot ctr's checks on resolved devices: identity and block sizes."""
    if origin is cow or origin.devno == cow.devno:
        raise _fail("snapshot", "COW device cannot be the same as origin device")
    if args.chunk_size:
        try:
            validate_chunk_size(args.chunk_size,
                                cow_block_size=getattr(cow, "logical_block_size", SECTOR_SIZE),
                                origin_block_size=getattr(origin, "logical_block_size",
                                                          SECTOR_SIZE))
        except DMError as e:
            raise _store_error(e.message) from None
