"""replay-log: list a log-writes log, or replay it onto a device to an entry or a mark.

Named and shaped after fstests' src/log-writes/replay-log:

    replay-log --log LOGDEV --num-entries
    replay-log --log LOGDEV -v --limit 0                 (list entries and marks)
    replay-log --log LOGDEV --find --end-mark NAME      (the entry number of a mark)
    replay-log --log LOGDEV --replay DEV [--limit N | --end-mark NAME]
    replay-log --log LOGDEV --replay DEV --check flush|fua --fsck "CMD" [--start-mark M]
        (replay to each flush or FUA point in turn and run CMD there; stop at the first
         failure, exit 1 and name the entry)
"""
import subprocess
import sys

import trio

from .. import client
from ..dm.replay import apply, is_point, mark_name, read_log
from ..errors import DmemuError
from .common import ArgumentParser, command_main


def build_parser(prog: str) -> ArgumentParser:
    p = ArgumentParser(prog=prog, description="Replay a log-writes log onto a device.")
    p.add_argument("-v", "--verbose", action="store_true", help="list every entry replayed")
    p.add_argument("--log", required=True, help="the log device")
    p.add_argument("--replay", help="the device to replay onto")
    p.add_argument("--limit", type=int, help="replay entries 0..N-1 only")
    p.add_argument("--end-mark", help="replay up to and including this mark")
    p.add_argument("--start-mark", help="with --check: check only the points after this mark "
                   "(e.g. one sent once mkfs finished)")
    p.add_argument("--find", action="store_true", help="print the entry number of --end-mark")
    p.add_argument("--num-entries", action="store_true", help="print the number of entries")
    p.add_argument("--check", choices=("flush", "fua"), help="run --fsck at every such point")
    p.add_argument("--fsck", help="shell command to run at each --check point")
    return p


async def _main(args) -> int:
    async with client.connect(prog="replay-log") as k:
        log = await k.open_device(args.log, read_only=True)
        entries = await read_log(log)
        if args.num_entries:
            print(len(entries))
            return 0
        marks = {}
        for e in entries:
            if e.flags & 8:
                marks[await mark_name(log, e)] = e.index
        end = len(entries)
        if args.end_mark is not None:
            if args.end_mark not in marks:
                raise DmemuError(2, f"mark '{args.end_mark}' not found in the log "
                                    f"({len(marks)} marks: {', '.join(marks) or 'none'})")
            end = marks[args.end_mark] + 1
            if args.find:
                print(marks[args.end_mark])
                return 0
        if args.limit is not None:
            end = min(end, args.limit)
        if args.replay is None:
            for e in entries:
                extra = f" {await mark_name(log, e)}" if e.flags & 8 else ""
                print(f"{e.index} {e.flag_text} sector {e.sector} nr {e.nr_sectors}{extra}")
            return 0
        if args.check and not args.fsck:
            raise DmemuError(22, "--check needs --fsck CMD to run at each point")
        start = 0
        if args.start_mark is not None:
            if args.start_mark not in marks:
                raise DmemuError(2, f"mark '{args.start_mark}' not found in the log")
            start = marks[args.start_mark]
        dev = await k.open_device(args.replay, exclusive=True)
        points = 0
        for e in entries[:end]:
            await apply(log, dev, e)
            if args.verbose:
                print(f"replayed {e.index} {e.flag_text} sector {e.sector} nr {e.nr_sectors}")
            if args.check and e.index >= start and is_point(e, args.check):
                points += 1
                await dev.flush()
                await dev.close()       # the checker opens the device itself
                r = await trio.to_thread.run_sync(
                    lambda: subprocess.run(args.fsck, shell=True, capture_output=True, text=True))
                if r.returncode:
                    print(f"check failed after entry {e.index} ({e.flag_text}): "
                          f"'{args.fsck}' exited {r.returncode}", file=sys.stderr)
                    sys.stderr.write(r.stdout + r.stderr)
                    return 1
                dev = await k.open_device(args.replay, exclusive=True)
        await dev.flush()
        if args.check:
            print(f"checked {points} {args.check} points")
    return 0


def main(argv=None) -> int:
    return command_main("replay-log", build_parser, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
