"""Helpers for the device view tests: waiting on a condition, dd, reading through the client."""
import subprocess
import time

import trio

from dmemu import client


def wait_for(predicate, timeout=10.0, what="condition"):
    """Check ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def dd(*args, input: bytes | None = None) -> subprocess.CompletedProcess:
    # From a pipe, dd takes whatever one read returns as a block unless told to fill it.
    full = ["iflag=fullblock"] if input is not None else []
    return subprocess.run(["dd", "status=none", *full, *map(str, args)], input=input,
                          capture_output=True, timeout=120)


def dd_ok(*args, input: bytes | None = None) -> bytes:
    r = dd(*args, input=input)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def device_bytes(name: str, offset: int, n: int) -> bytes:
    """Read a device through the client API, not through the view: what really landed."""
    async def go():
        async with client.open_device(name, read_only=True) as dev:
            return await dev.read(offset // 512, n)
    return trio.run(go)

