"""Metadata on real dmemu devices: where it lands, the circular MDA over many commits, and
what a scan believes after a torn or partial commit."""
from dmemu import client
from dmemu.lvm.label import calc_crc
from dmemu.lvm.mda import MDA_START, MdaHeader
from dmemu.lvm.store import Store
from tests.helpers import ok


async def test_vgcreate_writes_lvm2s_layout(pmem):
    ok("vgcreate", "vg0", "/dev/pmem0")
    async with client.connect() as k:
        dev = await k.open_device("/dev/pmem0", read_only=True)
        head = await dev.read(0, 8192)
        assert head[:512] == bytes(512)                          # sector 0 left for others
        assert head[512:520] == b"LABELONE" and head[536:544] == b"LVM2 001"
        hdr = MdaHeader.unpack(head[MDA_START:MDA_START + 512], MDA_START)
        assert hdr.size == (1 << 20) - 4096 and hdr.locn.offset == 512
        text = await dev.read((MDA_START + 512) // 512, hdr.locn.size)
        assert text.startswith(b"vg0 {\n\tid = ") and text.endswith(b"\0")
        assert calc_crc(text) == hdr.locn.checksum
        assert b'\tcontents = "Text Format Volume Group"' not in text      # top level, no tab
        assert b'\ncontents = "Text Format Volume Group"\n' in text
        await dev.close()


async def test_metadata_wraps_around_the_mda_and_reads_back(pmem):
    ok("vgcreate", "vg0", "/dev/pmem0", "/dev/disk0")
    ok("lvcreate", "-L", "4M", "-n", "lv0", "vg0")
    async with client.connect() as k:
        st = Store(k)
        await st.scan()
        vg = st.vg("vg0")
        offsets = []
        for i in range(900):        # ~1.4 KiB each: the 1 MiB area wraps more than once
            vg.lvs["lv0"].creation_time = i
            await st.commit(vg)
            offsets.append(st.disk("/dev/pmem0").mda.locn.offset)
        assert max(offsets) > (1 << 20) - 8192
        wraps = [b for a, b in zip(offsets, offsets[1:]) if b < a]
        assert len(wraps) >= 1 and all(b < 4096 for b in wraps)     # back to just past the header
        fresh = Store(k)
        await fresh.scan()
        again = fresh.vg("vg0")
        assert again.seqno == vg.seqno == 902 and again.lvs["lv0"].creation_time == 899
    assert ok("lvs", "--noheadings", "-o", "lv_name,vg_seqno") == "  lv0 902\n"


class DiesAfter(Store):
    """A store whose machine dies part-way through a commit: after ``writes`` device
    writes, or (header_only) just before the MDA header of the second PV."""

    def __init__(self, k, calls: int, drop_header: bool):
        super().__init__(k)
        self.calls, self.drop_header = calls, drop_header

    async def _write(self, name, writes):
        if self.calls == 0:
            if self.drop_header:
                await super()._write(name, writes[:-1])      # the text, not the header
            raise OSError(5, "power failure")
        self.calls -= 1
        await super()._write(name, writes)


async def rename_with(st: Store, old: str, new: str) -> int:
    await st.scan()
    vg = st.vg("vg0")
    seqno = vg.seqno
    lv = vg.lvs.pop(old)
    lv.name = new
    vg.lvs[new] = lv
    try:
        await st.commit(vg)
    except OSError:
        pass
    return seqno


async def scanned(k):
    fresh = Store(k)
    await fresh.scan()
    vg = fresh.vg("vg0")
    return vg.seqno, list(vg.lvs)


async def test_a_torn_commit_reads_as_the_newest_whole_copy(pmem):
    ok("vgcreate", "vg0", "/dev/pmem0", "/dev/disk0")
    ok("lvcreate", "-L", "4M", "-n", "lv0", "vg0")
    async with client.connect() as k:
        # Died after pmem0 was written, before disk0: the higher seqno (pmem0's) wins.
        seqno = await rename_with(DiesAfter(k, 1, False), "lv0", "lv1")
        assert await scanned(k) == (seqno + 1, ["lv1"])
        # Died after writing the text on pmem0 but not the header pointing at it: the
        # copy the header points to stands, on every PV.
        seqno = await rename_with(DiesAfter(k, 0, True), "lv1", "lv2")
        assert await scanned(k) == (seqno, ["lv1"])
        # A complete commit brings every PV to the same copy again.
        seqno = await rename_with(Store(k), "lv1", "lv3")
        assert await scanned(k) == (seqno + 1, ["lv3"])
    assert ok("lvs", "--noheadings", "-o", "lv_name") == "  lv3\n"


def test_metadata_survives_a_power_failure_on_adr_pmem_and_a_cached_disk(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "64M", "--persistence", "adr")
    ok("dmemu", "disk", "create", "-s", "16M")      # a volatile write cache
    ok("vgcreate", "vg0", "/dev/pmem0", "/dev/disk0")
    ok("lvcreate", "-L", "8M", "-n", "lv0", "vg0", "/dev/disk0")
    ok("lvcreate", "-L", "8M", "-n", "lv1", "vg0")
    ok("lvrename", "vg0", "lv1", "lv2")
    out = ok("ndctl", "power-fail")
    assert out == ("disk0: power failed, 0 bytes not yet durable were lost\n"
                   "pmem0: power failed, 0 bytes not yet durable were lost\n")
    assert ok("vgchange", "-ay") == '  2 logical volume(s) in volume group "vg0" now active\n'
    assert ok("lvs", "--noheadings", "-o", "lv_name,vg_seqno,devices") == (
        "  lv0 4 /dev/disk0(0)\n  lv2 4 /dev/pmem0(0)\n")
