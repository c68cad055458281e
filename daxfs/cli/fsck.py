"""fsck.daxfs: check (and with -y repair) a daxfs. Exit codes as e2fsck's."""
import argparse
import sys

import trio

from ..errors import FsError, UsageError
from ..fsck import EXIT_FIXED, EXIT_OK, EXIT_OPERATIONAL, EXIT_UNCORRECTED, check
from ..source import open_source
from .common import fail, hint_for, setup_logging

PROG = "fsck.daxfs"


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog=PROG, description="Check a daxfs filesystem. Exit status: 0 clean, 1 errors "
        "fixed, 4 errors left uncorrected, 8 operational error.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-n", dest="no", action="store_true",
                   help="open read-only, answer 'no' to every repair (the default)")
    g.add_argument("-y", dest="yes", action="store_true", help="repair everything repairable")
    p.add_argument("-f", dest="force", action="store_true", help="accepted for e2fsck "
                   "compatibility; the check always runs")
    p.add_argument("-v", dest="verbose", action="count", default=0, help="say more")
    p.add_argument("device", metavar="DEVICE")
    return p, p.parse_args(argv)


async def run(args) -> int:
    async with open_source(args.device, exclusive=args.yes, read_only=not args.yes) as dev:
        code, checker = await check(dev, repair=args.yes,
                                    out=lambda m: print(f"{args.device}: {m}"))
    if code == EXIT_OK:
        print(f"{args.device}: clean")
    elif code == EXIT_FIXED:
        print(f"{args.device}: {len(checker.fixed)} problem(s) fixed")
    elif code == EXIT_UNCORRECTED:
        print(f"{args.device}: {len(checker.errors)} problem(s) left uncorrected"
              + ("" if args.yes else "; run fsck.daxfs -y to repair"))
    return code


def main(argv=None) -> int:
    try:
        p, args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return EXIT_OPERATIONAL if e.code else 0      # e2fsck: usage errors are 8 (16)
    setup_logging(args.verbose)
    try:
        return trio.run(run, args)
    except UsageError as e:
        return fail(PROG, str(e), code=EXIT_OPERATIONAL)
    except FsError as e:
        return fail(PROG, e.strerror or str(e), hint_for(e), code=EXIT_OPERATIONAL)
    except OSError as e:
        return fail(PROG, f"{args.device}: {e.strerror}", hint_for(e), code=EXIT_OPERATIONAL)
    except Exception as e:      # a corrupted image must never end in a traceback
        return fail(PROG, f"{args.device}: cannot check: {type(e).__name__}: {e}",
                    "please report this with the image", code=EXIT_OPERATIONAL)
