#!/usr/bin/env python3
"""Benchmark: origin write throughput with 0, 1 and 4 snapshots, as ratios.

Each run builds an origin (snapshot-origin over a linear "-real" device on a pmem namespace)
with N snapshots (persistent stores, 4 KiB chunks), then writes the origin with 4 KiB bios:
first pass over fresh chunks (every write copies the chunk to each snapshot first), second
pass over the same chunks (the copies exist: writes go straight through). Ratios are
against the same origin with no snapshot, measured in the same run.

    .venv/bin/python scripts/bench_snapshots.py [--mib 16] [--rounds 3]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dmemu import client  # noqa: E402

MiB = 1 << 20


async def one(k, nsnaps: int, mib: int) -> tuple[float, float]:
    sectors = mib * MiB // 512
    cow = sectors + 64 * 8          # room for every chunk plus the metadata areas
    await k.call("dm_create", name="real", table=f"0 {sectors} linear pmem0 0")
    for i in range(nsnaps):
        await k.call("dm_create", name=f"cow{i}", table=f"0 {cow} linear pmem0 {sectors + i * cow}")
        # A new store, as lvcreate makes it: zero the header so no earlier round's
        # exceptions are loaded.
        c = await k.open_device(f"cow{i}")
        await c.write(0, bytes(4096))
        await c.close()
        await k.call("dm_create", name=f"snap{i}", table=f"0 {sectors} snapshot real cow{i} P 8")
    await k.call("dm_create", name="origin", table=f"0 {sectors} snapshot-origin real")
    dev = await k.open_device("origin")
    data = os.urandom(4096)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        for s in range(0, sectors, 8):
            await dev.write(s, data)
        times.append(mib / (time.perf_counter() - t))
    await dev.close()
    for name in ["origin"] + [f"snap{i}" for i in range(nsnaps)] + [f"cow{i}" for i in range(nsnaps)] + ["real"]:
        await k.call("dm_remove", name=name)
    return times[0], times[1]


async def measure(args):
    results = {}
    async with client.connect(prog="bench") as k:
        size = args.mib * 6 + 64
        await k.call("create_namespace", size=str(size << 20), mode="fsdax", align="4K")
        for _ in range(args.rounds):
            for n in (0, 1, 4):
                first, again = await one(k, n, args.mib)
                results.setdefault(n, ([], []))
                results[n][0].append(first)
                results[n][1].append(again)
    return {n: (statistics.median(a), statistics.median(b)) for n, (a, b) in results.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    os.environ["DMEMU_ROOT"] = tempfile.mkdtemp(prefix="dmemu-bench-", dir="/tmp")
    try:
        r = trio.run(measure, args)
    finally:
        subprocess.run([sys.executable, "-m", "dmemu.cli.dmemud", "stop", "--force"], capture_output=True)
    base_first, base_again = r[0]
    print(f"origin 4 KiB bio writes over {args.mib} MiB, median of {args.rounds} rounds")
    print(f"{'snapshots':>9} {'first write MiB/s':>18} {'ratio':>6} {'rewrite MiB/s':>14} {'ratio':>6}")
    for n, (first, again) in r.items():
        print(f"{n:>9} {first:18.1f} {first / base_first:6.2f} {again:14.1f} {again / base_again:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
