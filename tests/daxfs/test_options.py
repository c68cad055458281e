"""Mount option handling: what libfuse would refuse never reaches pyfuse3.init."""
import pytest

from daxfs.mount import parse_options


def test_dax_and_fstab_words_taken_out():
    mo = parse_options(["rw", "dax=inode", "defaults", "noauto", "x-systemd.automount",
                        "allow_other", "dev", "suid", "commit=2", "noatime"], "/img")
    assert mo.dax == "inode" and mo.commit_interval == 2.0 and mo.noatime
    assert mo.fuse == ["allow_other", "dev", "suid", "noatime", "default_permissions",
                       "fsname=/img"]
    assert not any(o.startswith(("subtype", "dax", "commit")) for o in mo.fuse)


def test_ro_and_plain_dax():
    mo = parse_options(["ro", "dax", "fsname=ignored", "subtype=daxfs"], "/dev/pmem0")
    assert mo.read_only and mo.dax == "always"
    assert mo.fuse == ["ro", "default_permissions", "fsname=/dev/pmem0"]


def test_bad_commit_interval():
    with pytest.raises(ValueError):
        parse_options(["commit=soon"], "/img")
