"""mkfs.daxfs: make a daxfs on an image file or a dmemu device."""
import argparse
import sys
import uuid as uuidlib

import trio

from ..errors import FsError, UsageError
from ..mkfs import detect_signature, mkfs
from ..source import open_source
from .common import run_tool, setup_logging

PROG = "mkfs.daxfs"


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description="Make a daxfs filesystem on DEVICE "
                                "(an image file or a dmemu device such as /dev/pmem0).")
    p.add_argument("-L", dest="label", default="", help="volume label (at most 63 bytes)")
    p.add_argument("-U", dest="uuid", help="filesystem UUID (default: random)")
    p.add_argument("-f", dest="force", action="store_true",
                   help="overwrite an existing filesystem or volume signature")
    p.add_argument("-v", dest="verbose", action="count", default=0, help="say more")
    p.add_argument("device", metavar="DEVICE")
    return p.parse_args(argv)


async def run(args) -> None:
    fs_uuid = None
    if args.uuid:
        try:
            fs_uuid = uuidlib.UUID(args.uuid).bytes
        except ValueError:
            raise UsageError(f"invalid UUID '{args.uuid}'; give it as "
                             "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx") from None
    if len(args.label.encode()) > 63:
        raise UsageError("label longer than 63 bytes; choose a shorter -L")
    async with open_source(args.device, exclusive=True, read_only=False) as dev:
        if not args.force:
            found = await detect_signature(dev)
            if found:
                raise UsageError(f"{args.device} already contains a {found} signature; "
                                 "use -f to overwrite it")
        sb = await mkfs(dev, label=args.label, fs_uuid=fs_uuid)
    print(f"{args.device}: daxfs, {sb.total_blocks} blocks of 4096, {sb.total_inodes - 1} "
          f"inodes, uuid {uuidlib.UUID(bytes=sb.uuid)}" + (f", label '{sb.label}'" if sb.label else ""))


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(args.verbose)
    return run_tool(PROG, run, args, args.device)
