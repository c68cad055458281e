"""daxfs-rmap: which file and offset own a device sector, or which sector holds an offset.

    daxfs-rmap SOURCE SECTOR...                 sector 4120: /data/victim offset 8192
    daxfs-rmap SOURCE --file PATH --offset N    sector 4120 holds offset 8192 of PATH

SECTOR is a 512-byte sector of the device, as `ndctl list --media-errors` reports them.
Works beside a mount: the device is opened read-only.
"""
import argparse
import os
import sys

import trio

from ..errors import FsError, UsageError
from ..fs import Filesystem
from ..rmap import owners, sector_of
from ..source import open_source
from .common import fail, hint_for, setup_logging

PROG = "daxfs-rmap"


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description="Map device sectors to the files "
                                "and offsets that own them, or a file offset to its sector.")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("sectors", metavar="SECTOR", nargs="*", type=int)
    p.add_argument("--file", help="a file on a mounted daxfs (with --offset)")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("-v", dest="verbose", action="count", default=0)
    args = p.parse_args(argv)
    if not args.sectors and not args.file:
        p.error("give sectors, or --file PATH --offset N")
    return args


async def run(args) -> int:
    async with open_source(args.source, exclusive=False, read_only=True) as dev:
        fs = await Filesystem.mount(dev, read_only=True)
        if args.file:
            try:
                ino = os.stat(args.file).st_ino
            except OSError as e:
                raise UsageError(f"{args.file}: {e.strerror}") from None
            s = await sector_of(fs, ino, args.offset)
            if s is None:
                print(f"offset {args.offset} of {args.file} is a hole: no sector holds it")
            else:
                print(f"sector {s} holds offset {args.offset} of {args.file}")
        else:
            for s, what in sorted((await owners(fs, args.sectors)).items()):
                print(f"sector {s}: {what}")
    return 0


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(args.verbose)
    try:
        return trio.run(run, args)
    except UsageError as e:
        return fail(PROG, str(e))
    except (FsError, OSError) as e:
        msg = str(e.strerror or e)
        return fail(PROG, msg if msg.startswith(args.source) else f"{args.source}: {msg}",
                    hint_for(e))
