"""POSIX ACLs in the Filesystem API and in fsck (the mount-level behaviour is in
test_vfs_edges.py)."""
import errno
import os
import stat

import pytest

from daxfs import acl
from daxfs.errors import FsError
from daxfs.fs import Filesystem
from daxfs.fsck import check

from .conftest import assert_clean

R = 1
U, G, M, O = acl.USER_OBJ, acl.GROUP_OBJ, acl.MASK, acl.OTHER
X = acl.UNDEFINED_ID


def named(mode_user=7, uid=1000, perm=5, mask=7, group=5, other=0):
    return acl.pack([(U, mode_user, X), (acl.USER, perm, uid), (G, group, X), (M, mask, X),
                     (O, other, X)])


async def test_acl_rules(fs):
    ino = (await fs.mknod(R, b"f", stat.S_IFREG | 0o644)).ino
    with pytest.raises(FsError) as e:
        await fs.setxattr(ino, acl.ACCESS, b"\x02\0\0\0garbage!")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(FsError) as e:
        await fs.setxattr(ino, acl.DEFAULT, named())
    assert e.value.errno == errno.EACCES              # default ACLs only on directories
    await fs.setxattr(ino, acl.ACCESS, named(mask=6))
    assert (await fs.getattr(ino)).mode & 0o777 == 0o760
    await fs.setattr(ino, mode=0o604)
    assert acl.parse(await fs.getxattr(ino, acl.ACCESS))[3] == (M, 0, X)
    # an ACL that says only what the mode says is not kept
    await fs.setxattr(ino, acl.ACCESS, acl.pack(acl.from_mode(0o640)))
    assert acl.ACCESS not in await fs.listxattr(ino)
    assert (await fs.getattr(ino)).mode & 0o777 == 0o640

    d = (await fs.mkdir(R, b"d", 0o755)).ino
    await fs.setxattr(d, acl.DEFAULT, named(other=5))
    f2 = await fs.mknod(d, b"x", stat.S_IFREG | 0o640)
    assert acl.parse(await fs.getxattr(f2.ino, acl.ACCESS)) == \
        [(U, 6, X), (acl.USER, 5, 1000), (G, 5, X), (M, 4, X), (O, 0, X)]
    assert f2.mode & 0o777 == 0o640
    sub = await fs.mkdir(d, b"sub", 0o777)
    assert await fs.getxattr(sub.ino, acl.DEFAULT) == named(other=5)
    assert sub.mode & 0o777 == 0o775


async def test_fsck_checks_acls(dev):
    fs = await Filesystem.mount(dev)
    a = (await fs.mknod(R, b"a", stat.S_IFREG | 0o644)).ino
    b = (await fs.mknod(R, b"b", stat.S_IFREG | 0o644)).ino
    await fs.setxattr(a, acl.ACCESS, named())
    await fs.setxattr(b, acl.ACCESS, named())
    await fs.setxattr(b, b"user.keep", b"1")
    # damage behind the filesystem's back: a malformed ACL, a mode out of step
    ia, ib = await fs.iget(a), await fs.iget(b)
    ia.xattrs[acl.ACCESS] = acl.pack([(U, 7, X), (acl.USER, 5, 1000), (O, 0, X)])
    fs.dirty_xattrs.add(ia)
    ib.xattrs[acl.ACCESS] = named(mask=3)
    fs.dirty_xattrs.add(ib)
    await fs.sync()
    await fs.unmount()
    msgs = []
    code, _ = await check(dev, out=msgs.append)
    assert code != 0
    assert any("inode %d" % a in m and "posix_acl_access" in m for m in msgs), msgs
    assert any("inode %d" % b in m and "disagrees" in m for m in msgs), msgs
    code, _ = await check(dev, repair=True, out=msgs.append)
    await assert_clean(dev)
    fs = await Filesystem.mount(dev)
    assert await fs.listxattr(a) == []
    assert (await fs.getattr(b)).mode & 0o777 == 0o730
    assert await fs.getxattr(b, b"user.keep") == b"1"
    await fs.unmount()


async def test_chmod_of_a_file_with_an_acl_survives_power_failure_after_fsync(dev):
    """fsync after chmod makes the rewritten ACL durable with the mode (a fast-commit
    record carries no xattrs, so the inode commits in full)."""
    fs = await Filesystem.mount(dev)
    fh, inode = await fs.create(R, b"f", 0o644, os.O_RDWR)
    await fs.setxattr(inode.ino, acl.ACCESS, named())
    await fs.fsync(fh)
    await fs.setattr(inode.ino, mode=0o600)
    await fs.fsync(fh)
    dev.power_fail()
    fs2 = await Filesystem.mount(dev)
    assert (await fs2.getattr(inode.ino)).mode & 0o777 == 0o600
    assert acl.mode_bits(acl.parse(await fs2.getxattr(inode.ino, acl.ACCESS))) == 0o600
    await fs2.unmount()
    await assert_clean(dev)
