"""The view follows dmemud: claims, renames, resizes, LVM names, and the device generation."""
import errno
import os

import pytest
import trio
import trio.testing

from dmemu import client
from tests.devview.viewhelp import dd_ok, wait_for
from tests.helpers import atool, ok

MiB = 1 << 20


async def test_write_open_of_a_claimed_device_fails_ebusy_read_open_works(view):
    assert (await atool("ndctl", "create-namespace", "-s", "4M")).returncode == 0
    f = str(view / "pmem0")
    async with client.open_device("pmem0", exclusive=True) as holder:     # a mounted filesystem
        await holder.write(0, b"m" * 512)
        for flags in (os.O_RDWR, os.O_WRONLY):
            with pytest.raises(OSError) as e:
                await trio.to_thread.run_sync(os.open, f, flags)
            assert e.value.errno == errno.EBUSY
        fd = await trio.to_thread.run_sync(os.open, f, os.O_RDONLY)
        try:
            assert await trio.to_thread.run_sync(os.pread, fd, 512, 0) == b"m" * 512
        finally:
            os.close(fd)
    fd = await trio.to_thread.run_sync(os.open, f, os.O_RDWR)       # the claim is gone
    try:
        # And the other way: a device open for writing through the view cannot be claimed.
        with pytest.raises(Exception) as e:
            async with client.open_device("pmem0", exclusive=True):
                pass
        assert getattr(e.value, "errno", None) == errno.EBUSY
    finally:
        os.close(fd)


def test_rename_keeps_the_inode_and_open_files(view):
    ok("ndctl", "create-namespace", "-s", "4M")
    ok("dmsetup", "create", "a", "--table", "0 2048 linear pmem0 0")
    ino = os.stat(view / "mapper/a").st_ino
    fd = os.open(view / "mapper/a", os.O_RDWR)
    try:
        ok("dmsetup", "rename", "a", "b")
        assert os.listdir(view / "mapper") == ["b"]
        assert os.stat(view / "mapper/b").st_ino == ino
        assert os.pwrite(fd, b"r" * 512, 512) == 512
    finally:
        os.close(fd)
    assert dd_ok(f"if={view}/mapper/b", "bs=512", "skip=1", "count=1") == b"r" * 512


def test_size_follows_a_new_table_also_for_open_files(view):
    ok("ndctl", "create-namespace", "-s", "4M")
    ok("dmsetup", "create", "lin", "--table", "0 1024 linear pmem0 0")
    f = view / "mapper/lin"
    assert os.stat(f).st_size == 512 * 1024
    fd = os.open(f, os.O_RDWR)
    try:
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"g" * 512, 512 * 1024)
        assert e.value.errno == errno.ENOSPC
        ok("dmsetup", "load", "lin", "--table", "0 4096 linear pmem0 0")
        assert os.stat(f).st_size == 512 * 1024                 # not before the resume
        ok("dmsetup", "resume", "lin")
        assert os.stat(f).st_size == 2 * MiB and os.fstat(fd).st_size == 2 * MiB
        assert os.pwrite(fd, b"g" * 512, 512 * 1024) == 512
    finally:
        os.close(fd)


def test_lvm_devices_get_vg_lv_symlinks(view):
    ok("ndctl", "create-namespace", "-s", "4M")
    ok("dmsetup", "create", "my--vg-lv0", "-u", "LVM-abcdef", "--table", "0 2048 linear pmem0 0")
    ok("dmsetup", "create", "my--vg-lv0-real", "-u", "LVM-abcdef-real", "--table", "0 8 zero")
    ok("dmsetup", "create", "other-thing", "--table", "0 8 zero")              # not LVM's
    assert sorted(os.listdir(view)) == ["mapper", "my-vg", "pmem0"]
    assert os.listdir(view / "my-vg") == ["lv0"]
    assert os.readlink(view / "my-vg/lv0") == "../mapper/my--vg-lv0"
    dd_ok(f"of={view}/my-vg/lv0", "bs=4k", "count=1", "conv=notrunc", input=b"L" * 4096)
    assert dd_ok(f"if={view}/mapper/my--vg-lv0", "bs=4k", "count=1") == b"L" * 4096
    ok("dmsetup", "remove", "my--vg-lv0")
    assert sorted(os.listdir(view)) == ["mapper", "pmem0"]


async def test_changes_long_poll_answers_when_the_generation_moves(dmemu_root):
    async with client.connect() as k:
        g = (await k.call("changes"))["generation"]
        assert (await k.call("changes", since=g + 1, wait=True))["generation"] == g  # differs: at once
        got = []

        async def waiter():
            got.append((await k.call("changes", since=g, wait=True))["generation"])
        async with trio.open_nursery() as n:
            n.start_soon(waiter)
            await k.call("status")          # not a change: the waiter still waits
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            assert (await atool("dmemu", "disk", "create", "-s", "1M")).returncode == 0
        assert got == [g + 1]



def test_the_kernel_drops_entries_of_devices_that_went(view):
    """Nothing walks the paths here: only the view's invalidations can unhash the entries
    the open files hold, which the kernel shows as ' (deleted)' in /proc/self/fd."""
    ok("ndctl", "create-namespace", "-s", "4M")
    ok("dmsetup", "create", "a", "--table", "0 8 zero")
    ok("dmsetup", "create", "b", "--table", "0 8 zero")
    fds = {p: os.open(view / p, os.O_RDONLY) for p in ("pmem0", "mapper/a", "mapper/b")}

    def dropped(p):
        return os.readlink(f"/proc/self/fd/{fds[p]}").endswith(" (deleted)")
    try:
        assert not any(dropped(p) for p in fds)
        ok("ndctl", "disable-namespace", "namespace0.0")
        wait_for(lambda: dropped("pmem0"), what="pmem0 to be dropped")
        assert os.fstat(fds["pmem0"]).st_nlink == 0
        ok("dmsetup", "rename", "b", "c")
        wait_for(lambda: dropped("mapper/b"), what="mapper/b to be dropped")
        assert os.fstat(fds["mapper/b"]).st_nlink == 1          # renamed, not removed
        assert not dropped("mapper/a")
    finally:
        for fd in fds.values():
            os.close(fd)
    ok("dmsetup", "remove", "a")


def test_names_cannot_be_made_or_removed_through_the_view(view):
    ok("ndctl", "create-namespace", "-s", "4M")
    for op in (lambda: open(view / "new", "w"), lambda: os.mkdir(view / "d"),
               lambda: os.unlink(view / "pmem0"), lambda: os.rename(view / "pmem0", view / "x"),
               lambda: os.symlink("pmem0", view / "s"), lambda: os.mknod(view / "n")):
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno == errno.EPERM
    assert sorted(os.listdir(view)) == ["mapper", "pmem0"]


async def test_devices_churning_under_readers_leave_the_view_exact(view):
    """Devices come and go quickly while other tasks list and stat: at the end the view shows
    exactly what dmemud has, and it logged no error (the fixture checks its log)."""
    async with client.connect() as k:
        stop = trio.Event()

        def walk():
            while not stop.is_set():
                for name in os.listdir(view / "mapper"):
                    try:
                        os.stat(view / "mapper" / name)
                    except FileNotFoundError:
                        pass            # went between the listing and the stat: fine

        async with trio.open_nursery() as n:
            for _ in range(2):
                n.start_soon(trio.to_thread.run_sync, walk)
            for i in range(40):
                await k.call("dm_create", name=f"c{i}", table="0 8 zero")
                if i % 3:
                    await k.call("dm_rename", name=f"c{i}", new=f"r{i}")
                if i % 2:
                    await k.call("dm_remove", name=f"r{i}" if i % 3 else f"c{i}")
            stop.set()
        expect = sorted(d["name"] for d in (await k.call("dm_list"))["devices"])
        assert len(expect) == 20
        assert sorted(await trio.to_thread.run_sync(os.listdir, view / "mapper")) == expect
