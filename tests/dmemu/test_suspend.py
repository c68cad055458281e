"""Suspend and resume as Linux orders them: one ioctl at a time per device, the state set
before the filesystem is frozen, no freeze under --noflush or --nolockfs."""
import pytest
import trio

from dmemu import client
from tests.helpers import ok


@pytest.fixture
def ns(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "16M")
    return dmemu_root


async def info(k, name):
    return next(d for d in (await k.call("dm_list"))["devices"] if d["name"] == name)


class SlowFilesystem:
    """An exclusive holder whose freeze takes until the test lets it finish."""

    def __init__(self):
        self.events = []
        self.freezing = trio.Event()
        self.release = trio.Event()

    async def hook(self, kind):
        self.events.append(kind)
        if kind == "freeze":
            self.freezing.set()
            await self.release.wait()


async def test_a_resume_racing_a_suspend_waits_for_it(ns):
    async with client.connect() as k, client.connect() as fs_conn:
        await k.call("dm_create", name="lin", table="0 8192 linear pmem0 0")
        fs = SlowFilesystem()
        holder = await fs_conn.open_device("lin", exclusive=True)
        holder.freeze_hook = fs.hook
        async with trio.open_nursery() as n:
            n.start_soon(lambda: k.call("dm_suspend", name="lin"))
            with trio.fail_after(5):
                await fs.freezing.wait()
            # The ioctl state is 'suspended' from the start, before the freeze finishes.
            assert (await info(k, "lin"))["suspended"]
            resumed = trio.Event()

            async def resume():
                await k.call("dm_resume", name="lin")
                resumed.set()
            n.start_soon(resume)
            await trio.sleep(0.3)
            assert not resumed.is_set()       # it waits for the suspend to finish
            fs.release.set()
        state = await info(k, "lin")
        assert not state["suspended"], "the resume asked for last must win"
        assert fs.events == ["freeze", "thaw"]
        with trio.fail_after(5):
            await holder.write(0, b"after" * 100)


@pytest.mark.parametrize("flag", ["noflush", "nolockfs"])
async def test_noflush_and_nolockfs_do_not_freeze_the_filesystem(ns, flag):
    async with client.connect() as k, client.connect() as fs_conn:
        await k.call("dm_create", name="lin", table="0 8192 linear pmem0 0")
        fs = SlowFilesystem()
        fs.release.set()
        holder = await fs_conn.open_device("lin", exclusive=True)
        holder.freeze_hook = fs.hook
        await k.call("dm_suspend", name="lin", **{flag: True})
        assert (await info(k, "lin"))["suspended"]
        await k.call("dm_resume", name="lin")
        assert fs.events == []
        await k.call("dm_suspend", name="lin")
        await k.call("dm_resume", name="lin")
        assert fs.events == ["freeze", "thaw"]


async def test_a_failed_resume_leaves_the_device_suspended_with_its_new_table(ns):
    """dm_table_resume_targets: a preresume that refuses leaves the swap done and the device
    suspended (a snapshot whose handover source is on a running device)."""
    async with client.connect() as k:
        for name, table in (("real", "0 4096 linear pmem0 0"), ("cow", "0 1024 linear pmem0 4096"),
                            ("snap", "0 4096 snapshot real cow P 8")):
            await k.call("dm_create", name=name, table=table)
        # A second device taking the same COW over: its source, snap, is not suspended.
        await k.call("dm_create", name="snap2")
        await k.call("dm_load", name="snap2", table="0 4096 snapshot real cow P 8")
        with pytest.raises(Exception) as e:
            await k.call("dm_resume", name="snap2")
        assert "Unable to perform snapshot handover until source is suspended" in str(e.value)
        state = await info(k, "snap2")
        assert state["suspended"] and state["live"] and not state["inactive"]
        dmesg = (await k.call("dmesg"))["lines"]
        assert any(line.endswith("device-mapper: snapshots: Unable to perform snapshot handover "
                                 "until source is suspended.") for line in dmesg)


async def test_a_filesystem_that_fails_to_freeze_fails_the_suspend(ns):
    async with client.connect() as k, client.connect() as fs_conn:
        await k.call("dm_create", name="lin", table="0 8192 linear pmem0 0")
        holder = await fs_conn.open_device("lin", exclusive=True)

        async def broken(kind):
            if kind == "freeze":
                raise OSError(5, "journal commit failed")
        holder.freeze_hook = broken
        with pytest.raises(Exception) as e:
            await k.call("dm_suspend", name="lin")
        assert "could not freeze the filesystem on it: pid" in str(e.value)
        assert "nothing was changed" in str(e.value)
        assert not (await info(k, "lin"))["suspended"]
        with trio.fail_after(5):
            await holder.write(0, b"still writable" * 32)
