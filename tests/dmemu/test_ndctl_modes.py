"""Namespace modes as ndctl makes them (fsdax, raw, sector, devdax), reconfiguration with
-e, regions and DIMMs in ndctl list, and daxctl for the device-dax instances."""
import errno
import json

import pytest

from dmemu import client
from tests.helpers import ok, tool


def ndjson(*args):
    return json.loads(ok("ndctl", *args))


def test_each_mode_is_the_device_ndctl_makes(dmemu_root):
    fsdax = ndjson("create-namespace", "-s", "16M")
    raw = ndjson("create-namespace", "-s", "16M", "-m", "raw")
    sector = ndjson("create-namespace", "-s", "16M", "-m", "sector")
    devdax = ndjson("create-namespace", "-s", "16M", "-m", "devdax")
    assert list(fsdax) == ["dev", "mode", "map", "size", "uuid", "sector_size", "align",
                           "blockdev", "persistence_domain"]
    assert (fsdax["mode"], fsdax["map"], fsdax["blockdev"]) == ("fsdax", "mem", "pmem0")
    assert list(raw) == ["dev", "mode", "size", "uuid", "sector_size", "blockdev", "persistence_domain"]
    assert list(sector) == list(raw) and (sector["mode"], sector["blockdev"]) == ("sector", "pmem2s")
    assert list(devdax) == ["dev", "mode", "map", "size", "uuid", "chardev", "align", "persistence_domain"]
    assert (devdax["dev"], devdax["map"], devdax["chardev"]) == ("namespace0.3", "dev", "dax0.3")

    async def check():
        async with client.connect() as k:
            for name, dax in (("pmem0", True), ("pmem1", False), ("pmem2s", False), ("dax0.3", True)):
                dev = await k.open_device(name)
                assert dev.dax is dax, name
                await dev.close()
            dev = await k.open_device("/dev/dax0.3")
            with pytest.raises(OSError) as e:
                await dev.read(0, 4096)
            assert e.value.errno == errno.EINVAL
            with pytest.raises(OSError):
                await dev.write(0, bytes(4096))
            m = await dev.direct_access(0, 1, write=True)     # a mapping is what it is for
            m.write(0, b"devdax")
            m.flush(0, 6)
            assert m.read(0, 6) == b"devdax"
            await dev.close()
            dev = await k.open_device("pmem2s")
            await dev.write(8, b"s" * 512)
            assert await dev.read(8, 512) == b"s" * 512
            await dev.close()
    import trio
    trio.run(check)
    # Not a block device: no table, no PV, no filesystem on it.
    r = tool("dmsetup", "create", "x", "--table", "0 8 linear /dev/dax0.3 0")
    assert r.returncode == 1 and "is a device-dax character device, not a block device" in r.stderr
    assert ok("dmsetup", "ls") == "No devices found\n"
    r = tool("pvcreate", "/dev/dax0.3")
    assert (r.returncode, r.stderr) == (5, "  No device found for /dev/dax0.3.\n")
    r = tool("mkfs.daxfs", "/dev/dax0.3")
    assert r.returncode != 0 and "device-dax character device takes no read or write" in r.stderr


def test_reconfigure_keeps_the_capacity_and_needs_force_when_enabled(dmemu_root):
    ns = ndjson("create-namespace", "-s", "16M")

    async def put(name, data):
        async with client.open_device(name) as dev:
            await dev.write(0, data)

    async def get(name):
        async with client.open_device(name) as dev:
            return await dev.read(0, 4096)
    import trio
    trio.run(put, "pmem0", b"kept" * 1024)
    r = tool("ndctl", "create-namespace", "-e", "namespace0.0", "-m", "sector")
    assert (r.returncode, r.stdout, r.stderr) == (
        1, "", "ndctl: namespace0.0 is active, specify --force for re-configuration\n")
    assert ndjson("list", "-n", "namespace0.0") == {**ns}
    out = ndjson("create-namespace", "-f", "-e", "namespace0.0", "-m", "sector")
    assert (out["dev"], out["mode"], out["blockdev"], out["uuid"]) == (
        "namespace0.0", "sector", "pmem0s", ns["uuid"])
    # the BTT's map, log and spare blocks take their room: as ndctl, the size it exports
    assert 15 << 20 < out["size"] < 16 << 20
    # a BTT is formatted on the namespace (as ndctl writes a fresh one): it starts empty
    assert trio.run(get, "pmem0s") == bytes(4096)
    ndjson("create-namespace", "-f", "-e", "namespace0.0", "-m", "fsdax")
    trio.run(put, "pmem0", b"kept" * 1024)
    out = ndjson("create-namespace", "-f", "-e", "namespace0.0", "-m", "devdax")
    assert out["chardev"] == "dax0.0" and "blockdev" not in out
    assert json.loads(ok("daxctl", "list")) == {"chardev": "dax0.0", "size": 16 << 20,
                                                 "target_node": 0, "align": 2 << 20,
                                                 "mode": "devdax"}
    ndjson("create-namespace", "-f", "-e", "namespace0.0", "-m", "fsdax")
    assert trio.run(get, "pmem0") == b"kept" * 1024
    assert ok("daxctl", "list") == ""

    async def busy():
        async with client.open_device("pmem0"):
            return await trio.to_thread.run_sync(
                lambda: tool("ndctl", "create-namespace", "-f", "-e", "namespace0.0", "-m", "raw"))
    r = trio.run(busy)
    assert r.returncode == 1 and r.stderr.startswith("ndctl: namespace0.0 is busy: open by ")
    assert ndjson("list", "-n", "namespace0.0")["mode"] == "fsdax"
    r = tool("ndctl", "create-namespace", "-f", "-e", "namespace0.9", "-m", "raw")
    assert (r.returncode, r.stderr) == (1, "ndctl: namespace0.9: no such namespace\n")
    r = tool("ndctl", "create-namespace", "-f", "-s", "8M")
    assert (r.returncode, r.stderr) == (1, "ndctl: --force only applies with -e/--reconfig NAMESPACE\n")
    r = tool("ndctl", "create-namespace", "-m", "sector", "-l", "520", "-s", "8M")
    assert r.returncode == 1 and "sector size 520 is not supported" in r.stderr


def test_list_regions_dimms_and_namespaces_as_ndctl_combines_them(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "16M")
    ok("ndctl", "create-namespace", "-s", "8M", "-m", "devdax", "--persistence", "adr")
    region = ndjson("list", "-R")
    assert list(region) == ["dev", "size", "available_size", "max_available_extent", "type",
                            "persistence_domain"]
    assert region["dev"] == "region0" and region["type"] == "pmem"
    assert region["size"] == region["available_size"] + (24 << 20)
    assert region["persistence_domain"] == "memory_controller"
    both = ndjson("list", "-R", "-N")
    assert list(both) == ["regions"]
    assert [n["dev"] for n in both["regions"][0]["namespaces"]] == ["namespace0.0", "namespace0.1"]
    assert ndjson("list", "-D") == {"dev": "nmem0", "id": "dmemu-nmem0", "handle": 0, "phys_id": 0}
    dr = ndjson("list", "-D", "-R")
    assert list(dr) == ["dimms", "regions"] and "namespaces" not in dr["regions"][0]
    assert dr["regions"][0]["mappings"] == [{"dimm": "nmem0", "offset": 0,
                                             "length": dr["regions"][0]["size"], "position": 0}]
    dn = ndjson("list", "-D", "-N")
    assert list(dn) == ["dimms", "namespaces"] and len(dn["namespaces"]) == 2
    assert ndjson("list", "-N", "-u", "-n", "namespace0.0")["size"] == "16M"
    x = ndjson("list", "-X", "-n", "namespace0.1")
    assert x["daxregion"]["devices"][0]["chardev"] == "dax0.1" and "chardev" not in x
    r = tool("ndctl", "list", "-R", "-r", "region1")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "  Warning: no matching devices found\n")


def test_daxctl_lists_devices_and_regions(dmemu_root):
    assert ok("daxctl", "list") == ""
    ok("ndctl", "create-namespace", "-s", "8M", "-m", "devdax")
    ok("ndctl", "create-namespace", "-s", "8M")
    ok("ndctl", "create-namespace", "-s", "4M", "-m", "devdax")
    devs = json.loads(ok("daxctl", "list"))
    assert [d["chardev"] for d in devs] == ["dax0.0", "dax0.2"]
    regions = json.loads(ok("daxctl", "list", "-R"))
    assert regions[0] == {"path": "/dmemu/ndbus0/region0/dax0.0", "id": 0, "size": 8 << 20,
                          "align": 2 << 20}
    with_devs = json.loads(ok("daxctl", "list", "-R", "-D"))
    assert with_devs[1]["devices"] == [{"chardev": "dax0.2", "size": 4 << 20, "target_node": 0,
                                        "align": 2 << 20, "mode": "devdax"}]
    assert json.loads(ok("daxctl", "list", "-d", "dax0.2", "-u"))["size"] == "4M"
    r = tool("daxctl", "list", "-d", "dax9.9")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "  Warning: no matching devices found\n")
    r = tool("daxctl", "reconfigure-device", "dax0.0")
    assert r.returncode == 2 and "invalid choice: 'reconfigure-device'" in r.stderr
