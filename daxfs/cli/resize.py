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
import sys

import trio

from .. import format as fmt
from ..errors import FsError, UsageError
from ..fs import Filesystem, read_superblock
from ..resize import check_resize, resize
from ..source import open_source
from .common import fail, hint_for, setup_logging

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


async def run(args) -> None:
    want = parse_blocks(args.size) if args.size is not None else None
    try:
        async with open_source(args.device, exclusive=True, read_only=False) as dev:
            await offline(dev, args.device, want)
            return
    except FsError as e:
        if e.errno != errno.EBUSY:
            raise
    from ..online_resize import grow_mounted
    await grow_mounted(args.device, want)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(args.verbose)
    try:
        trio.run(run, args)
    except UsageError as e:
        return fail(PROG, str(e), code=e.exit_code)
    except FsError as e:
        return fail(PROG, f"{args.device}: {e.strerror or e}", hint_for(e))
    except OSError as e:
        return fail(PROG, f"{args.device}: {e.strerror}", hint_for(e))
    return 0
