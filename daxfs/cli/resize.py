"""daxfs-resize: grow or shrink a daxfs, as resize2fs does for ext4.

Offline (an image or a device nobody has claimed), the filesystem is opened here, checked
read-only first so a refused resize writes nothing, then resized through its journal
(daxfs/resize.py). A device a mount holds is grown online by that mount: the request goes
to the mount as the control xattr user.daxfs.resize on its root directory, which the
mount's xattr code handles (daxfs/xattr.py). Shrinking a mounted filesystem is refused, as
ext4 refuses it.
"""
import argparse
import errno
import os
import sys

import trio
from dmemu.lvm.fsprobe import mounted_at

from .. import format as fmt
from ..errors import FsError, UsageError
from ..fs import Filesystem, read_superblock
from ..resize import check_resize, resize
from ..source import open_source
from ..xattr import RESIZE_XATTR
from .common import run_tool, setup_logging

PROG = "daxfs-resize"


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog=PROG, description="Grow or shrink the daxfs on DEVICE (an image file or a dmemu "
        "device) to SIZE, by default the size of the device. A mounted filesystem can only "
        "grow (online).")
    p.add_argument("-v", dest="verbose", action="count", default=0, help="say more")
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("size", metavar="SIZE", nargs="?",
                   help="new size in bytes, or with a K, M, G or T suffix")
    return p.parse_args(argv)


def parse_blocks(text: str) -> int:
    from dmemu.errors import DmemuError
    from dmemu.units import parse_size
    try:
        nbytes = parse_size(text)
    except DmemuError as e:
        raise UsageError(f"{e.message}") from None
    return nbytes // fmt.BLOCK_SIZE       # resize2fs rounds down to whole blocks


async def offline(dev, name: str, want: int | None) -> None:
    sb, why = await read_superblock(dev)
    if why:
        raise UsageError(f"{name}: {why}; run fsck.daxfs -y {name} first")
    if sb.state != fmt.STATE_CLEAN:
        raise UsageError(f"{name}: the filesystem was not cleanly unmounted; run "
                         f"fsck.daxfs -y {name} (or mount and unmount it) first")
    dev_blocks = dev.nr_sectors // fmt.BLOCK_SECTORS
    new = dev_blocks if want is None else want
    # the check runs on a read-only mount: a refusal leaves the device byte for byte as it was
    ro = await Filesystem.mount(dev, read_only=True)
    try:
        check_resize(ro, new, dev_blocks)
    except FsError as e:
        raise UsageError(f"{name}: {e.strerror}") from None
    if new == sb.total_blocks:
        print(f"The filesystem on {name} is already {new} (4k) blocks long.  Nothing to do!")
        return
    print(f"Resizing the filesystem on {name} to {new} (4k) blocks.")
    fs = await Filesystem.mount(dev)
    try:
        await resize(fs, new)
    finally:
        await fs.unmount()
    print(f"The filesystem on {name} is now {new} (4k) blocks long.")


def sources_of(device: str) -> set[str]:
    """Every name a mount of ``device`` may show as its source (the mount records SOURCE
    as it was given): an image by any path to it, a device with or without /dev/, an LV as
    /dev/VG/LV or /dev/mapper/VG-LV."""
    names = {device, os.path.realpath(device)} if os.path.exists(device) else {device}
    for n in list(names):
        short = n[5:] if n.startswith("/dev/") else n
        names |= {short, "/dev/" + short}
        parts = short.split("/")
        if len(parts) == 2 and parts[0] != "mapper":
            dm = "-".join(p.replace("-", "--") for p in parts)
            names |= {f"/dev/mapper/{dm}", f"mapper/{dm}", dm}
    return names


def mount_of(device: str) -> str | None:
    """The mount point of the daxfs mount of ``device``, or of ``device`` itself when it
    is such a mount point (as xfs_growfs takes one)."""
    if os.path.isdir(device):
        try:
            os.getxattr(device, RESIZE_XATTR)
            return device
        except OSError:
            return None
    return mounted_at(sources_of(device))


def grow_online(name: str, mnt: str, uuid: str | None, want: int | None) -> None:
    """Ask the mount at mnt to grow; uuid, when known, is the filesystem on the device
    named, which the mount must hold."""
    try:
        size, most, dev_blocks, fs_uuid = os.getxattr(mnt, RESIZE_XATTR).decode().split()
        size, most, dev_blocks = int(size), int(most), int(dev_blocks)
    except (OSError, ValueError):
        raise UsageError(f"{name}: mounted on {mnt} by a daxfs that cannot grow online "
                         "(one older than daxfs-resize); unmount it first") from None
    if uuid is not None and fs_uuid != uuid:
        raise UsageError(f"{name} is in use, and not by the daxfs mounted on {mnt} (another "
                         "filesystem); stop its user first")
    new = dev_blocks if want is None else want
    if new < size:
        raise UsageError(f"{name}: mounted on {mnt}: on-line shrinking is not supported; "
                         "unmount it first")
    if new == size:
        print(f"The filesystem on {name} is already {new} (4k) blocks long.  Nothing to do!")
        return
    if new > dev_blocks:
        raise UsageError(f"{name}: the new size ({new} blocks) is larger than the device "
                         f"({dev_blocks} blocks); grow the device first")
    if new > most:
        raise UsageError(f"{name}: the block bitmap of this filesystem covers at most {most} "
                         f"blocks ({most * 4}K); to grow beyond that, copy the files to a "
                         "new mkfs.daxfs")
    print(f"Filesystem at {name} is mounted on {mnt}; on-line resizing required")
    try:
        os.setxattr(mnt, RESIZE_XATTR, str(new).encode())
    except OSError as e:
        raise FsError(e.errno, f"{mnt}: the mount refused to grow: {e.strerror}") from None
    print(f"The filesystem on {name} is now {new} (4k) blocks long.")


async def run(args) -> None:
    want = parse_blocks(args.size) if args.size is not None else None
    if os.path.isdir(args.device):
        mnt = mount_of(args.device)
        if mnt is None:
            raise UsageError(f"{args.device}: not the mount point of a daxfs")
        await trio.to_thread.run_sync(grow_online, args.device, mnt, None, want)
        return
    try:
        async with open_source(args.device, exclusive=True, read_only=False) as dev:
            await offline(dev, args.device, want)
        return
    except FsError as e:
        if e.errno != errno.EBUSY:
            raise
        busy = e
    # Claimed: by a mount, if one shows it as its source and holds the same filesystem
    # (a device name is only unique within one dmemud, and the mount table is the
    # machine's), else by something else that must let go first.
    mnt = mount_of(args.device)
    if mnt is None:
        raise busy
    uuid = None
    if not os.path.isfile(args.device):
        async with open_source(args.device, exclusive=False, read_only=True) as dev:
            sb, _ = await read_superblock(dev)
            uuid = sb.uuid.hex()
    await trio.to_thread.run_sync(grow_online, args.device, mnt, uuid, want)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(args.verbose)
    return run_tool(PROG, run, args, args.device)
