"""Two processes see each other's stores through direct_access, without a socket per store."""
import subprocess
import sys
import textwrap

import trio

from dmemu import client
from tests.helpers import tool

WRITER = textwrap.dedent("""
    import sys, trio
    from dmemu import client
    async def main():
        async with client.open_device("pmem0") as dev:
            m = await dev.direct_access(1, 1, write=True)
            m.write(0, b"from the other process")
            m.flush(0, 22)
            print("stored", flush=True)
            sys.stdin.readline()          # keep the mapping until told to go
            print(m.read(100, 5).decode(), flush=True)
    trio.run(main)
""")


async def test_stores_are_loads_in_another_process(dmemu_root):
    assert tool("ndctl", "create-namespace", "-s", "4M").returncode == 0
    proc = await trio.to_thread.run_sync(lambda: subprocess.Popen(
        [sys.executable, "-c", WRITER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    try:
        line = await trio.to_thread.run_sync(proc.stdout.readline)
        assert line == "stored\n"
        async with client.open_device("pmem0") as dev:
            m = await dev.direct_access(1, 1, write=True)
            assert m.read(0, 22) == b"from the other process"
            m.write(100, b"hello")               # and back the other way
        out, _ = await trio.to_thread.run_sync(lambda: proc.communicate("go\n", timeout=30))
        assert out == "hello\n"
    finally:
        if proc.poll() is None:
            proc.kill()
