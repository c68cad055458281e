"""Metadata that passes its checksum but not validation: skipped with lvm2's warning.

lvm2 reads every PV's copy, warns "bad metadata text on PV in mda1" for one that does not
import, and goes on with a good copy from another PV; with none left the VG is simply not
found. Neither a crash nor an LV mapped over a PV's label or metadata area, whatever the
copy says.
"""
import re

import pytest
import trio

from scripts.fuzzing.lvm import _read_text, _write_text
from tests.helpers import ok, tool


@pytest.fixture
def vg(pmem):
    ok("pvcreate", "/dev/pmem0", "/dev/disk0")
    ok("vgcreate", "vg0", "/dev/pmem0", "/dev/disk0")
    ok("lvcreate", "-L", "8M", "-n", "lv0", "vg0", "/dev/pmem0")
    ok("vgchange", "-an", "vg0")
    return trio.run(_read_text, "vg0")


def _newer(text: str) -> str:
    return re.sub(r"seqno = (\d+)", lambda m: f"seqno = {int(m.group(1)) + 5}", text, count=1)


def _clean(r):
    assert "Traceback" not in r.stderr and "Error:" not in r.stderr, r.stderr
    return r


CORRUPTIONS = [
    ("nested", lambda t: t.replace("logical_volumes {", "logical_volumes {\n" + "a { " * 5000 + "}" * 5000, 1)),
    ("dangling pv", lambda t: t.replace('stripes = ["pv0", 0]', 'stripes = ["pv9", 0]')),
    ("extent_size as a string", lambda t: re.sub(r"extent_size = \d+", 'extent_size = "x"', t)),
    ("huge pe_count", lambda t: re.sub(r"pe_count = \d+", "pe_count = 18446744073709551616", t, count=1)),
    ("float", lambda t: re.sub(r"pe_start = \d+", "pe_start = 1e400", t, count=1)),
    ("pe_start on the label", lambda t: re.sub(r"pe_start = \d+", "pe_start = 7", t, count=1)),
    ("segment count", lambda t: t.replace("segment_count = 1", "segment_count = 2")),
    ("id as a list", lambda t: re.sub(r'id = "[^"]+"', "id = [1]", t, count=1)),
]


@pytest.mark.parametrize("what, corrupt", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_a_bad_copy_on_one_pv_is_skipped_and_the_good_one_used(vg, what, corrupt):
    bad = corrupt(_newer(vg))
    assert bad != _newer(vg)
    trio.run(_write_text, ["/dev/pmem0"], bad)
    r = _clean(tool("lvs", "--noheadings", "-o", "lv_name,vg_name"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["lv0", "vg0"]
    assert "WARNING: bad metadata text on /dev/pmem0 in mda1" in r.stderr
    r = _clean(tool("vgchange", "-ay", "vg0"))
    assert r.returncode == 0, r.stderr
    # Activated from the good copy: the LV starts at the PV's data area (sector 2048).
    assert ok("dmsetup", "table", "vg0-lv0").split()[2:] == ["linear", "259:0", "2048"]


@pytest.mark.parametrize("what, corrupt", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_with_no_good_copy_the_vg_is_not_found_and_nothing_is_mapped(vg, what, corrupt):
    trio.run(_write_text, ["/dev/pmem0", "/dev/disk0"], corrupt(_newer(vg)))
    r = _clean(tool("vgchange", "-ay", "vg0"))
    assert r.returncode == 5
    assert 'Volume group "vg0" not found' in r.stderr
    assert "/dev/pmem0" in r.stderr and "/dev/disk0" in r.stderr
    assert ok("dmsetup", "ls").strip() in ("", "No devices found")


def test_a_valid_looking_copy_never_maps_an_lv_over_the_label(vg):
    # pe_start below the metadata area, with a consistent dev_size: syntactically perfect.
    bad = re.sub(r"pe_start = \d+", "pe_start = 8", _newer(vg))
    trio.run(_write_text, ["/dev/pmem0", "/dev/disk0"], bad)
    r = _clean(tool("vgchange", "-ay", "vg0"))
    assert r.returncode != 0
    assert "overlaps its label or metadata area" in r.stderr
    assert ok("dmsetup", "ls").strip() in ("", "No devices found")
