"""Table type (DAX or not) and the reload rule behind the 2018 DAX-snapshot failure."""
import errno

import pytest

from dmemu.dm.errors import DMError
from dmemu.dm.table_type import (LINUX_DAX_TARGETS, QueueMode, check_reload, determine_type,
                                 is_valid_type)
from dmfake import FakeBlockDevice

pmem0 = FakeBlockDevice(8, name="pmem0", devno="259:0", dax_capable=True)
pmem1 = FakeBlockDevice(8, name="pmem1", devno="259:1", dax_capable=True)
sdb = FakeBlockDevice(8, name="sdb", devno="8:16", dax_capable=False)


@pytest.mark.parametrize("targets, live, expected", [
    ([("linear", [pmem0])], QueueMode.NONE, QueueMode.DAX_BIO_BASED),
    ([("linear", [pmem0]), ("linear", [pmem1])], QueueMode.NONE, QueueMode.DAX_BIO_BASED),
    ([("linear", [pmem0]), ("linear", [sdb])], QueueMode.NONE, QueueMode.BIO_BASED),
    ([("snapshot-origin", [pmem0])], QueueMode.NONE, QueueMode.BIO_BASED),
    ([("snapshot", [pmem0, pmem1])], QueueMode.NONE, QueueMode.BIO_BASED),
    ([("zero", [])], QueueMode.NONE, QueueMode.BIO_BASED),
    ([("error", [])], QueueMode.NONE, QueueMode.BIO_BASED),
    # no devices at all: inherit DAX from the live table (suspend-to-error, dmsetup wipe_table)
    ([("error", [])], QueueMode.DAX_BIO_BASED, QueueMode.DAX_BIO_BASED),
    ([("zero", [])], QueueMode.DAX_BIO_BASED, QueueMode.DAX_BIO_BASED),
    # error is a wildcard: it never makes a table with devices DAX
    ([("linear", [pmem0]), ("error", [])], QueueMode.NONE, QueueMode.BIO_BASED),
])
def test_determine_type(targets, live, expected):
    assert determine_type(targets, live) == expected


def test_extension_can_declare_snapshot_targets_dax():
    targets = [("snapshot-origin", [pmem0])]
    assert determine_type(targets, dax_targets=LINUX_DAX_TARGETS | {"snapshot-origin"}) == \
        QueueMode.DAX_BIO_BASED


def test_valid_type_changes():
    assert is_valid_type(QueueMode.BIO_BASED, QueueMode.DAX_BIO_BASED)
    assert is_valid_type(QueueMode.DAX_BIO_BASED, QueueMode.DAX_BIO_BASED)
    assert not is_valid_type(QueueMode.DAX_BIO_BASED, QueueMode.BIO_BASED)


def test_first_table_fixes_the_type_and_bio_based_may_gain_dax():
    assert check_reload("vg-lv", "253:0", QueueMode.NONE, [("linear", [sdb])]) == \
        QueueMode.BIO_BASED
    assert check_reload("vg-lv", "253:0", QueueMode.BIO_BASED, [("linear", [pmem0])]) == \
        QueueMode.DAX_BIO_BASED


def test_snapshot_origin_over_dax_lv_is_refused_with_an_explanation():
    # lvcreate -s on an LV over pmem: the origin's table becomes snapshot-origin
    with pytest.raises(DMError) as info:
        check_reload("vg-lv", "253:0", QueueMode.DAX_BIO_BASED,
                     [("snapshot-origin", [pmem0])])
    assert info.value.errno == errno.EINVAL
    assert info.value.message == (
        "vg-lv (253:0): can't change device type (old=3 vs new=1) after initial table "
        "load. vg-lv is DAX-capable and the new table would make it not DAX-capable "
        "(target(s) without DAX support: snapshot-origin; DAX-capable devices: pmem0 "
        "(259:0); not DAX-capable: none). Unmount what uses vg-lv, remove the device and "
        "create it again with the new table, or load a table whose targets all support "
        "DAX over DAX-capable devices.")


def test_mixing_in_a_non_dax_device_names_it():
    with pytest.raises(DMError) as info:
        check_reload("vg-lv", "253:0", QueueMode.DAX_BIO_BASED,
                     [("linear", [pmem0]), ("linear", [sdb])])
    assert "DAX-capable devices: pmem0 (259:0); not DAX-capable: sdb (8:16)" in \
        info.value.message
    assert "target(s) without DAX support" not in info.value.message
