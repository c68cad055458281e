"""The linux profile: what Linux 6.1 with LVM 2.03.16 does, to the byte, and the switch that
selects it (kept across dmemud restarts)."""
import re

import pytest

from tests.helpers import ok, tool


@pytest.fixture
def pmem(dmemu_root):
    """As the measured machine: a DAX namespace and a disk with room for +64M."""
    ok("ndctl", "create-namespace", "-s", "256M")
    ok("dmemu", "disk", "create", "-s", "128M")
    return dmemu_root

SEED_FAILURE = ("  device-mapper: reload ioctl on  (253:0) failed: Invalid argument\n"
                "  device-mapper: remove ioctl on  (253:3) failed: No such device or address\n"
                "  device-mapper: reload ioctl on  (253:0) failed: Invalid argument\n"
                "  device-mapper: remove ioctl on  (253:3) failed: No such device or address\n"
                "  Failed to suspend logical volume vg0/lv0.\n"
                "  Aborting. Manual intervention required.\n")


def dmesg() -> list[str]:
    """The kernel log without its timestamps (checked apart)."""
    lines = ok("dmemu", "dmesg").splitlines()
    for line in lines:
        assert re.match(r"^\[ *\d+\.\d{6}\] ", line), line
    return [line.split("] ", 1)[1] for line in lines]


def setup_vg():
    ok("dmemu", "profile", "linux")
    ok("lvm", "vgcreate", "vg0", "/dev/pmem0", "/dev/disk0")
    ok("lvcreate", "-L", "128M", "-n", "lv0", "vg0", "/dev/pmem0")


def test_profile_is_kept_across_restarts_and_shown_by_status(pmem):
    assert ok("dmemu", "profile") == "fixed\n"
    assert "profile: fixed" in ok("dmemud", "status")
    assert ok("dmemu", "profile", "linux") == "linux\n"
    assert ok("dmemu", "param", "snapshot_dax") == "snapshot_dax = off\n"
    ok("dmemud", "stop")
    assert ok("dmemu", "profile") == "linux\n"
    assert "profile: linux\n" in ok("dmemud", "status")
    assert ok("dmemu", "param", "snapshot_dax") == "snapshot_dax = off\n"
    ok("dmemu", "profile", "fixed")
    ok("dmemu", "param", "snapshot_dax", "off")       # a parameter alone is kept too
    ok("dmemud", "stop")
    assert ok("dmemu", "param", "snapshot_dax") == "snapshot_dax = off\n"
    ok("dmemu", "profile", "linux")
    r = tool("dmemu", "profile", "bsd")
    assert r.returncode != 0 and "invalid choice: 'bsd'" in r.stderr and "Traceback" not in r.stderr
    assert ok("dmemu", "profile") == "linux\n"
    ok("dmemu", "profile", "fixed")
    assert ok("dmemu", "param", "snapshot_dax") == "snapshot_dax = on\n"


def test_seed_scenario_fails_as_linux_does_and_leaves_a_stray_lv(pmem):
    setup_vg()
    r = tool("lvcreate", "-s", "-L", "4M", "-n", "snap0", "vg0/lv0")
    assert (r.returncode, r.stdout, r.stderr) == (5, "", SEED_FAILURE)
    assert ok("lvs", "--noheadings", "-o", "lv_name,vg_name,lv_attr,lv_size,lv_dax") == (
        "  lv0   vg0 -wi-a----- 128.00m yes\n"
        "  snap0 vg0 -wi-------   4.00m    \n")
    assert ok("dmsetup", "table") == "vg0-lv0: 0 262144 linear 259:0 2048\n"
    assert dmesg() == ["device-mapper: ioctl: can't change device type (old=3 vs new=1) "
                       "after initial table load."] * 2


def test_history_decides_not_the_current_table(pmem):
    setup_vg()
    ok("lvchange", "-an", "vg0/lv0")
    # Inactive: the origin's first table is snapshot-origin, so its type is bio-based.
    assert ok("lvcreate", "-s", "-L", "4M", "-n", "snap0", "vg0/lv0") == '  Logical volume "snap0" created.\n'
    assert ok("lvs", "--noheadings", "-o", "lv_name,lv_dax") == "  lv0   no\n  snap0 no\n"
    ok("lvremove", "-f", "vg0/snap0")
    assert ok("lvs", "--noheadings", "-o", "lv_name,lv_dax") == "  lv0 yes\n"   # 1 to 3 is allowed
    assert ok("lvcreate", "-s", "-L", "4M", "-n", "snap1", "vg0/lv0") == '  Logical volume "snap1" created.\n'
    assert dmesg() == []


def test_lvextend_onto_a_disk_fails_and_rolls_back(pmem):
    setup_vg()
    r = tool("lvextend", "-L", "+64M", "vg0/lv0", "/dev/disk0")
    assert (r.returncode, r.stdout, r.stderr) == (
        5, "  Size of logical volume vg0/lv0 changed from 128.00 MiB (32 extents) to 192.00 MiB "
           "(48 extents).\n",
        "  device-mapper: reload ioctl on  (253:0) failed: Invalid argument\n"
        "  Failed to lock logical volume vg0/lv0.\n")
    assert ok("lvs", "--noheadings", "-o", "lv_name,lv_size,lv_dax") == "  lv0 128.00m yes\n"
    assert ok("dmsetup", "table") == "vg0-lv0: 0 262144 linear 259:0 2048\n"


def test_a_dax_origin_with_a_non_dax_cow_is_accepted(pmem):
    setup_vg()
    ok("lvchange", "-an", "vg0/lv0")
    assert ok("lvcreate", "-s", "-L", "4M", "-n", "snap0", "vg0/lv0", "/dev/disk0") == \
        '  Logical volume "snap0" created.\n'
    assert ok("lvs", "--noheadings", "-o", "lv_name,origin,devices") == (
        "  lv0       /dev/pmem0(0)\n  snap0 lv0 /dev/disk0(0)\n")


def test_device_type_is_fixed_by_the_first_load_whatever_the_use(pmem):
    ok("dmemu", "profile", "linux")
    ok("dmsetup", "create", "lv", "--table", "0 8192 linear pmem0 0")
    r = tool("dmsetup", "load", "lv", "--table", "0 8192 linear disk0 0")
    assert (r.returncode, r.stdout, r.stderr) == (
        1, "", "device-mapper: reload ioctl on lv  failed: Invalid argument\nCommand failed.\n")
    ok("dmsetup", "load", "lv", "--table", "0 8192 zero")          # zero keeps the type (3)
    ok("dmsetup", "resume", "lv")
    r = tool("dmsetup", "load", "lv", "--table", "0 8192 linear disk0 0")
    assert r.returncode == 1
    ok("dmsetup", "create", "bio", "--table", "0 8192 linear disk0 0")
    ok("dmsetup", "load", "bio", "--table", "0 8192 linear pmem0 8192")   # 1 to 3 is allowed
    ok("dmsetup", "resume", "bio")
    ok("dmsetup", "load", "bio", "--table", "0 8192 linear disk0 0")      # and back to 1
    assert dmesg() == ["device-mapper: ioctl: can't change device type (old=3 vs new=1) "
                       "after initial table load."] * 2


def test_constructor_refusals_say_only_the_errno_and_log_the_reason(pmem):
    ok("dmemu", "profile", "linux")
    ok("dmsetup", "create", "real", "--table", "0 8192 linear pmem0 0")
    r = tool("dmsetup", "create", "bad", "--table", "0 8192 snapshot real real P 8")
    assert (r.returncode, r.stderr) == (
        1, "device-mapper: reload ioctl on bad  failed: Invalid argument\nCommand failed.\n")
    assert ok("dmsetup", "ls") == "real\t(253:0)\n"
    assert dmesg() == ["device-mapper: table: 253:1: snapshot: COW device cannot be the same as "
                       "origin device (-EINVAL)", "device-mapper: ioctl: error adding target to table"]


def test_kernel_log_lines_of_snapshots(pmem):
    ok("dmsetup", "create", "real", "--table", "0 8192 linear pmem0 0")
    ok("dmsetup", "create", "cow", "--table", "0 64 linear pmem0 8192")
    assert tool("dmsetup", "create", "bad", "--table", "0 8192 snapshot real real P 8").returncode == 1
    ok("dmsetup", "create", "snap", "--table", "0 8192 snapshot real cow P 8")
    ok("dmsetup", "create", "origin", "--table", "0 8192 snapshot-origin real")
    for i in range(7):      # six data chunks fit; the seventh invalidates
        ok("xfs_io", "-c", f"pwrite {i * 4096} 4096", "/dev/mapper/origin")
    assert ok("dmsetup", "status", "snap") == "0 8192 snapshot Invalid\n"
    ok("dmsetup", "remove", "snap")
    ok("dmsetup", "create", "snap", "--table", "0 8192 snapshot real cow P 8")
    ok("dmsetup", "create", "cow2", "--table", "0 64 linear pmem0 16384")
    ok("xfs_io", "-c", "pwrite -S 0x55 0 4096", "/dev/mapper/cow2")
    assert tool("dmsetup", "create", "snap2", "--table", "0 8192 snapshot real cow2 P 8").returncode == 1
    lines = dmesg()
    assert re.fullmatch(r"device-mapper: table: 253:\d+: snapshot: COW device cannot be the same "
                        r"as origin device \(-EINVAL\)", lines[0]), lines
    assert lines[1:] == [
        "device-mapper: ioctl: error adding target to table",
        "device-mapper: snapshots: Invalidating snapshot: Unable to allocate exception.",
        "device-mapper: snapshots: Snapshot is marked invalid.",
        "device-mapper: persistent snapshot: Invalid or corrupt snapshot",
        lines[5], "device-mapper: ioctl: error adding target to table"]
