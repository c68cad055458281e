"""Target constructor arguments: value objects, and the kernel's message for every refusal."""
import errno

import pytest

from dmemu.dm.errors import TableError, TargetError
from dmemu.dm.table import parse_table
from dmemu.dm.target_args import (ErrorArgs, LinearArgs, OriginArgs, SnapshotArgs, ZeroArgs,
                                  check_device_area, check_snapshot_devices, construct_line,
                                  parse_snapshot_args, parse_target_args)
from tests.dm.dmfake import FakeBlockDevice


@pytest.mark.parametrize("target, args, expected", [
    ("linear", ["pmem0", "384"], LinearArgs("pmem0", 384)),
    ("snapshot-origin", ["254:11"], OriginArgs("254:11")),
    ("zero", [], ZeroArgs()),
    ("error", [], ErrorArgs()),
    ("error", ["pmem0", "8"], ErrorArgs("pmem0", 8)),
    ("snapshot", ["254:11", "254:12", "P", "16"], SnapshotArgs("254:11", "254:12", "P", 16)),
    ("snapshot", ["o", "c", "PO", "8"], SnapshotArgs("o", "c", "PO", 8)),
    ("snapshot", ["o", "c", "p", "0"], SnapshotArgs("o", "c", "P", 0)),
    ("snapshot", ["o", "c", "N", "32"], SnapshotArgs("o", "c", "N", 32)),
    ("snapshot", ["o", "c", "N", "32", "0"], SnapshotArgs("o", "c", "N", 32)),
    ("snapshot", ["o", "c", "P", "8", "1", "discard_zeroes_cow"],
     SnapshotArgs("o", "c", "P", 8, discard_zeroes_cow=True)),
    ("snapshot", ["o", "c", "P", "8", "2", "discard_passdown_origin", "Discard_Zeroes_Cow"],
     SnapshotArgs("o", "c", "P", 8, True, True)),
])
def test_valid_arguments(target, args, expected):
    assert parse_target_args(target, args) == expected


def test_snapshot_features_print_in_kernel_order():
    args = parse_snapshot_args(["o", "c", "P", "8", "2", "discard_passdown_origin",
                                "discard_zeroes_cow"])
    assert args.features == ["discard_zeroes_cow", "discard_passdown_origin"]


@pytest.mark.parametrize("target, args, message", [
    ("linear", ["pmem0"], "linear: Invalid argument count"),
    ("linear", ["pmem0", "0", "1"], "linear: Invalid argument count"),
    ("linear", ["pmem0", "x"], "linear: Invalid device sector"),
    ("linear", ["pmem0", "-1"], "linear: Invalid device sector"),
    ("linear", ["pmem0", "18446744073709551616"], "linear: Invalid device sector"),
    ("snapshot-origin", [], "snapshot-origin: origin: incorrect number of arguments"),
    ("snapshot-origin", ["a", "b"], "snapshot-origin: origin: incorrect number of arguments"),
    ("zero", ["x"], "zero: No arguments required"),
    ("error", ["pmem0"], "error: Invalid argument count"),
    ("snapshot", ["o", "c", "P"], "snapshot: requires 4 or more arguments"),
    ("snapshot", ["o", "c", "P", "8", "x"], "snapshot: Invalid number of feature arguments"),
    ("snapshot", ["o", "c", "P", "8", "3", "a", "b", "c"],
     "snapshot: Invalid number of feature arguments"),
    ("snapshot", ["o", "c", "P", "8", "2", "discard_zeroes_cow"],
     "snapshot: Invalid number of feature arguments"),
    ("snapshot", ["o", "c", "P", "8", "1", "fast"], "snapshot: Unrecognised feature requested"),
    ("snapshot", ["o", "c", "P", "8", "1", "discard_passdown_origin"],
     "snapshot: discard_passdown_origin feature depends on discard_zeroes_cow"),
    ("snapshot", ["pmem0", "pmem0", "P", "8"],
     "snapshot: COW device cannot be the same as origin device"),
    ("snapshot", ["o", "c", "X", "8"],
     "snapshot: Couldn't create exception store: Exception store type is not P or N"),
    ("snapshot", ["o", "c", "P", "eight"],
     "snapshot: Couldn't create exception store: Invalid chunk size"),
    ("snapshot", ["o", "c", "P", "-8"],
     "snapshot: Couldn't create exception store: Invalid chunk size"),
    ("snapshot", ["o", "c", "P", "4294967296"],
     "snapshot: Couldn't create exception store: Invalid chunk size"),
    ("snapshot", ["o", "c", "P", "12"],
     "snapshot: Couldn't create exception store: Chunk size is not a power of 2"),
    ("snapshot", ["o", "c", "P", str(1 << 22)],
     "snapshot: Couldn't create exception store: Chunk size is too high"),
    ("snapshot", ["o", "c", "PX", "8"],
     "snapshot: Couldn't create exception store: Unsupported persistent store option: X"),
    ("mirror", [], "mirror: unknown target type"),
])
def test_refusals_use_the_kernel_words(target, args, message):
    with pytest.raises(TargetError) as info:
        parse_target_args(target, args)
    assert (info.value.errno, info.value.message) == (errno.EINVAL, message)


def test_kernel_order_features_before_store():
    # parse_snapshot_features runs before the store is built: its error wins
    with pytest.raises(TargetError, match="Unrecognised feature"):
        parse_snapshot_args(["o", "c", "X", "12", "1", "bogus"])


def test_construct_line_names_the_line():
    lines = parse_table("0 1024 linear pmem0 0\n1024 8 snapshot o c P 12\n")
    assert construct_line(lines[0]) == LinearArgs("pmem0", 0)
    with pytest.raises(TableError) as info:
        construct_line(lines[1])
    assert info.value.message == ("line 2: 1024 8 snapshot o c P 12: snapshot: Couldn't "
                                  "create exception store: Chunk size is not a power of 2")


def test_device_area_must_fit():
    dev = FakeBlockDevice(1024, name="pmem0")
    check_device_area("linear", dev, 1000, 24)
    with pytest.raises(TargetError) as info:
        check_device_area("linear", dev, 1000, 25)
    assert info.value.message == ("linear: Device lookup failed: pmem0 too small for target: "
                                  "start=1000, len=25, dev_size=1024")


def test_snapshot_devices_identity_and_block_size():
    origin = FakeBlockDevice(64, name="pmem0", devno="259:0")
    same = FakeBlockDevice(64, name="pmem0-by-path", devno="259:0")
    cow4k = FakeBlockDevice(64, name="sdb", devno="8:16", logical_block_size=4096)
    args = parse_snapshot_args(["pmem0", "pmem0-by-path", "P", "4"])
    with pytest.raises(TargetError, match="COW device cannot be the same as origin device"):
        check_snapshot_devices(args, origin, same)
    with pytest.raises(TargetError) as info:
        check_snapshot_devices(args, origin, cow4k)
    assert info.value.message == ("snapshot: Couldn't create exception store: Chunk size is "
                                  "not a multiple of device blocksize")
    check_snapshot_devices(parse_snapshot_args(["pmem0", "sdb", "P", "8"]), origin, cow4k)
    check_snapshot_devices(parse_snapshot_args(["pmem0", "sdb", "P", "0"]), origin, cow4k)
