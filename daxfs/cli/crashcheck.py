"""crashcheck: run workloads on a recorded daxfs and check every crash point.

    crashcheck [-w WORKLOAD]... [--size MiB] [--max-points N] [--broken]

For each workload: a fresh dmemud state, a disk with a volatile write cache under a
log-writes target, mkfs, mount, the workload, unmount; then every FLUSH and FUA point
after mkfs is rebuilt under the block layer's crash model, fsck'd and checked against
the workload's oracle. Prints the points checked; on failure the first failing point and
what was wrong, and exits 1. --broken mounts with commits that skip their flush, which the
checker must catch.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from ..crash_workloads import DAX_WORKLOADS, WORKLOADS

PROG = "crashcheck"
TOOLS = str(Path(__file__).resolve().parent.parent.parent / "tools")


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("-w", "--workload", action="append",
                   choices=sorted(set(WORKLOADS) | set(DAX_WORKLOADS)),
                   help="a workload (default: all of the mode)")
    p.add_argument("--mode", choices=("log", "fences"), default="log",
                   help="log: a disk under log-writes, every FLUSH/FUA point (default); "
                        "fences: an adr pmem namespace mounted with DAX, every fence")
    p.add_argument("--size", type=int, default=32, help="device size in MiB (default 32)")
    p.add_argument("--max-points", type=int, help="check at most this many points each")
    p.add_argument("--broken", action="store_true",
                   help="mount broken on purpose (the checker must fail): log mode commits "
                        "without their flush, fences mode never flushes DAX stores")
    return p.parse_args(argv)


async def one(name: str, args) -> tuple[int, list]:
    from dmemu import client
    from ..crashcheck import run_fence_mode, run_log_mode
    async with client.connect(prog=PROG) as k:
        if args.mode == "fences":
            return await run_fence_mode(k, DAX_WORKLOADS[name], size_mib=args.size, tools=TOOLS,
                                        max_points=args.max_points, broken=args.broken,
                                        progress=lambda m: None)
        return await run_log_mode(k, WORKLOADS[name], size_mib=args.size, tools=TOOLS,
                                  broken=args.broken, max_points=args.max_points,
                                  progress=lambda m: None)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    failed = False
    table = DAX_WORKLOADS if args.mode == "fences" else WORKLOADS
    for name in args.workload or sorted(table):
        if name not in table:
            print(f"{PROG}: workload {name} does not run in {args.mode} mode; "
                  f"choose from {', '.join(sorted(table))}", file=sys.stderr)
            return 2
        root = tempfile.mkdtemp(prefix="crashcheck-", dir="/tmp")
        os.environ["DMEMU_ROOT"] = root
        try:
            points, failures = trio.run(one, name, args)
        except Exception as e:
            print(f"{PROG}: {name}: {e}", file=sys.stderr)
            return 2
        finally:
            subprocess.run([f"{TOOLS}/dmemud", "stop", "--force"], capture_output=True)
            shutil.rmtree(root, ignore_errors=True)
        print(f"{name}: {points} {'fences' if args.mode == 'fences' else 'crash points'} "
              f"checked, {len(failures)} failed")
        if failures:
            failed = True
            point, problems = failures[0]
            where = "fence" if args.mode == "fences" else "log entry"
            print(f"  first failure at {where} {point}:")
            for p in problems[:5]:
                print(f"    {p}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
