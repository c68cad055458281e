"""Names that would shadow other devices, and a log-writes table that logs onto its own data.

Each of these was once accepted and led a later command to the wrong device: a namespace
labelled pmem3 that mkfs then formatted in place of the real pmem3; a DM device named 259:3
that later tables mapped instead of the namespace with that number; a log device that was its
data device and overwrote it.
"""
import json

import pytest

from tests.helpers import ok, tool


def _refused(r, *words):
    assert r.returncode != 0, r.stdout
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    for w in words:
        assert w in line, line


@pytest.mark.parametrize("name", ["pmem3", "namespace0.3", "259:3", "dm-0", "7", "/dev/pmem1"])
def test_a_namespace_name_that_reads_as_a_device_is_refused(dmemu_root, name):
    ok("ndctl", "create-namespace", "-s", "4M", "-a", "4K")
    _refused(tool("ndctl", "create-namespace", "-s", "4M", "-a", "4K", "--name", name), name)
    # Nothing was made.
    listed = json.loads(ok("ndctl", "list"))
    assert [d["blockdev"] for d in (listed if isinstance(listed, list) else [listed])] == ["pmem0"]


def test_a_namespace_label_never_shadows_a_kernel_name(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "4M", "-a", "4K", "--name", "data")
    _refused(tool("ndctl", "create-namespace", "-s", "4M", "-a", "4K", "--name", "data"), "exists")
    ok("dmsetup", "create", "vol", "--table", "0 8 zero")
    _refused(tool("ndctl", "create-namespace", "-s", "4M", "-a", "4K", "--name", "vol"), "exists")


@pytest.mark.parametrize("name", ["259:3", "253:0", "dm-1", "pmem0", "namespace0.0", "42"])
def test_a_dm_name_that_reads_as_a_device_is_refused(dmemu_root, name):
    ok("ndctl", "create-namespace", "-s", "4M", "-a", "4K")
    _refused(tool("dmsetup", "create", name, "--table", "0 8 zero"), name)
    assert ok("dmsetup", "ls").strip() in ("", "No devices found")
    ok("dmsetup", "create", "ok", "--table", "0 8 zero")
    _refused(tool("dmsetup", "rename", "ok", name), name)
    _refused(tool("dmsetup", "create", "other", "-u", name, "--table", "0 8 zero"), name)


def test_a_table_naming_a_number_reaches_the_device_with_that_number(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "4M", "-a", "4K")
    ok("dmsetup", "create", "lin", "--table", "0 8 linear 259:0 0")
    assert ok("dmsetup", "table", "lin") == "0 8 linear 259:0 0\n"


@pytest.fixture
def two_disks(dmemu_root):
    ok("dmemu", "disk", "create", "-s", "8M", "-n", "data")
    ok("dmemu", "disk", "create", "-s", "8M", "-n", "logd")
    return dmemu_root


def test_a_log_that_is_its_own_data_device_is_refused(two_disks):
    _refused(tool("dmsetup", "create", "lw", "--table", "0 8192 log-writes data data"), "overlap")
    assert ok("dmsetup", "ls").strip() in ("", "No devices found")


def test_a_log_overlapping_the_data_through_linear_devices_is_refused(two_disks):
    ok("dmsetup", "create", "d", "--table", "0 8192 linear data 0")
    ok("dmsetup", "create", "l", "--table", "0 8192 linear data 4096")
    _refused(tool("dmsetup", "create", "lw", "--table", "0 8192 log-writes d l"), "overlap", "data")
    # Disjoint halves of one disk are fine.
    ok("dmsetup", "create", "l2", "--table", "0 4096 linear data 8192")
    ok("dmsetup", "create", "lw", "--table", "0 8192 log-writes d l2")
