"""vgextend, vgreduce, vgck, lvresize/lvreduce, PE ranges, the report options and the
options that used to be accepted and ignored (-f, -ff, -y, -W), through the real commands."""
import os
import subprocess
import tempfile

import pytest

from tests.helpers import ok, tool
from tests.lvm.util import state


def run(*args, rc=0, out="", err="", input=None):
    r = tool(*args, input=input)
    assert (r.returncode, r.stdout, r.stderr) == (rc, out, err), args
    return r


@pytest.fixture
def mnt(pmem):
    d = tempfile.mkdtemp(prefix="lvmnt-", dir="/tmp")
    yield d
    subprocess.run(["fusermount3", "-u", "-z", d], capture_output=True)
    os.rmdir(d)


def test_vgextend_asks_before_wiping_a_filesystem_and_vgreduce_gives_pvs_back(pmem):
    ok("mkfs.daxfs", "/dev/disk0")
    run("vgcreate", "vg0", "/dev/pmem0", out='  Physical volume "/dev/pmem0" successfully created.\n'
                                           '  Volume group "vg0" successfully created\n')
    before = state()
    run("vgextend", "vg0", "/dev/disk0", rc=5, input="",
        err="WARNING: daxfs signature detected on /dev/disk0 at offset 0. Wipe it? [y/n]: [n]\n"
            "  Aborted wiping of daxfs.\n  /dev/disk0 not wiped: aborting.\n")
    run("vgextend", "vg0", "/dev/disk0", rc=5, input="n\n",
        err="WARNING: daxfs signature detected on /dev/disk0 at offset 0. Wipe it? [y/n]: "
            "  Aborted wiping of daxfs.\n  /dev/disk0 not wiped: aborting.\n")
    assert state() == before
    assert ok("pvs", "--noheadings", "-o", "pv_name") == "  /dev/pmem0\n"
    run("vgextend", "-y", "vg0", "/dev/disk0",
        out='  Wiping daxfs signature on /dev/disk0.\n'
            '  Physical volume "/dev/disk0" successfully created.\n'
            '  Volume group "vg0" successfully extended\n')
    assert ok("vgs", "--noheadings", "-o", "pv_count,vg_size") == "  2 312.00m\n"
    run("vgextend", "vg0", "/dev/disk0", rc=5,
        err="  Physical volume '/dev/disk0' is already in volume group 'vg0'\n"
            "  Unable to add physical volume '/dev/disk0' to volume group 'vg0'\n")
    run("lvcreate", "-l", "2", "-n", "a", "vg0", "/dev/disk0", out='  Logical volume "a" created.\n')
    before = state()
    run("vgreduce", "vg0", "/dev/disk0", rc=5, err='  Physical volume "/dev/disk0" still in use\n')
    run("vgreduce", "vg0", rc=3, err="  Please enter physical volume paths or option -a.\n")
    run("vgreduce", "-a", "vg0", "/dev/disk0", rc=3,
        err="  Option -a and physical volume paths mutually exclusive.\n")
    assert state() == before
    run("lvremove", "vg0/a", out='  Logical volume "a" successfully removed.\n')
    run("vgreduce", "vg0", "/dev/disk0", out='  Removed "/dev/disk0" from volume group "vg0"\n')
    run("vgreduce", "vg0", "/dev/pmem0", rc=5,
        err='  Can\'t remove final physical volume "/dev/pmem0" from volume group "vg0"\n')
    # An orphan PV again, and it stays one after a restart (its old metadata copy is gone).
    assert ok("pvs", "--noheadings", "-o", "pv_name,vg_name,pv_attr") == (
        "  /dev/disk0     ---\n  /dev/pmem0 vg0 a--\n")
    ok("dmemud", "stop")
    assert ok("pvs", "--noheadings", "-o", "pv_name,vg_name") == "  /dev/disk0    \n  /dev/pmem0 vg0\n"
    run("vgreduce", "-a", "vg0", out="")
    run("vgextend", "vg0", "/dev/disk0", out='  Volume group "vg0" successfully extended\n')
    run("vgreduce", "-a", "vg0", out='  Removed "/dev/pmem0" from volume group "vg0"\n')


def test_vgreduce_removemissing_and_vgck(pmem):
    run("vgcreate", "vg0", "/dev/pmem0", "/dev/disk0",
        out='  Physical volume "/dev/pmem0" successfully created.\n'
            '  Physical volume "/dev/disk0" successfully created.\n'
            '  Volume group "vg0" successfully created\n')
    ok("lvcreate", "-l", "2", "-n", "keep", "vg0", "/dev/pmem0")
    ok("lvcreate", "-l", "2", "-n", "lost", "vg0", "/dev/disk0")
    run("vgck", "vg0", out="")
    run("vgreduce", "--removemissing", "vg0", out='  Volume group "vg0" is already consistent.\n')
    uuid = ok("pvs", "--noheadings", "-o", "pv_uuid", "/dev/disk0").strip()
    ok("vgchange", "-an", "vg0")
    ok("dmemu", "disk", "destroy", "disk0")
    warn = (f"  WARNING: Couldn't find device with uuid {uuid}.\n"
            f"  WARNING: VG vg0 is missing PV {uuid} (last written to /dev/disk0).\n")
    run("vgck", "vg0", rc=5, err=warn + "  The volume group is missing 1 physical volumes.\n")
    run("vgreduce", "--removemissing", "vg0", rc=5,
        err=warn + "  WARNING: Partial LV lost needs to be repaired or removed. \n"
                   "  There are still partial LVs in VG vg0.\n"
                   "  To remove them unconditionally use: vgreduce --removemissing --force.\n")
    run("vgreduce", "--removemissing", "vg0", "/dev/pmem0", rc=3,
        err="  Please only specify the volume group.\n")
    run("vgreduce", "--removemissing", "--force", "vg0",
        out="  Wrote out consistent volume group vg0.\n",
        err=warn + "  WARNING: Removing partial LV vg0/lost.\n")
    run("vgck", "vg0", out="")
    assert ok("lvs", "--noheadings", "-o", "lv_name") == "  keep\n"
    assert ok("vgs", "--noheadings", "-o", "pv_count,lv_count") == "  1 1\n"


def test_vgck_reports_a_stale_copy_and_updatemetadata_rewrites_it(pmem):
    ok("vgcreate", "vg0", "/dev/pmem0", "/dev/disk0")
    ok("lvcreate", "-l", "1", "-n", "a", "vg0")
    # The copy on disk0 falls behind: a newer copy written to pmem0 alone, as a commit
    # interrupted between PVs leaves it.
    import trio
    from dmemu import client
    from dmemu.lvm.mda import MdaHeader, place_text
    from dmemu.lvm.metadata import dump
    from dmemu.lvm.store import Store

    async def commit_to_pmem0_only():
        async with client.connect(prog="test") as k:
            st = Store(k)
            await st.scan()
            vg = st.vgs["vg0"]
            vg.seqno += 1
            d = st.disk("/dev/pmem0")
            locn, writes = place_text(d.mda, dump(vg.export()).encode() + b"\0")
            hdr = MdaHeader(d.mda.start, d.mda.size, locn)
            await st._write(d.name, writes + [(hdr.start, hdr.pack())])
    trio.run(commit_to_pmem0_only)
    stale = ("  WARNING: ignoring metadata seqno 2 on /dev/disk0 for seqno 3 on /dev/pmem0 for VG vg0.\n"
             "  WARNING: Inconsistent metadata found for VG vg0.\n")
    run("vgck", "vg0", err=stale)
    run("vgck", "--updatemetadata", "vg0", err=stale)
    run("vgck", "vg0")
    assert ok("vgs", "--noheadings", "-o", "vg_seqno") == "  4\n"


def test_pe_ranges_place_extents_where_asked(pmem):
    ok("vgcreate", "vg0", "/dev/pmem0", "/dev/disk0")
    run("lvcreate", "-l", "2", "-n", "a", "vg0", "/dev/pmem0:10-11", out='  Logical volume "a" created.\n')
    run("lvcreate", "-l", "3", "-n", "b", "vg0", "/dev/pmem0:20+1:30-31", out='  Logical volume "b" created.\n')
    run("lvextend", "-l", "+1", "vg0/a", "/dev/disk0:5",
        out="  Size of logical volume vg0/a changed from 8.00 MiB (2 extents) to 12.00 MiB (3 extents).\n"
            "  Logical volume vg0/a successfully resized.\n")
    assert ok("lvs", "--noheadings", "-o", "lv_name,seg_pe_ranges,devices,seg_type") == (
        "  a /dev/pmem0:10-11 /dev/pmem0(10) linear\n"
        "  a /dev/disk0:5-5   /dev/disk0(5)  linear\n"
        "  b /dev/pmem0:20-20 /dev/pmem0(20) linear\n"
        "  b /dev/pmem0:30-31 /dev/pmem0(30) linear\n")
    assert "0 16384 linear 259:0 83968\n16384 8192 linear" in ok("dmsetup", "table", "vg0-a")
    before = state()
    run("lvcreate", "-l", "1", "vg0", "/dev/pmem0:10", rc=5,
        err="  Insufficient free space: 1 extents needed, but only 0 available\n")
    run("lvcreate", "-l", "1", "vg0", "/dev/pmem0:9-999", rc=5,
        err="  PE range error: start extent 9 to end extent 999.\n")
    run("lvcreate", "-l", "1", "vg0", "/dev/pmem0:x", rc=5,
        err="  Physical extent parsing error at x.\n")
    run("lvcreate", "-l", "1", "vg0", "/dev/pmem0:3::", rc=5,
        err="  Physical extent parsing error at ::.\n")
    assert state() == before


def test_lvresize_and_lvreduce_with_and_without_a_filesystem(pmem, mnt):
    ok("vgcreate", "vg0", "/dev/pmem0")
    ok("lvcreate", "-L", "32M", "-n", "lv0", "vg0")
    run("lvreduce", "-L", "+4M", "vg0/lv0", rc=3, err="  Invalid argument for --size: +4M\n")
    run("lvextend", "-L", "-4M", "vg0/lv0", rc=3, err="  Invalid argument for --size: -4M\n")
    run("lvreduce", "-L", "64M", "vg0/lv0", rc=5,
        err="  New size given (16 extents) not less than existing size (8 extents)\n")
    run("lvresize", "-L", "32M", "vg0/lv0", rc=5, out="  New size (8 extents) matches existing size (8 extents).\n",
        err="  No size change.\n")
    run("lvreduce", "-l", "-8", "vg0/lv0", rc=5, err="  Unable to reduce vg0/lv0 below 1 extent.\n")
    run("lvreduce", "-L", "-8M", "vg0/lv0",
        out="  No file system found on /dev/vg0/lv0.\n"
            "  Size of logical volume vg0/lv0 changed from 32.00 MiB (8 extents) to 24.00 MiB (6 extents).\n"
            "  Logical volume vg0/lv0 successfully resized.\n")
    assert ok("dmsetup", "table", "vg0-lv0") == "0 49152 linear 259:0 2048\n"
    ok("mkfs.daxfs", "/dev/vg0/lv0")
    refusal = ("  File system daxfs found on vg0/lv0{}.\n"
               "  File system size (24.00 MiB) is larger than the requested size (16.00 MiB).\n")
    err = "  File system reduce is required (see --resizefs or cmd line options.)\n"
    run("lvreduce", "-L", "16M", "vg0/lv0", rc=5, out=refusal.format(""), err=err)
    run("daxfs", "/dev/vg0/lv0", mnt)
    before = state()
    with open(f"{mnt}/f", "w") as f:
        f.write("data")
    run("lvresize", "-L", "-8M", "vg0/lv0", rc=5, out=refusal.format(f" mounted at {mnt}"), err=err)
    # a mounted daxfs only grows online: -r would unmount it to shrink it, as lvm2 does
    # ext4, and asks first; the answer no changes nothing
    run("lvreduce", "-r", "-L", "-8M", "vg0/lv0", rc=5, input="n\n",
        out=refusal.format(f" mounted at {mnt}") + "  File system reduce is required using daxfs-resize.\n"
            "  File system unmount is needed for reduce.\n"
            "  File system fsck will be run before reduce.\n",
        err="Continue with daxfs file system reduce steps: unmount, fsck, daxfs-resize? [y/n]:"
            "  File system not reduced.\n")
    run("lvreduce", "--fs", "ignore", "-L", "-8M", "vg0/lv0", rc=5, input="n\n",
        err="  WARNING: Reducing active and open logical volume to 16.00 MiB.\n"
            "  THIS MAY DESTROY YOUR DATA (filesystem etc.)\n"
            "Do you really want to reduce vg0/lv0? [y/n]:   Logical volume vg0/lv0 NOT reduced.\n")
    assert state() == before
    # Growing is fine while mounted, and a reduce that stays above the filesystem too.
    run("lvextend", "-L", "+8M", "vg0/lv0",
        out="  Size of logical volume vg0/lv0 changed from 24.00 MiB (6 extents) to 32.00 MiB (8 extents).\n"
            "  Logical volume vg0/lv0 successfully resized.\n")
    run("lvreduce", "-L", "24M", "vg0/lv0",
        out=refusal.format(f" mounted at {mnt}").replace("is larger than the requested size (16.00",
                                                          "is equal to the requested size (24.00")
            + "  File system reduce is not needed, skipping.\n"
              "  Size of logical volume vg0/lv0 changed from 32.00 MiB (8 extents) to 24.00 MiB (6 extents).\n"
              "  Logical volume vg0/lv0 successfully resized.\n")
    with open(f"{mnt}/f") as f:
        assert f.read() == "data"
    subprocess.run(["fusermount3", "-u", mnt], check=True)
    ok("lvchange", "-an", "vg0/lv0")
    run("lvreduce", "-L", "-4M", "vg0/lv0", rc=5,
        err="  The LV must be active to safely reduce (see --fs options.)\n")
    run("lvreduce", "-y", "--fs", "ignore", "-L", "-4M", "vg0/lv0",
        out="  Size of logical volume vg0/lv0 changed from 24.00 MiB (6 extents) to 20.00 MiB (5 extents).\n"
            "  Logical volume vg0/lv0 successfully resized.\n")


def test_reports_select_separator_nosuffix_and_segments(pmem):
    ok("vgcreate", "vg0", "/dev/pmem0", "/dev/disk0")
    ok("lvcreate", "-L", "8M", "-n", "small", "vg0", "/dev/pmem0")
    ok("lvcreate", "-L", "20M", "-n", "big", "vg0", "/dev/pmem0")
    ok("lvcreate", "-s", "-L", "4M", "-n", "snap", "vg0/big")
    assert ok("lvs", "-S", "lv_size>8m", "-o", "lv_name,lv_size") == "  LV  LSize \n  big 20.00m\n"
    assert ok("lvs", "-S", "origin=big || lv_name=small", "--noheadings", "-o", "name") == "  small\n  snap \n"
    assert ok("lvs", "-S", "lv_attr=~^o && vg_name=vg0", "--noheadings", "-o", "name") == "  big\n"
    assert ok("lvs", "-S", "lv_name!=big,lv_size<=8", "--noheadings", "-o", "name") == "  small\n  snap \n"
    assert ok("lvs", "--noheadings", "--separator", ":", "--nosuffix", "--units", "k",
              "-o", "lv_name,lv_size,origin") == "  big:20480.00:\n  small:8192.00:\n  snap:4096.00:big\n"
    assert ok("lvs", "--separator", ",", "-o", "lv_name,seg_type", "-S", "lv_name=small") == \
        "  LV,Type\n  small,linear\n"
    assert ok("vgs", "-S", "vg_free>1g") == ""
    assert ok("pvs", "-S", "pv_name=/dev/disk0", "--noheadings", "-o", "pv_name,pv_free",
              "--units", "m") == "  /dev/disk0 60.00m\n"
    run("lvs", "-S", "nosuch=1", rc=3, err="  Unrecognised selection field: nosuch\n")
    run("lvs", "-S", "lv_name>x", rc=3,
        err="  Operator > can be used only with number or size fields: lv_name.\n")
    run("lvs", "-S", "lv_name", rc=3, err="  Selection syntax error at 'lv_name'.\n")


def test_force_and_yes_do_what_lvm2_does_with_them(pmem):
    ok("vgcreate", "vg0", "/dev/pmem0")
    run("pvcreate", "-f", "/dev/pmem0", rc=5,
        err='  Can\'t initialize physical volume "/dev/pmem0" of volume group "vg0" without -ff\n'
            "  /dev/pmem0: physical volume not initialized.\n")
    run("pvremove", "-f", "/dev/pmem0", rc=5,
        err="  PV /dev/pmem0 is used by VG vg0 so please use vgreduce first.\n"
            "  (If you are certain you need pvremove, then confirm by using --force twice.)\n"
            "  /dev/pmem0: physical volume label not removed.\n")
    run("pvremove", "-ff", "/dev/pmem0", rc=5, input="",
        err="  WARNING: PV /dev/pmem0 is used by VG vg0.\n"
            'Really WIPE LABELS from physical volume "/dev/pmem0" of volume group "vg0" [y/n]? [n]\n'
            "  /dev/pmem0: physical volume label not removed.\n")
    assert ok("vgs", "--noheadings", "-o", "vg_name") == "  vg0\n"
    run("pvremove", "-ff", "-y", "/dev/pmem0",
        out='  Labels on physical volume "/dev/pmem0" successfully wiped.\n',
        err="  WARNING: PV /dev/pmem0 is used by VG vg0.\n"
            '  WARNING: Wiping physical volume label from /dev/pmem0 of volume group "vg0".\n')
    assert ok("pvs") == ""
    # vgcreate -f wipes a filesystem without asking; lvcreate -W y asks about one left
    # in the extents it is given, -W n leaves it (and -Z n the start too).
    ok("mkfs.daxfs", "/dev/pmem0")
    run("vgcreate", "-f", "vg1", "/dev/pmem0",
        out='  Wiping daxfs signature on /dev/pmem0.\n'
            '  Physical volume "/dev/pmem0" successfully created.\n'
            '  Volume group "vg1" successfully created\n')
    ok("lvcreate", "-L", "16M", "-n", "a", "vg1")
    ok("mkfs.daxfs", "/dev/vg1/a")
    ok("lvremove", "vg1/a")
    run("lvcreate", "-L", "16M", "-n", "b", "vg1", rc=5, input="n\n",
        err="WARNING: daxfs signature detected on /dev/vg1/b at offset 0. Wipe it? [y/n]: "
            "  Aborted wiping of daxfs.\n  Aborting. Failed to wipe start of new LV.\n")
    assert ok("lvs", "--noheadings", "-o", "lv_name") == ""
    run("lvcreate", "-W", "n", "-Z", "n", "-L", "16M", "-n", "c", "vg1",
        out='  Logical volume "c" created.\n')
    assert tool("fsck.daxfs", "-n", "/dev/vg1/c").returncode == 0
    ok("lvremove", "vg1/c")
    run("lvcreate", "-y", "-L", "16M", "-n", "d", "vg1",
        out='  Wiping daxfs signature on /dev/vg1/d.\n  Logical volume "d" created.\n')
    assert tool("fsck.daxfs", "-n", "/dev/vg1/d").returncode != 0


def test_quiet_silences_success_and_qq_answers_no(pmem):
    run("vgcreate", "-q", "vg0", "/dev/pmem0", out="")
    run("lvcreate", "-q", "-L", "8M", "-n", "a", "vg0", out="")
    ok("mkfs.daxfs", "/dev/vg0/a")
    run("lvreduce", "-qq", "--fs", "ignore", "-L", "-4M", "vg0/a", rc=5,
        err="  WARNING: Reducing active logical volume to 4.00 MiB.\n"
            "  THIS MAY DESTROY YOUR DATA (filesystem etc.)\n"
            "  Logical volume vg0/a NOT reduced.\n")
    assert ok("lvs", "-q", "--noheadings", "-o", "lv_name,lv_size") == "  a 8.00m\n"


def test_pvs_all_lists_devices_without_a_pv(pmem):
    ok("pvcreate", "/dev/disk0")
    assert ok("pvs", "-a") == ("  PV         VG Fmt  Attr PSize  PFree \n"
                               "  /dev/disk0    lvm2 ---  64.00m 64.00m\n"
                               "  /dev/pmem0         ---      0      0 \n")
    assert ok("pvs") == ("  PV         VG Fmt  Attr PSize  PFree \n"
                         "  /dev/disk0    lvm2 ---  64.00m 64.00m\n")
