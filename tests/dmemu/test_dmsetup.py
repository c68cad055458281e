"""dmsetup as a user meets it: tables in, Linux's text out, refusals that name the line."""
import pytest

from tests.helpers import ok, tool


@pytest.fixture
def pmem(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "64M")
    ok("dmemu", "disk", "create", "-s", "16M")
    return dmemu_root


def test_linear_device_reports_like_linux(pmem):
    ok("dmsetup", "create", "lin", "--table", "0 8192 linear /dev/pmem0 2048")
    assert ok("dmsetup", "ls") == "lin\t(253:0)\n"
    assert ok("dmsetup", "table", "lin") == "0 8192 linear 259:0 2048\n"
    assert ok("dmsetup", "status", "lin") == "0 8192 linear \n"
    assert ok("dmsetup", "info", "lin") == (
        "Name:              lin\nState:             ACTIVE\nRead Ahead:        256\n"
        "Tables present:    LIVE\nOpen count:        0\nEvent number:      0\n"
        "Major, minor:      253, 0\nNumber of targets: 1\n")
    assert ok("dmsetup", "info", "-c", "lin") == (
        "Name             Maj Min Stat Open Targ Event  UUID\n"
        "lin              253   0 L--w    0    1      0\n")
    assert ok("dmsetup", "deps", "lin") == "1 dependencies\t: (259, 0)\n"


def test_table_from_stdin_and_file_multi_line(pmem, tmp_path):
    ok("dmsetup", "create", "two", input="0 100 linear pmem0 0\n# a comment\n100 50 zero\n")
    assert ok("dmsetup", "table", "two") == "0 100 linear 259:0 0\n100 50 zero \n"
    f = tmp_path / "t"
    f.write_text("0 150 error\n")
    ok("dmsetup", "load", "two", str(f))
    assert ok("dmsetup", "info", "-c", "--noheadings", "two").split()[3] == "LI-w"
    assert ok("dmsetup", "table", "--inactive", "two") == "0 150 error \n"
    ok("dmsetup", "resume", "two")
    assert ok("dmsetup", "table", "two") == "0 150 error \n"


@pytest.mark.parametrize("table, message", [
    ("0 100 linear pmem0 0\n200 10 zero",
     "line 2: 200 10 zero: Gap in table: sectors 100-199 are not mapped (line 1 ends at sector 100)"),
    ("0 100 linear pmem0 0\n50 10 zero",
     "line 2: 50 10 zero: overlapping targets: starts at sector 50, inside line 1 (sectors 0-99)"),
    ("0 0 zero", "line 1: 0 0 zero: zero-length target"),
    ("0 8 striped 2 8 pmem0 0 disk0 0", "line 1: 0 8 striped 2 8 pmem0 0 disk0 0: striped: unknown target type"),
    ("0 8 linear pmem0", "line 1: 0 8 linear pmem0: linear: Invalid argument count"),
    ("0 8 linear nosuch 0", "line 1: 0 8 linear nosuch 0: linear: Device lookup failed: nosuch: no such device"),
    ("0 999999 linear pmem0 0", "linear: Device lookup failed: pmem0 too small for target"),
    ("0 8 snapshot pmem0 disk0 P 7", "snapshot: Couldn't create exception store: Chunk size is not a power of 2"),
    ("0 8 snapshot-origin", "snapshot-origin: origin: incorrect number of arguments"),
])
def test_bad_tables_name_the_line_and_leave_nothing(pmem, table, message):
    r = tool("dmsetup", "create", "bad", "--table", table.replace("\n", ";"))
    assert r.returncode == 1
    assert r.stderr.startswith("dmsetup: reload ioctl on bad (253:0) failed: ")
    assert message in r.stderr and r.stderr.count("\n") == 1
    assert ok("dmsetup", "ls") == "No devices found\n"


def test_mixed_dax_snapshot_refused_with_devices_named(pmem):
    ok("dmsetup", "create", "real", "--table", "0 8192 linear pmem0 0")
    ok("dmsetup", "create", "cow", "--table", "0 8192 linear disk0 0")
    before = ok("dmsetup", "ls")
    r = tool("dmsetup", "create", "snap", "--table", "0 8192 snapshot real cow P 8")
    assert r.returncode == 1
    assert r.stderr == ("dmsetup: reload ioctl on snap (253:2) failed: line 1: 0 8192 snapshot real cow "
                        "P 8: snapshot: cannot mix DAX-capable and non-DAX devices in one snapshot: "
                        "origin real (253:0, on pmem0) is DAX-capable, COW cow (253:1, on disk0) is "
                        "not DAX-capable; put the COW on a DAX-capable device (a pmem namespace in "
                        "fsdax mode) like its origin\n")
    assert ok("dmsetup", "ls") == before
    # The COW store was not touched either: its first chunk is still zero.
    assert "snap" not in ok("dmsetup", "ls", "--tree")


def test_snapshot_stack_tree_and_status(pmem):
    ok("dmsetup", "create", "base-real", "--table", "0 32768 linear pmem0 0")
    ok("dmsetup", "create", "snap-cow", "--table", "0 8192 linear pmem0 32768")
    ok("dmsetup", "create", "snap", "--table", "0 32768 snapshot base-real snap-cow P 8")
    ok("dmsetup", "create", "base", "--table", "0 32768 snapshot-origin base-real")
    assert ok("dmsetup", "table") == (
        "base: 0 32768 snapshot-origin 253:0\n"
        "base-real: 0 32768 linear 259:0 0\n"
        "snap: 0 32768 snapshot 253:0 253:1 P 8\n"
        "snap-cow: 0 8192 linear 259:0 32768\n")
    assert ok("dmsetup", "status", "snap") == "0 32768 snapshot 16/8192 16\n"
    assert ok("dmsetup", "ls", "--tree") == (
        "base (253:3)\n └─base-real (253:0)\n    └─pmem0 (259:0)\n"
        "snap (253:2)\n ├─base-real (253:0)\n │  └─pmem0 (259:0)\n"
        " └─snap-cow (253:1)\n    └─pmem0 (259:0)\n")
    assert ok("dmsetup", "deps", "snap") == "2 dependencies\t: (253, 0) (253, 1)\n"
    assert ok("dmsetup", "info", "-c", "--noheadings", "base-real").split()[4] == "2"
    r = tool("dmsetup", "remove", "base-real")
    assert r.returncode == 1 and "device is in use (by snap (253:2), base (253:3))" in r.stderr
    for name in ("base", "snap", "snap-cow", "base-real"):
        ok("dmsetup", "remove", name)
    assert ok("dmsetup", "ls") == "No devices found\n"


def test_rename_uuid_and_targets(pmem):
    ok("dmsetup", "create", "a", "-u", "UUID-A", "--table", "0 8 zero")
    ok("dmsetup", "rename", "a", "b")
    assert ok("dmsetup", "info", "b").endswith("UUID: UUID-A\n")
    r = tool("dmsetup", "rename", "b", "--setuuid", "X")
    assert r.returncode == 1 and "already has uuid" in r.stderr
    r = tool("dmsetup", "create", "b", "--table", "0 8 zero")
    assert (r.returncode, r.stderr) == (1, "dmsetup: device b already exists\n")
    targets = ok("dmsetup", "targets")
    assert "snapshot-origin  v1.9.0\n" in targets and "linear           v1.5.0\n" in targets
    r = tool("dmsetup", "info", "nosuch")
    assert (r.returncode, r.stderr) == (1, "Device does not exist.\nCommand failed.\n")


def test_missing_devices_are_named_as_dmsetup_names_them(pmem):
    ok("dmsetup", "create", "a", "--table", "0 8 zero")
    for args, ioctl in ((("remove",), "remove"), (("suspend",), "suspend"), (("resume",), "resume"),
                        (("clear",), "clear"), (("rename",), "rename"), (("message",), "message"),
                        (("reload", "--table", "0 8 zero"), "reload"),
                        (("load", "--table", "0 8 zero"), "reload")):
        extra = {"rename": ["b"], "message": ["0", "hello"]}.get(args[0], [])
        r = tool("dmsetup", args[0], "nope", *args[1:], *extra)
        assert (r.returncode, r.stdout, r.stderr) == (
            1, "", f"device-mapper: {ioctl} ioctl on nope  failed: No such device or address\n"
                   "Command failed.\n"), args
    for cmd in ("info", "table", "status"):
        r = tool("dmsetup", cmd, "a", "nope")
        assert (r.returncode, r.stdout, r.stderr) == (1, "", "Device does not exist.\nCommand failed.\n")
    r = tool("dmsetup", "deps", "nope")
    assert (r.returncode, r.stdout, r.stderr) == (0, "Device does not exist.\n", "")
    assert ok("dmsetup", "table", "a") == "0 8 zero \n"


def test_remove_all_takes_stacks_down_top_first_and_names_what_it_left(pmem):
    ok("dmsetup", "create", "base", "--table", "0 64 linear /dev/pmem0 0")
    ok("dmsetup", "create", "mid", "--table", "0 64 linear /dev/mapper/base 0")
    ok("dmsetup", "create", "top", "--table", "0 64 linear /dev/mapper/mid 0")
    ok("dmsetup", "create", "busy", "--table", "0 64 linear /dev/pmem0 64")
    ok("dmsetup", "create", "under", "--table", "0 64 linear /dev/pmem0 128")
    ok("dmsetup", "create", "over", "--table", "0 64 linear /dev/mapper/under 0")
    import trio
    from dmemu import client

    async def hold_and_remove_all():
        async with client.connect(prog="holder") as k:
            dev = await k.open_device("/dev/mapper/busy")
            dev2 = await k.open_device("/dev/mapper/over")
            r = await trio.to_thread.run_sync(lambda: tool("dmsetup", "remove_all"))
            await dev.close()
            await dev2.close()
            return r
    r = trio.run(hold_and_remove_all)
    assert (r.returncode, r.stdout) == (0, "")
    assert r.stderr == ("device-mapper: remove_all left 3 open device(s): busy (open), "
                        "over (open), under (held by over)\n")
    assert ok("dmsetup", "ls") == "busy \t(253:3)\nover \t(253:5)\nunder\t(253:4)\n"
    r = tool("dmsetup", "remove_all")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert ok("dmsetup", "ls") == "No devices found\n"
