"""The Operations class driven directly, without a mount, against a real dmemud."""
import errno
import os

import pyfuse3
import pytest

from dmemu import client
from dmemu.devview.fs import DevViewOps
from dmemu.devview.mount import DevView
from dmemu.devview.tree import ROOT
from tests.helpers import atool


async def make_ops(k):
    view = DevView(k)
    await view.refresh()
    return DevViewOps(view.tree, k, view.refresh)


async def test_open_flags_choose_the_handle_and_read_only_devices_refuse_writes(dmemu_root):
    assert (await atool("ndctl", "create-namespace", "-s", "4M")).returncode == 0
    assert (await atool("dmsetup", "create", "ro", "--readonly", "--table", "0 8 zero")).returncode == 0
    async with client.connect() as k:
        ops = await make_ops(k)
        pmem = await ops.lookup(ROOT, b"pmem0", None)
        mapper = await ops.lookup(ROOT, b"mapper", None)
        ro = await ops.lookup(mapper.st_ino, b"ro", None)
        assert ro.st_mode & 0o777 == 0o440 and ro.st_size == 4096
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.open(ro.st_ino, os.O_RDWR, None)
        assert e.value.errno == errno.EROFS
        fi = await ops.open(ro.st_ino, os.O_RDONLY, None)
        assert fi.direct_io and await ops.read(fi.fh, 0, 16) == bytes(16)
        await ops.release(fi.fh)

        fi = await ops.open(pmem.st_ino, os.O_RDONLY, None)
        status = await k.call("status")
        assert [(o["device"], o["read_only"], o["exclusive"]) for o in status["opens"]] == \
            [("pmem0", True, False)]
        await ops.release(fi.fh)
        assert (await k.call("status"))["opens"] == []           # released with the file
        fi = await ops.open(pmem.st_ino, os.O_WRONLY | os.O_DSYNC, None)
        assert await ops.write(fi.fh, 0, b"w" * 512) == 512
        assert [o["read_only"] for o in (await k.call("status"))["opens"]] == [False]
        await ops.fsync(fi.fh, False)
        await ops.release(fi.fh)


async def test_gone_nodes_answer_getattr_until_forgotten_and_refuse_opens(dmemu_root):
    assert (await atool("dmsetup", "create", "z", "--table", "0 8 zero")).returncode == 0
    async with client.connect() as k:
        ops = await make_ops(k)
        mapper = await ops.lookup(ROOT, b"mapper", None)
        z = await ops.lookup(mapper.st_ino, b"z", None)
        assert (await atool("dmsetup", "remove", "z")).returncode == 0
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.lookup(mapper.st_ino, b"z", None)
        assert e.value.errno == errno.ENOENT
        attr = await ops.getattr(z.st_ino, None)
        assert attr.st_nlink == 0 and attr.st_size == 4096
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.open(z.st_ino, os.O_RDONLY, None)
        assert e.value.errno == errno.ENXIO
        await ops.forget([(z.st_ino, 1)])
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.getattr(z.st_ino, None)
        assert e.value.errno == errno.ENOENT
