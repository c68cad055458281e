"""A power failure with a snapshot present: everything stacked on the failed media goes, as
at a reboot, so the LVM tools find a clean kernel and bring the volumes back as they were."""
from tests.helpers import ok, tool


def test_power_failure_with_a_snapshot_leaves_nothing_behind(pmem):
    ok("lvm", "vgcreate", "vg0", "/dev/pmem0")
    ok("lvcreate", "-L", "128M", "-n", "lv0", "vg0")
    ok("xfs_io", "-c", "pwrite -S 0x61 0 64k", "/dev/vg0/lv0")
    ok("lvcreate", "-s", "-L", "4M", "-n", "snap0", "vg0/lv0")
    ok("xfs_io", "-c", "pwrite -S 0x62 0 64k", "/dev/vg0/lv0")
    ok("ndctl", "power-fail")
    assert ok("dmsetup", "ls") == "No devices found\n"
    r = tool("lvs", "--noheadings", "-o", "lv_name,lv_attr,origin")
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == "  lv0   owi---s---    \n  snap0 swi---s--- lv0\n"
    assert ok("vgchange", "-ay", "vg0") == "  2 logical volume(s) in volume group \"vg0\" now active\n"
    assert ok("dmsetup", "status", "vg0-snap0") == "0 262144 snapshot 144/8192 16\n"
    snap = ok("xfs_io", "-c", "pread -v 0 16", "/dev/vg0/snap0")
    dump = snap.splitlines()[-1]          # the hex dump line (the timing line may hold a 62)
    assert dump.startswith("00000000:  61 61 61 61") and " 62" not in dump
    assert "62 62 62 62" in ok("xfs_io", "-c", "pread -v 0 16", "/dev/vg0/lv0")
    assert ok("lvremove", "-f", "vg0/snap0") == '  Logical volume "snap0" successfully removed.\n'
