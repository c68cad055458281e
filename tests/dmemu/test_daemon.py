"""dmemud's life: autostart, one daemon per state directory, stop, status, reboot semantics."""
import json
import os
import stat
import subprocess
import sys

import pytest
import trio

from dmemu import client
from dmemu.errors import DmemuError

from tests.helpers import stop_daemon, tool


def test_first_client_starts_the_daemon_with_private_socket(dmemu_root):
    assert not (dmemu_root / "dmemud.sock").exists()
    r = tool("ndctl", "list")
    assert r.returncode == 0, r.stderr
    sock = dmemu_root / "dmemud.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(dmemu_root.stat().st_mode) == 0o700
    pid = int((dmemu_root / "dmemud.pid").read_text())
    os.kill(pid, 0)
    assert "listening" in (dmemu_root / "dmemud.log").read_text()


def test_racing_clients_get_one_daemon(dmemu_root):
    procs = [subprocess.Popen([sys.executable, "-m", "dmemu.cli.ndctl", "create-namespace", "-s", "4M"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    r = tool("ndctl", "list")
    assert sorted(d["blockdev"] for d in json.loads(r.stdout)) == ["pmem0", "pmem1", "pmem2", "pmem3"]
    assert len(_daemons_of(dmemu_root)) == 1


def _daemons_of(root) -> list[str]:
    """The dmemud processes serving ``root``. Other tests' daemons come and go meanwhile:
    one that has gone between the listing and the read is not ours to count."""
    daemons = subprocess.run(["pgrep", "-f", "dmemu.cli.dmemud run"], capture_output=True,
                             text=True).stdout.split()
    mine = []
    for p in daemons:
        try:
            with open(f"/proc/{p}/environ", "rb") as f:
                if f"DMEMU_ROOT={root}\0".encode() in f.read():
                    mine.append(p)
        except OSError:
            continue
    return mine


def test_second_daemon_is_refused(dmemu_root):
    tool("dmemud", "start", check=True)
    r = subprocess.run([sys.executable, "-m", "dmemu.cli.dmemud", "run"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "already running" in r.stderr and "Traceback" not in r.stderr


def test_status_and_stop(dmemu_root):
    r = tool("dmemud", "status")
    assert r.returncode == 3 and "not running" in r.stdout
    tool("dmemud", "start", check=True)
    r = tool("dmemud", "status")
    assert r.returncode == 0 and "running: pid" in r.stdout
    r = tool("dmemud", "stop")
    assert r.returncode == 0 and "stopped" in r.stdout
    assert not (dmemu_root / "dmemud.sock").exists()
    assert tool("dmemud", "status").returncode == 3


async def test_stop_refused_while_a_device_is_open(dmemu_root):
    assert tool("ndctl", "create-namespace", "-s", "4M").returncode == 0
    async with client.open_device("/dev/pmem0", exclusive=True):
        r = await trio.to_thread.run_sync(tool, "dmemud", "stop")
        assert r.returncode == 1
        assert "in use by pid" in r.stderr and "--force" in r.stderr
        r = await trio.to_thread.run_sync(tool, "dmemud", "status")
        assert "pmem0: exclusive open by pid" in r.stdout


def test_restart_is_a_reboot_namespaces_persist(dmemu_root):
    tool("ndctl", "create-namespace", "-s", "8M", "-n", "keep", check=True)
    before = json.loads(tool("ndctl", "list").stdout)
    stop_daemon(dmemu_root)
    after = json.loads(tool("ndctl", "list").stdout)
    assert before == after


async def test_unknown_device_is_a_clear_error(dmemu_root):
    with pytest.raises(DmemuError) as e:
        async with client.open_device("/dev/pmem7"):
            pass
    assert e.value.message == "/dev/pmem7: no such device"
