"""ndctl, dmemu and dmemud as a user meets them: help, output shapes, one-line refusals."""
import json

import pytest

from tests.helpers import tool


@pytest.mark.parametrize("cmd", ["ndctl", "dmemu", "dmemud"])
def test_help_and_bad_option(cmd, dmemu_root):
    r = tool(cmd, "--help")
    assert r.returncode == 0 and r.stdout.startswith(f"usage: {cmd}")
    r = tool(cmd, "--no-such-option")
    assert r.returncode == 2
    assert r.stderr.startswith(f"{cmd}: ") and r.stderr.count("\n") == 1
    assert f"see '{cmd} --help'" in r.stderr


def test_create_namespace_json_like_ndctl(dmemu_root):
    r = tool("ndctl", "create-namespace", "--size", "8M", "--name", "db", "--align", "4K")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('{\n  "dev":"namespace0.0",\n  "mode":"fsdax",\n  "map":"mem",\n')
    ns = json.loads(r.stdout)
    assert ns["size"] == 8 << 20 and ns["align"] == 4096 and ns["blockdev"] == "pmem0"
    assert ns["name"] == "db" and ns["sector_size"] == 512
    assert ns["persistence_domain"] == "cpu_cache"
    two = tool("ndctl", "create-namespace", "-s", "1G", "-m", "raw", "--persistence", "adr")
    assert json.loads(two.stdout)["persistence_domain"] == "memory_controller"
    listed = json.loads(tool("ndctl", "list").stdout)
    assert [n["dev"] for n in listed] == ["namespace0.0", "namespace0.1"]
    assert "map" not in listed[1] and listed[1]["mode"] == "raw"
    assert json.loads(tool("ndctl", "list", "-u", "-n", "db").stdout)["size"] == "8M"


@pytest.mark.parametrize("args, message", [
    (["-s", "12Q"], "ndctl: invalid size '12Q': use a number with an optional K, M, G or T suffix\n"),
    (["-s", "3M"], "ndctl: size 3M is not a multiple of the alignment 2M: use --size 4M or a smaller --align\n"),
    (["-s", "0"], "ndctl: size must be greater than zero\n"),
    (["-s", "4M", "-a", "8K"], "ndctl: align 8K is not supported: use 4K, 2M or 1G\n"),
    (["-s", "4M", "-n", "dup"], "ndctl: a namespace named 'dup' already exists\n"),
    (["-s", "4M", "-r", "region7"], "ndctl: region 'region7' not found: only region0 exists\n"),
])
def test_bad_create_changes_nothing(dmemu_root, args, message):
    assert tool("ndctl", "create-namespace", "-s", "4M", "-n", "dup").returncode == 0
    before = tool("ndctl", "list").stdout
    images = sorted(p.name for p in (dmemu_root / "images").iterdir())
    r = tool("ndctl", "create-namespace", *args)
    assert (r.returncode, r.stderr, r.stdout) == (1, message, "")
    assert tool("ndctl", "list").stdout == before
    assert sorted(p.name for p in (dmemu_root / "images").iterdir()) == images


def test_no_space_on_host_is_refused(dmemu_root):
    r = tool("ndctl", "create-namespace", "-s", "64T")
    assert r.returncode == 1
    assert r.stderr.startswith("ndctl: not enough space on the host for 64T of eadr media")
    assert tool("ndctl", "list").stdout == "" and list((dmemu_root / "images").iterdir()) == []


def test_disks(dmemu_root):
    r = tool("dmemu", "disk", "create", "-s", "4M", "-n", "slow0")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["name"], d["maj:min"], d["dax"]) == ("slow0", "7:0", False)
    assert tool("dmemu", "disk", "create", "-s", "4M").returncode == 0
    for bad, msg in ((["-s", "4M", "-n", "slow0"], "a device named 'slow0' already exists"),
                     (["-s", "4M", "-n", "pmem5"], "invalid disk name 'pmem5'"),
                     (["-s", "1000"], "disk size 1000 is not a positive multiple of 512 bytes")):
        r = tool("dmemu", "disk", "create", *bad)
        assert r.returncode == 1 and msg in r.stderr, r.stderr
    names = [x["name"] for x in json.loads(tool("dmemu", "disk", "list").stdout)]
    assert names == ["slow0", "disk0"]
    lsblk = tool("dmemu", "lsblk").stdout.splitlines()
    assert lsblk[0].split() == ["NAME", "MAJ:MIN", "SIZE", "DAX", "MODEL", "STATE"]
    assert lsblk[1].split() == ["slow0", "7:0", "4M", "no", "disk", "live"]
    assert tool("dmemu", "disk", "destroy", "slow0").returncode == 0
    r = tool("dmemu", "disk", "destroy", "slow0")
    assert (r.returncode, r.stderr) == (1, "dmemu: slow0: no such disk\n")


def test_inject_error_outside_device(dmemu_root):
    tool("ndctl", "create-namespace", "-s", "4M")
    r = tool("ndctl", "inject-error", "pmem0", "-B", "8192")
    assert r.returncode == 1
    assert r.stderr == "ndctl: pmem0: error range 8192+1 is outside the device (0..8191 sectors)\n"


def test_list_of_an_unknown_namespace_says_nothing_matched(dmemu_root):
    tool("ndctl", "create-namespace", "-s", "8M")
    r = tool("ndctl", "list", "-n", "namespace7.7")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "  Warning: no matching devices found\n")
    r = tool("ndctl", "list", "-n", "namespace0.0")
    assert json.loads(r.stdout)["dev"] == "namespace0.0" and r.stderr == ""
