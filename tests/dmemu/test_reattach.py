"""A dmemud that dies under its clients: they reattach when it is back, or fail cleanly.

Restarting dmemud is a reboot after a crash. An open device comes back on the next I/O when
it is still the same device and nothing not yet durable was lost (eadr pmem: a store is
durable when it lands); otherwise every I/O fails with EIO and a reason that says how to
recover. Mounts once stayed broken until umount + mount even when nothing was lost.
"""
import errno
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import trio

from dmemu import client
from scripts.fuzzing.common import alive
from tests.helpers import TOOLS, ok, tool


def _kill_daemon(root: Path) -> None:
    pid = int((root / "dmemud.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    for _ in range(500):
        if not alive(pid):      # gone, or a zombie its parent has not reaped yet
            return
        time.sleep(0.01)
    raise AssertionError("dmemud did not die")


async def _noticed(dev) -> None:
    """Until the client has seen its connection close, I/O may still be served from the
    leases it holds (loads and stores in memory, no daemon asked): what is tested is what
    comes after."""
    with trio.fail_after(30):
        while not dev.lost:
            await trio.sleep(0.01)


async def test_an_eadr_device_is_reattached_after_dmemud_is_killed(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "8M", "-a", "4K")
    async with client.open_device("/dev/pmem0", exclusive=True) as dev:
        await dev.write(0, b"a" * 4096, fua=True)
        m = await dev.direct_access(1, 1, write=True)
        m.write(0, b"b" * 4096)
        await trio.to_thread.run_sync(_kill_daemon, dmemu_root)
        await _noticed(dev)
        # The next I/O brings dmemud back (as any client would) and opens the device again.
        assert await dev.read(0, 4096) == b"a" * 4096
        assert await dev.read(8, 4096) == b"b" * 4096
        await dev.write(16, b"c" * 4096)
        # It holds its exclusive claim again: a second writer is refused.
        r = await trio.to_thread.run_sync(lambda: tool("mkfs.daxfs", "/dev/pmem0"))
        assert r.returncode != 0 and "claimed" in r.stderr


def _exiting_daemon(path: Path, started, stop) -> None:
    """Stand in for a killed dmemud that has not finished exiting: its socket still takes
    connections and drops them, unanswered, until it is gone."""
    path.unlink()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    srv.settimeout(0.05)
    started.set()
    try:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            conn.close()
    finally:
        srv.close()


async def test_a_daemon_still_exiting_is_not_taken_for_a_running_one(dmemu_root):
    """Its socket takes the connection: the client must not stop there, but start a new
    dmemud (the probe asks for an answer, not a connection) and reattach to it."""
    ok("ndctl", "create-namespace", "-s", "8M", "-a", "4K")
    async with client.open_device("/dev/pmem0", exclusive=True) as dev:
        await dev.write(0, b"a" * 4096, fua=True)
        await trio.to_thread.run_sync(_kill_daemon, dmemu_root)
        await _noticed(dev)
        started, stop = threading.Event(), threading.Event()
        t = threading.Thread(target=_exiting_daemon,
                             args=(dmemu_root / "dmemud.sock", started, stop))
        t.start()
        started.wait()
        try:
            assert await dev.read(0, 4096) == b"a" * 4096
        finally:
            stop.set()
            await trio.to_thread.run_sync(t.join)
    # and a new client (any tool) finds the new daemon
    ok("ndctl", "list")


async def test_an_adr_device_that_lost_stores_is_not_reattached(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "8M", "-a", "4K", "--persistence", "adr")
    async with client.open_device("/dev/pmem0", exclusive=True) as dev:
        m = await dev.direct_access(0, 1, write=True)
        m.write(0, b"x" * 4096)          # never flushed: lost when dmemud comes up again
        await trio.to_thread.run_sync(_kill_daemon, dmemu_root)
        await _noticed(dev)
        with pytest.raises(OSError) as e:
            await dev.read(0, 4096)
        assert e.value.errno == errno.EIO
        assert "not yet durable on pmem0 were lost" in str(e.value) and "fsck" in str(e.value)
        with pytest.raises(OSError):     # and it stays so: no half-trusted device
            await dev.write(0, b"y" * 512)
