"""The on-PV formats without a daemon: label, MDA circular buffer, text metadata, sizes."""
import struct

import pytest

from dmemu.lvm.errors import LvmError
from dmemu.lvm.label import PV_EXT_USED, PVHeader, calc_crc
from dmemu.lvm.mda import MDA_HEADER_SIZE, MdaHeader, RawLocn, place_text, text_pieces
from dmemu.lvm.metadata import dump, parse
from dmemu.lvm.units import long_size, parse_size, report_size
from dmemu.lvm.vg import VG, LV, PV, Segment


def test_crc_is_lvms_seeded_crc32_without_final_inversion():
    # lvm2 lib/misc/crc.c: table-driven reflected CRC-32 from 0xf597a6cf, no xor at the end.
    def reference(data, crc=0xF597A6CF):
        for b in data:
            crc ^= b
            for _ in range(8):
                crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
        return crc
    for data in (b"", b"LVM2", bytes(range(256)) * 3):
        assert calc_crc(data) == reference(data)


def test_label_sector_layout_and_round_trip():
    h = PVHeader("A" * 32, 256 << 20, [(1 << 20, 0)], [(4096, (1 << 20) - 4096)], PV_EXT_USED)
    raw = h.pack()
    assert raw[:8] == b"LABELONE" and struct.unpack_from("<Q", raw, 8)[0] == 1
    assert struct.unpack_from("<I", raw, 20)[0] == 32 and raw[24:32] == b"LVM2 001"
    assert struct.unpack_from("<I", raw, 16)[0] == calc_crc(raw[20:])
    assert raw[32:64] == b"A" * 32
    # data areas {1 MiB, 0}{0,0}, metadata areas {4096, size}{0,0}, extension {2, used}
    assert struct.unpack_from("<8Q2I", raw, 72) == (1 << 20, 0, 0, 0, 4096, (1 << 20) - 4096, 0, 0, 2, 1)
    assert PVHeader.unpack(raw, 1) == h
    assert PVHeader.unpack(raw, 0) is None            # a label names its own sector
    bad = bytearray(raw)
    bad[40] ^= 1
    assert PVHeader.unpack(bytes(bad), 1) is None     # crc catches a flipped bit


def test_mda_header_round_trip_and_checksum():
    m = MdaHeader(4096, 1044480, RawLocn(512, 100, 1234, 0))
    raw = m.pack()
    assert raw[4:20] == b" LVM2 x[5A%r0N*>" and len(raw) == MDA_HEADER_SIZE
    assert MdaHeader.unpack(raw, 4096) == m
    assert MdaHeader.unpack(raw, 8192) is None
    assert MdaHeader.unpack(raw[:100] + b"x" + raw[101:], 4096) is None


def test_new_copies_follow_the_old_and_wrap_after_the_header():
    hdr = MdaHeader(4096, 4096, RawLocn())
    text = b"x" * 700 + b"\0"
    locn, writes = place_text(hdr, text)
    assert locn.offset == 512 and writes == [(4096 + 512, text)]
    hdr.locn = locn
    locn2, _ = place_text(hdr, text)
    assert locn2.offset == 512 + 1024                  # after the old copy, 512-aligned
    hdr.locn = RawLocn(3584, 701, calc_crc(text))      # a copy that ends past the area
    assert text_pieces(hdr, hdr.locn) == [(4096 + 3584, 512), (4096 + 512, 189)]
    locn3, writes3 = place_text(hdr, text)
    assert locn3.offset == 1024                         # 512 + 189 rounded up
    with pytest.raises(ValueError):
        place_text(hdr, b"y" * 3000)                    # old and new could not both fit


def make_vg():
    vg = VG("vg-0", "abcdef-ghij-klmn-opqr-stuv-wxyz-ABCDEF", 8192, seqno=3)
    vg.pvs["pv0"] = PV("pv0", "pvuuid-0000-0000-0000-0000-0000-000000", '/dev/pm"em0', 524288, 2048, 63)
    vg.lvs["lv0"] = LV("lv0", "lvuuid-0000-0000-0000-0000-0000-000001", segments=[Segment(0, 32, "striped", [("pv0", 0)])])
    vg.lvs["snap0"] = LV("snap0", "lvuuid-0000-0000-0000-0000-0000-000002", segments=[Segment(0, 1, "striped", [("pv0", 32)])])
    vg.lvs["snapshot0"] = LV("snapshot0", "lvuuid-0000-0000-0000-0000-0000-000003", ["READ", "WRITE"],
                             [Segment(0, 32, "snapshot", chunk_size=8, origin="lv0", cow_store="snap0")])
    return vg


def test_text_metadata_round_trips_a_vg_with_a_snapshot():
    vg = make_vg()
    text = dump(vg.export())
    assert text.startswith("vg-0 {\n\tid = \"abcdef-")
    assert 'stripes = ["pv0", 32]' in text and 'cow_store = "snap0"' in text
    assert 'contents = "Text Format Volume Group"' in text
    back = VG.from_tree(parse(text))
    assert back.to_tree() == vg.to_tree()
    assert back.snapshots_of("lv0") == ["snap0"] and back.is_cow("snap0")
    assert [lv.name for lv in back.user_lvs()] == ["lv0", "snap0"]


def test_malformed_metadata_is_an_error_not_a_crash():
    with pytest.raises(LvmError):
        parse("vg0 { id = ")
    with pytest.raises(LvmError):
        parse("vg0 { a = 1 } }")


def test_allocation_first_fit_and_contiguous_extension():
    vg = make_vg()
    assert vg.free_extents() == 30
    assert vg.allocate(5, ["pv0"]) == [("pv0", 33, 5)]
    with pytest.raises(LvmError, match="Insufficient free space: 31 extents needed, but only 30 available"):
        vg.allocate(31, ["pv0"])
    lv = vg.lvs["lv0"]
    vg.lvs["snapshot0"].segments.clear()
    del vg.lvs["snap0"]
    vg.add_areas(lv, vg.allocate(4, ["pv0"], after=("pv0", 32)))
    assert [(s.start_extent, s.extent_count, s.stripes) for s in lv.segments] == [(0, 36, [("pv0", 0)])]


@pytest.mark.parametrize("text, unit, expect", [
    ("128M", "m", 128 << 20), ("128m", "m", 128 << 20), ("1g", "m", 1 << 30), ("10", "m", 10 << 20),
    ("1.5k", "m", 1536), ("4096b", "m", 4096), ("8s", "m", 4096), ("4", "k", 4096),
])
def test_sizes_as_lvm_reads_them(text, unit, expect):
    assert parse_size(text, unit)[1] == expect


def test_sizes_as_lvm_prints_them():
    assert report_size(128 << 20) == "128.00m"
    assert report_size(1 << 30) == "1.00g"
    assert report_size((1 << 30) + (20 << 20)) == "<1.02g"
    assert report_size(128 << 20, "b") == "134217728B"
    assert report_size(128 << 20, "s") == "262144S"
    assert report_size(128 << 20, "k") == "131072.00k"
    assert report_size(128 << 20, "M") == "<134.22M"
    assert long_size(8 << 20) == "8.00 MiB"
