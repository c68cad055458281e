"""`dmsetup table` and `status` text of the targets, as Linux prints it."""
from dmemu.dm.exception_store import Usage
from dmemu.dm.persistent import PersistentStore
from dmemu.dm.status import (error_table_text, linear_table_text, origin_table_text,
                             snapshot_status_text, snapshot_table_text)
from dmemu.dm.table import format_table_line


def test_snapshot_rst_example():
    assert format_table_line(0, 2097152, "linear", linear_table_text("8:19", 384)) == \
        "0 2097152 linear 8:19 384"
    assert format_table_line(0, 2097152, "snapshot",
                             snapshot_table_text("254:11", "254:12", "P 16")) == \
        "0 2097152 snapshot 254:11 254:12 P 16"
    assert format_table_line(0, 2097152, "snapshot-origin", origin_table_text("254:11")) == \
        "0 2097152 snapshot-origin 254:11"
    assert format_table_line(0, 2097152, "linear", "") == "0 2097152 linear "


def test_snapshot_table_text_with_features():
    assert snapshot_table_text("253:0", "253:1", "PO 8",
                               ["discard_zeroes_cow", "discard_passdown_origin"]) == \
        "253:0 253:1 PO 8 2 discard_zeroes_cow discard_passdown_origin"
    assert error_table_text() == "" and error_table_text("259:0", 8) == "259:0 8"


def test_status_states_in_kernel_priority():
    usage = Usage(397896, 2097152, 1560)
    assert snapshot_status_text(usage) == "397896/2097152 1560"
    assert snapshot_status_text(usage, overflow=True) == "Overflow"
    assert snapshot_status_text(usage, merge_failed=True, overflow=True) == "Merge failed"
    assert snapshot_status_text(usage, valid=False, merge_failed=True) == "Invalid"
    assert snapshot_status_text(None) == "Unknown"


def test_table_shows_the_chunk_size_in_effect(cow4m):
    store = PersistentStore(cow4m, 0)
    store.read_metadata()
    assert snapshot_table_text("259:0", cow4m.devno, store.table_text()) == \
        "259:0 259:1 P 32"
