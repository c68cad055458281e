"""A namespace removed and enabled again under device-mapper tables.

The fixed profile loads the tables over it again, so the volumes work once it is back;
the linux profile, as Linux, leaves them failing until the user loads them again (what
`lvchange --refresh` or `vgchange -an/-ay` do), and says nothing.
"""
import pytest

from dmemu import client
from tests.helpers import ok

DATA = b"kept on the namespace" * 100


async def _write_through(name: str) -> None:
    async with client.open_device(name) as dev:
        await dev.write(8, DATA.ljust(4096, b"\0"), fua=True)


async def _read_through(name: str) -> bytes:
    async with client.open_device(name, read_only=True) as dev:
        return (await dev.read(8, 4096))[:len(DATA)]


async def _remove_and_enable(dmemu_root) -> None:
    ok("ndctl", "create-namespace", "-s", "16M")
    ok("dmsetup", "create", "lin", "--table", "0 16384 linear pmem0 2048")
    ok("dmsetup", "create", "top", "--table", "0 16384 linear lin 0")
    await _write_through("top")
    ok("ndctl", "disable-namespace", "namespace0.0")
    with pytest.raises(OSError):
        await _read_through("top")
    ok("ndctl", "enable-namespace", "namespace0.0")


async def test_fixed_profile_reattaches_the_tables_over_it(dmemu_root):
    await _remove_and_enable(dmemu_root)
    assert await _read_through("top") == DATA       # through both levels
    assert await _read_through("lin") == DATA
    assert ok("dmsetup", "table", "lin") == "0 16384 linear 259:0 2048\n"


async def test_linux_profile_needs_the_tables_loaded_again(dmemu_root):
    ok("dmemu", "profile", "linux")
    await _remove_and_enable(dmemu_root)
    with pytest.raises(OSError):
        await _read_through("top")
    ok("dmsetup", "reload", "lin", "--table", "0 16384 linear pmem0 2048")
    ok("dmsetup", "resume", "lin")
    assert await _read_through("top") == DATA
