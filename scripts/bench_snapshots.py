#!/usr/bin/env python3
"""Benchmark: origin write throughput with 0, 1 and 4 snapshots, as ratios.

Each run builds an origin (snapshot-origin over a linear "-real" device on a pmem namespace)
with N snapshots (persistent stores, 4 KiB chunks), then writes the origin sequentially
with bios of each size asked for (4 KiB, as fio's default; 1 MiB, as dd bs=1M or a FUSE
write): first pass over fresh chunks (every write copies its chunks to each snapshot
first, one batch per write), second pass over the same chunks (the copies exist: writes go
straight through). Ratios are against the same origin with no snapshot and the same bio
size, measured in the same run, interleaved.

    .venv/bin/python scripts/bench_snapshots.py [--mib 16] [--rounds 3] [--bs 4k,1M]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dmemu import client  # noqa: E402

MiB = 1 << 20


def cpu_ns(pid: int) -> int:
    """CPU time the main thread of a process has run, in ns (schedstat's first field):
    dmemud serves requests, copies chunks and commits exception stores there."""
    with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
        return int(f.read().split()[0])


async def one(k, nsnaps: int, mib: int, bs: int, daemon: int) -> tuple[float, float, float]:
    """First-write and rewrite MiB/s, and the first pass's CPU (the main threads of this
    process and of dmemud) in ms per MiB: on a loaded machine the rates mostly measure
    waiting for a core, the CPU cost does not."""
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
    data = os.urandom(bs)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        cpu = time.thread_time_ns() + cpu_ns(daemon)
        for s in range(0, sectors, bs // 512):
            await dev.write(s, data)
        times.append(mib / (time.perf_counter() - t))
        if len(times) == 1:
            first_cpu = (time.thread_time_ns() + cpu_ns(daemon) - cpu) / 1e6 / mib
    await dev.close()
    for name in ["origin"] + [f"snap{i}" for i in range(nsnaps)] + [f"cow{i}" for i in range(nsnaps)] + ["real"]:
        await k.call("dm_remove", name=name)
    return times[0], times[1], first_cpu


async def measure(args):
    results = {}
    async with client.connect(prog="bench") as k:
        size = args.mib * 6 + 64
        await k.call("create_namespace", size=str(size << 20), mode="fsdax", align="4K")
        daemon = int(k.paths.pidfile.read_text().split()[0])
        for _ in range(args.rounds):
            for bs in args.bs:
                for n in (0, 1, 4):
                    r = await one(k, n, args.mib, bs, daemon)
                    for i, v in enumerate(r):
                        results.setdefault((bs, n), ([], [], []))[i].append(v)
    return {key: tuple(statistics.median(x) for x in v) for key, v in results.items()}


def size_arg(text: str) -> list[int]:
    units = {"k": 1 << 10, "m": 1 << 20}
    out = []
    for word in text.split(","):
        word = word.strip().lower()
        n = int(word[:-1]) * units[word[-1]] if word[-1:] in units else int(word)
        if n < 4096 or n % 4096 or n > 4 * MiB:
            raise argparse.ArgumentTypeError(f"bio size {word}: use multiples of 4k up to 4M")
        out.append(n)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bs", type=size_arg, default=[4096, MiB],
                   help="bio sizes, comma-separated (default 4k,1M)")
    args = p.parse_args()
    os.environ["DMEMU_ROOT"] = tempfile.mkdtemp(prefix="dmemu-bench-", dir="/tmp")
    try:
        r = trio.run(measure, args)
    finally:
        subprocess.run([sys.executable, "-m", "dmemu.cli.dmemud", "stop", "--force"], capture_output=True)
        shutil.rmtree(os.environ["DMEMU_ROOT"], ignore_errors=True)    # the namespace image
    print(f"origin bio writes over {args.mib} MiB, median of {args.rounds} interleaved rounds; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("ratios: against no snapshot, same bio size; the CPU ratio is no snapshot's CPU "
          "per MiB over this row's (what the rate ratio tends to on an idle machine)")
    print(f"{'bio':>5} {'snapshots':>9} {'first write MiB/s':>18} {'ratio':>6} "
          f"{'CPU ms/MiB':>11} {'ratio':>6} {'rewrite MiB/s':>14} {'ratio':>6}")
    for bs in args.bs:
        base_first, base_again, base_cpu = r[bs, 0]
        for n in (0, 1, 4):
            first, again, cpu = r[bs, n]
            size = f"{bs // MiB}M" if bs % MiB == 0 else f"{bs // 1024}k"
            print(f"{size:>5} {n:>9} {first:18.1f} {first / base_first:6.2f} {cpu:11.2f} "
                  f"{base_cpu / cpu:6.2f} {again:14.1f} {again / base_again:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
