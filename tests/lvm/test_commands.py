"""The lvm commands as a user meets them: whole stdout and stderr, exit codes, DM tables."""
import json


from tests.helpers import ok, tool
from tests.lvm.util import state

LVS_HEAD = "  LV    VG  Attr       LSize   Pool Origin Data%  Meta%  Move Log Cpy%Sync Convert\n"


def run(*args, rc=0, out="", err=""):
    r = tool(*args)
    assert (r.returncode, r.stdout, r.stderr) == (rc, out, err), args
    return r


def seed():
    """The 2018 report's three commands."""
    run("lvm", "vgcreate", "-f", "vg0", "/dev/pmem0", out='  Physical volume "/dev/pmem0" successfully created.\n'
                                                         '  Volume group "vg0" successfully created\n')
    run("lvm", "lvcreate", "-L", "128M", "-n", "lv0", "vg0", out='  Logical volume "lv0" created.\n')
    run("lvm", "lvcreate", "-s", "-L", "4M", "-n", "snap0", "vg0/lv0", out='  Logical volume "snap0" created.\n')


def test_seed_scenario_builds_lvms_stack(pmem):
    seed()
    assert ok("lvs") == LVS_HEAD + (
        "  lv0   vg0 owi-a-s--- 128.00m                                                    \n"
        "  snap0 vg0 swi-a-s---   4.00m      lv0      0.00                                 \n")
    # vg0-lv0 kept its device (253:0) and was reloaded in place as the snapshot-origin.
    assert ok("dmsetup", "ls") == ("vg0-lv0      \t(253:0)\nvg0-lv0-real \t(253:1)\n"
                                   "vg0-snap0    \t(253:3)\nvg0-snap0-cow\t(253:2)\n")
    assert ok("dmsetup", "table") == (
        "vg0-lv0: 0 262144 snapshot-origin 253:1\n"
        "vg0-lv0-real: 0 262144 linear 259:0 2048\n"
        "vg0-snap0: 0 262144 snapshot 253:1 253:2 P 8\n"
        "vg0-snap0-cow: 0 8192 linear 259:0 264192\n")
    info = ok("dmsetup", "info", "-c", "--noheadings").splitlines()
    uuids = {line.split()[0]: line.split()[-1] for line in info}
    vg_uuid = ok("vgs", "--noheadings", "-o", "vg_uuid").strip().replace("-", "")
    lv_uuids = dict(line.split() for line in ok("lvs", "--noheadings", "-o", "lv_name,lv_uuid").splitlines())
    lv0, snap0 = lv_uuids["lv0"].replace("-", ""), lv_uuids["snap0"].replace("-", "")
    assert uuids == {"vg0-lv0": f"LVM-{vg_uuid}{lv0}", "vg0-lv0-real": f"LVM-{vg_uuid}{lv0}-real",
                     "vg0-snap0": f"LVM-{vg_uuid}{snap0}", "vg0-snap0-cow": f"LVM-{vg_uuid}{snap0}-cow"}
    # Both the origin and the snapshot stay DAX-capable (all their devices are pmem).
    assert ok("lvs", "--noheadings", "-o", "lv_name,lv_dax") == "  lv0   yes\n  snap0 yes\n"
    assert ok("vgs") == ("  VG  #PV #LV #SN Attr   VSize   VFree  \n"
                         "  vg0   1   2   1 wz--n- 252.00m 120.00m\n")
    assert ok("pvs") == ("  PV         VG  Fmt  Attr PSize   PFree  \n"
                         "  /dev/pmem0 vg0 lvm2 a--  252.00m 120.00m\n")


def test_pv_commands(pmem):
    ok("dmsetup", "create", "other", "--table", "0 100 linear /dev/disk0 0")
    for args in (("pvcreate", "/dev/disk0"), ("vgcreate", "vg9", "/dev/pmem0", "/dev/disk0")):
        run(*args, rc=5, err="  Can't open /dev/disk0 exclusively.  Mounted filesystem?\n")
    assert ok("pvs") == ""
    ok("dmsetup", "remove", "other")
    run("pvcreate", "/dev/pmem0", "disk0", out='  Physical volume "/dev/pmem0" successfully created.\n'
                                              '  Physical volume "/dev/disk0" successfully created.\n')
    assert ok("pvs") == ("  PV         VG Fmt  Attr PSize   PFree  \n"
                         "  /dev/disk0    lvm2 ---   64.00m  64.00m\n"
                         "  /dev/pmem0    lvm2 ---  256.00m 256.00m\n")
    assert ok("pvs", "--units", "s", "--noheadings", "-o", "pv_name,pv_size", "/dev/disk0") == \
        "  /dev/disk0 131072S\n"
    run("pvremove", "/dev/disk0", out='  Labels on physical volume "/dev/disk0" successfully wiped.\n')
    run("pvremove", "/dev/disk0", rc=5, err="  No PV found on device /dev/disk0.\n")
    run("pvcreate", "/dev/pmem9", rc=5, err="  No device found for /dev/pmem9.\n")
    run("vgcreate", "vg0", "/dev/pmem0", out='  Volume group "vg0" successfully created\n')
    before = state()
    run("pvremove", "/dev/pmem0", rc=5, err="  PV /dev/pmem0 is used by VG vg0 so please use vgreduce first.\n"
        "  (If you are certain you need pvremove, then confirm by using --force twice.)\n"
        "  /dev/pmem0: physical volume label not removed.\n")
    run("pvcreate", "/dev/pmem0", rc=5,
        err='  Can\'t initialize physical volume "/dev/pmem0" of volume group "vg0" without -ff\n'
            "  /dev/pmem0: physical volume not initialized.\n")
    assert state() == before


def test_vg_commands_extent_size_and_removal(pmem):
    run("vgcreate", "-s", "8M", "vg1", "/dev/pmem0", "/dev/disk0",
        out='  Physical volume "/dev/pmem0" successfully created.\n'
            '  Physical volume "/dev/disk0" successfully created.\n'
            '  Volume group "vg1" successfully created\n')
    assert ok("vgs", "vg1") == ("  VG  #PV #LV #SN Attr   VSize   VFree  \n"
                                "  vg1   2   0   0 wz--n- 304.00m 304.00m\n")
    run("lvcreate", "-L", "10m", "-n", "a", "vg1",
        out="  Rounding up size to full physical extent 16.00 MiB\n  Logical volume \"a\" created.\n")
    run("lvcreate", "-l", "50%FREE", "vg1", "/dev/disk0", out='  Logical volume "lvol0" created.\n')
    assert ok("lvs", "--noheadings", "-o", "lv_name,lv_size,devices") == (
        "  a     16.00m /dev/pmem0(0)\n  lvol0 24.00m /dev/disk0(0)\n")
    run("vgchange", "-an", "vg1", out='  0 logical volume(s) in volume group "vg1" now active\n')
    assert ok("dmsetup", "ls") == "No devices found\n"
    run("vgchange", "-ay", out='  2 logical volume(s) in volume group "vg1" now active\n')
    before = state()
    run("vgremove", "vg1", rc=5, err='  Volume group "vg1" still contains 2 logical volume(s): '
                                     'remove them first, or use -f to remove them too.\n')
    assert state() == before
    run("vgremove", "-f", "vg1", out='  Logical volume "a" successfully removed.\n'
                                     '  Logical volume "lvol0" successfully removed.\n'
                                     '  Volume group "vg1" successfully removed\n')
    assert ok("vgs") == "" and ok("dmsetup", "ls") == "No devices found\n"
    assert ok("pvs", "--noheadings", "-o", "pv_name,vg_name,pv_attr") == (
        "  /dev/disk0  ---\n  /dev/pmem0  ---\n")
    run("vgcreate", "vg1", "/dev/pmem0", out='  Volume group "vg1" successfully created\n')


def test_lvs_formats_and_names(pmem):
    seed()
    assert ok("lvs", "--noheadings", "--units", "b", "vg0/snap0") == \
        "  snap0 vg0 swi-a-s--- 4194304B  lv0   0.00                   \n"
    assert ok("lvs", "-o", "lv_name,lv_size", "--units", "k", "/dev/vg0/lv0") == \
        "  LV  LSize     \n  lv0 131072.00k\n"
    assert ok("lvs", "-o", "name,size,origin,snap_percent", "/dev/mapper/vg0-snap0") == \
        "  LV    LSize Origin Data% \n  snap0 4.00m lv0      0.00\n"
    assert ok("lvs", "-a", "--noheadings", "-o", "lv_name") == "  lv0  \n  snap0\n"
    report = json.loads(ok("lvs", "--reportformat", "json", "-o", "lv_name,lv_attr,origin"))
    assert report == {"report": [{"lv": [{"lv_name": "lv0", "lv_attr": "owi-a-s---", "origin": ""},
                                         {"lv_name": "snap0", "lv_attr": "swi-a-s---", "origin": "lv0"}]}]}
    assert ok("lvs", "--reportformat", "json", "-o", "lv_name", "vg0/lv0") == (
        '  {\n      "report": [\n          {\n              "lv": [\n'
        '                  {"lv_name":"lv0"}\n              ]\n          }\n      ]\n  }\n')
    run("lvs", "-o", "lv_bogus", rc=3, err="  Unrecognised field: lv_bogus\n")
    run("lvs", "vg1", rc=5, err='  Volume group "vg1" not found\n')
    run("lvs", "--units", "x", rc=3,
        err="  lvs: argument --units: Invalid argument for --units: x; see 'lvs --help'\n")


def test_rename_extend_and_remove(pmem):
    seed()
    run("lvrename", "vg0", "lv0", "data", out='  Renamed "lv0" to "data" in volume group "vg0"\n')
    run("lvrename", "vg0/snap0", "vg0/before", out='  Renamed "snap0" to "before" in volume group "vg0"\n')
    assert ok("dmsetup", "ls") == ("vg0-before    \t(253:3)\nvg0-before-cow\t(253:2)\n"
                                   "vg0-data      \t(253:0)\nvg0-data-real \t(253:1)\n")
    assert ok("lvs", "--noheadings", "-o", "lv_name,origin") == "  before data\n  data       \n"
    before = state()
    run("lvextend", "-L", "+8M", "vg0/data", rc=5,
        err="  Snapshot origin volumes can be resized only while inactive: try lvchange -an.\n")
    run("lvremove", "vg0/data", rc=5, err='  Can\'t remove logical volume "data" with 1 snapshot(s): '
                                          'remove them first, or use -f to remove them too.\n')
    assert state() == before
    run("lvremove", "/dev/vg0/before", out='  Logical volume "before" successfully removed.\n')
    # The last snapshot gone, the origin is a plain linear LV again, in place.
    assert ok("dmsetup", "table") == "vg0-data: 0 262144 linear 259:0 2048\n"
    run("lvextend", "-l", "+2", "/dev/mapper/vg0-data",
        out="  Size of logical volume vg0/data changed from 128.00 MiB (32 extents) to "
            "136.00 MiB (34 extents).\n  Logical volume vg0/data successfully resized.\n")
    assert ok("dmsetup", "table") == "vg0-data: 0 278528 linear 259:0 2048\n"
    run("lvextend", "-L", "100M", "vg0/data", rc=5,
        err="  New size given (25 extents) not larger than existing size (34 extents)\n")
    run("lvcreate", "-s", "-L", "4M", "-n", "s1", "vg0/data", out='  Logical volume "s1" created.\n')
    run("lvcreate", "-s", "-c", "8k", "-L", "4M", "-n", "s2", "vg0/data", out='  Logical volume "s2" created.\n')
    tables = ok("dmsetup", "table")
    assert "vg0-s1: 0 278528 snapshot 253:1 253:2 P 8\n" in tables
    assert "vg0-s2: 0 278528 snapshot 253:1 253:4 P 16\n" in tables
    run("lvremove", "-f", "vg0/data", out='  Logical volume "s1" successfully removed.\n'
                                          '  Logical volume "s2" successfully removed.\n'
                                          '  Logical volume "data" successfully removed.\n')
    assert ok("lvs") == "" and ok("dmsetup", "ls") == "No devices found\n"
    assert ok("vgs", "--noheadings", "-o", "vg_free_count") == "  63\n"


def test_merge_refusals(pmem):
    seed()
    run("lvcreate", "-s", "-L", "4M", "-n", "snap1", "vg0/lv0", out='  Logical volume "snap1" created.\n')
    before = state()
    run("lvconvert", "--merge", "vg0/snap0", rc=5,
        err="  Unable to merge vg0/snap0: origin vg0/lv0 has other snapshots (snap1); remove them first.\n")
    run("lvconvert", "--merge", "vg0/lv0", rc=5, err="  vg0/lv0 is not a mergeable logical volume.\n")
    run("lvconvert", "vg0/snap0", rc=3, err="  Only --merge of a snapshot is supported here.\n")
    assert state() == before


REFUSALS = [
    (("lvcreate", "-L", "4M", "-n", "x", "vg1"), 5, '  Volume group "vg1" not found\n'),
    (("lvcreate", "-L", "1g", "-n", "x", "vg0"), 5,
     "  Insufficient free space: 256 extents needed, but only 30 available\n"),
    (("lvcreate", "-l", "31", "-n", "x", "vg0", "/dev/pmem0"), 5,
     "  Insufficient free space: 31 extents needed, but only 30 available\n"),
    (("lvcreate", "-L", "4M", "-n", "lv0", "vg0"), 5,
     '  Logical Volume "lv0" already exists in volume group "vg0"\n'),
    (("lvcreate", "-L", "4M", "-n", "a/b", "vg0"), 3,
     '  Name "a/b" contains invalid character, valid set contains: [a-zA-Z0-9.-_+].\n'),
    (("lvcreate", "-L", "4M", "-n", "snapshot1", "vg0"), 3,
     '  Names starting "snapshot" are reserved. Please choose a different LV name.\n'),
    (("lvcreate", "-L", "4M", "-l", "1", "vg0"), 3, "  Please specify either size or extents (not both).\n"),
    (("lvcreate", "-n", "x", "vg0"), 3, "  Please specify either size or extents.\n"),
    (("lvcreate", "-L", "4M", "-n", "x", "vg0", "/dev/disk0"), 5,
     '  Physical Volume "/dev/disk0" not found in Volume Group "vg0".\n'),
    (("lvcreate", "-s", "-L", "4M", "-n", "s", "vg0/nosuch"), 5, '  Failed to find logical volume "vg0/nosuch"\n'),
    (("lvcreate", "-s", "-L", "4M", "-n", "s", "vg0/snap0"), 5, "  Snapshots of snapshots are not supported.\n"),
    (("lvcreate", "-s", "-c", "3k", "-L", "4M", "-n", "s", "vg0/lv0"), 3,
     "  Chunk size must be a power of 2 in the range 4K to 512K.\n"),
    (("lvcreate", "-L", "12Q", "-n", "x", "vg0"), 3, "  Invalid argument for --size: 12Q\n"),
    (("vgcreate", "vg0", "/dev/disk0"), 5, "  A volume group called vg0 already exists.\n"),
    (("vgcreate", "vg1", "/dev/pmem0"), 5, "  Physical volume '/dev/pmem0' is already in volume group 'vg0'\n"),
    (("vgcreate", "vg1", "/dev/nosuch"), 5, "  No device found for /dev/nosuch.\n"),
    (("vgcreate", "vg:1", "/dev/disk0"), 3,
     '  Name "vg:1" contains invalid character, valid set contains: [a-zA-Z0-9.-_+].\n'
     '  New volume group name "vg:1" is invalid.\n'),
    (("vgcreate", "-s", "3M", "vg1", "/dev/disk0"), 3,
     "  Physical extent size must be a power of 2 of at least 1.00 KiB.\n"),
    (("vgremove", "vg1"), 5, '  Volume group "vg1" not found\n'),
    (("vgs", "vg1"), 5, '  Volume group "vg1" not found\n'),
    (("lvremove", "vg0/nosuch"), 5, '  Failed to find logical volume "vg0/nosuch"\n'),
    (("lvrename", "vg0", "nosuch", "x"), 5, '  Existing logical volume "nosuch" not found in volume group "vg0"\n'),
    (("lvrename", "vg0", "lv0", "snap0"), 5, '  Logical Volume "snap0" already exists in volume group "vg0"\n'),
    (("lvextend", "-L", "+1g", "vg0/snap0"), 5,
     "  Insufficient free space: 256 extents needed, but only 30 available\n"),
    (("pvremove", "/dev/pmem0"), 5, "  PV /dev/pmem0 is used by VG vg0 so please use vgreduce first.\n"
     "  (If you are certain you need pvremove, then confirm by using --force twice.)\n"
     "  /dev/pmem0: physical volume label not removed.\n"),
    (("lvm", "frobnicate"), 3, "  No such command 'frobnicate'.  Try 'help'.\n"),
    (("lvcreate", "--bogus"), 3, "  lvcreate: unrecognized arguments: --bogus; see 'lvcreate --help'\n"),
]


def test_refusals_say_why_and_change_nothing(pmem):
    # One set-up for all of them (each command is a process: keep the run short); the
    # state is compared after every refusal, so each one is checked on its own.
    seed()
    before = state()
    for args, rc, err in REFUSALS:
        r = tool(*args)
        assert (r.returncode, r.stdout, r.stderr) == (rc, "", err), args
        assert state() == before, args


def test_lvchange_and_where_a_cow_goes_when_dax_space_runs_out(pmem):
    run("vgcreate", "vg0", "/dev/pmem0", "/dev/disk0",
        out='  Physical volume "/dev/pmem0" successfully created.\n'
            '  Physical volume "/dev/disk0" successfully created.\n'
            '  Volume group "vg0" successfully created\n')
    run("lvcreate", "-l", "63", "-n", "lv0", "vg0", out='  Logical volume "lv0" created.\n')
    before = state()
    # The only free space is on the disk: the refusal says so instead of "no space".
    run("lvcreate", "-s", "-L", "4M", "-n", "s", "vg0/lv0", rc=5,
        err="  Cannot create snapshot vg0/s of vg0/lv0: the origin is on /dev/pmem0 and the COW "
            "would be on /dev/disk0; DAX-capable: /dev/pmem0; not DAX-capable: /dev/disk0. A "
            "snapshot cannot mix DAX-capable and non-DAX devices: the DAX-capable PVs of vg0 have "
            "0 free extents, 1 needed: free some there or add a DAX-capable PV to vg0. "
            "Nothing was changed.\n")
    assert state() == before
    run("lvextend", "-L", "+5M", "vg0/lv0", "/dev/disk0",
        out="  Rounding size to boundary between physical extents: 8.00 MiB.\n"
            "  Size of logical volume vg0/lv0 changed from 252.00 MiB (63 extents) to "
            "260.00 MiB (65 extents).\n  Logical volume vg0/lv0 successfully resized.\n")
    assert ok("dmsetup", "table") == ("vg0-lv0: 0 516096 linear 259:0 2048\n"
                                      "vg0-lv0: 516096 16384 linear 7:0 2048\n")
    run("lvchange", "-an", "vg0/lv0")
    assert ok("dmsetup", "ls") == "No devices found\n"
    assert ok("lvs", "--noheadings", "-o", "lv_attr") == "  -wi-------\n"
    run("lvm", "lvchange", "-ay", "/dev/vg0/lv0")
    assert ok("lvs", "--noheadings", "-o", "lv_attr,lv_dax") == "  -wi-a----- no\n"


def test_a_missing_pv_is_reported_and_blocks_changes(pmem):
    ok("vgcreate", "vg0", "/dev/pmem0", "/dev/disk0")
    ok("lvcreate", "-L", "8M", "-n", "lv0", "vg0", "/dev/pmem0")
    ok("vgchange", "-an", "vg0")
    pv = ok("pvs", "--noheadings", "-o", "pv_uuid", "/dev/pmem0").strip()
    ok("ndctl", "disable-namespace", "namespace0.0")           # hot removal of /dev/pmem0
    warning = (f"  WARNING: Couldn't find device with uuid {pv}.\n"
               f"  WARNING: VG vg0 is missing PV {pv} (last written to /dev/pmem0).\n")
    run("vgs", out="  VG  #PV #LV #SN Attr   VSize   VFree  \n"
                   "  vg0   2   1   0 wz-pn- 312.00m 304.00m\n", err=warning)
    run("pvs", out="  PV         VG  Fmt  Attr PSize   PFree  \n"
                   "  /dev/disk0 vg0 lvm2 a--   60.00m  60.00m\n"
                   "  [unknown]  vg0 lvm2 a-m  252.00m 244.00m\n", err=warning)
    run("lvcreate", "-L", "4M", "-n", "x", "vg0", rc=5,
        err=warning + "  Cannot change VG vg0 while PVs are missing.\n")
    run("vgchange", "-ay", "vg0", rc=5,
        err=warning + f"  Couldn't find device with uuid {pv}: cannot activate vg0/lv0.\n")
    assert ok("dmsetup", "ls") == "No devices found\n"
    ok("ndctl", "enable-namespace", "namespace0.0")
    run("vgchange", "-ay", "vg0", out='  1 logical volume(s) in volume group "vg0" now active\n')


def test_a_failed_metadata_commit_takes_the_new_snapshot_down_again(pmem, monkeypatch, capsys):
    from dmemu.cli import lvm
    from dmemu.lvm.store import Store
    ok("vgcreate", "vg0", "/dev/pmem0")
    ok("lvcreate", "-L", "8M", "-n", "lv0", "vg0")
    before = state()

    async def dies(self, vg, bump=True):
        raise OSError(5, "Input/output error")
    with monkeypatch.context() as m:     # its own undo: DMEMU_ROOT stays set
        m.setattr(Store, "commit", dies)
        assert lvm.main(["-s", "-L", "4M", "-n", "snap0", "vg0/lv0"], prog="lvcreate") == 5
    assert capsys.readouterr().err == "  Input/output error\n"
    assert state() == before
    assert ok("dmsetup", "table") == "vg0-lv0: 0 16384 linear 259:0 2048\n"
