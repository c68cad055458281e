#!/usr/bin/env python3
"""Benchmark of dmemu's data path, against peers measured in the same run.

Prints throughput of stores and loads through direct_access mappings and of bios through
cached leases, each as a ratio against a plain in-process memory copy and a store into a
shared mmap of a file (the peers), and the latency of a round trip to dmemud (what a lease
miss or any control operation costs). Medians of several interleaved rounds.

    .venv/bin/python scripts/bench_dmemu.py [--rounds 5] [--mib 64]
"""
import argparse
import mmap
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


def copy_loop(store, total: int, block: int) -> float:
    """Seconds to move ``total`` bytes with ``store(offset, data)`` in ``block``-byte pieces."""
    data = os.urandom(block)
    n = total // block
    t = time.perf_counter()
    for i in range(n):
        store(i * block, data)
    return time.perf_counter() - t


def load_loop(load, total: int, block: int) -> float:
    n = total // block
    t = time.perf_counter()
    for i in range(n):
        load(i * block, block)
    return time.perf_counter() - t


async def measure(args) -> dict:
    total = args.mib * MiB
    results: dict[str, list[float]] = {}

    def add(name, seconds, nbytes=total):
        results.setdefault(name, []).append(nbytes / seconds / MiB)

    mem = bytearray(total)
    mv = memoryview(mem)
    fd, path = tempfile.mkstemp(dir="/dev/shm")
    os.ftruncate(fd, total)
    fm = mmap.mmap(fd, total)

    def mem_store(off, d):
        mv[off:off + len(d)] = d

    def mem_load(off, n):
        return mem[off:off + n]

    def mmap_store(off, d):
        fm[off:off + len(d)] = d

    async with client.connect(prog="bench") as k:
        for model in ("eadr", "adr"):
            await k.call("create_namespace", size=str(total), mode="fsdax", name=f"bench-{model}",
                         persistence=model, align="4K")
        dev = await k.open_device("bench-eadr")
        adr = await k.open_device("bench-adr")
        m = await dev.direct_access(0, total // 4096, write=True)
        ma = await adr.direct_access(0, total // 4096, write=True)

        def adr_store_flush(off, d):
            ma.write(off, d)
            ma.flush(off, len(d))

        for _ in range(args.rounds):
            for block in (4096, MiB):
                tag = "4 KiB" if block == 4096 else "1 MiB"
                add(f"store {tag}: memory copy (peer)", copy_loop(mem_store, total, block))
                add(f"store {tag}: shared mmap of a file (peer)", copy_loop(mmap_store, total, block))
                add(f"store {tag}: direct_access, eadr", copy_loop(m.write, total, block))
                add(f"store {tag}: direct_access + flush, adr", copy_loop(adr_store_flush, total, block))
                add(f"load {tag}: memory copy (peer)", load_loop(mem_load, total, block))
                add(f"load {tag}: direct_access", load_loop(m.read, total, block))
                # bios through the cached lease: an await per bio, no round trip
                data = os.urandom(block)
                t = time.perf_counter()
                for i in range(total // block):
                    await dev.write(i * block // 512, data)
                add(f"store {tag}: bio write, eadr", time.perf_counter() - t)
                t = time.perf_counter()
                for i in range(total // block):
                    await dev.read(i * block // 512, block)
                add(f"load {tag}: bio read", time.perf_counter() - t)
        # Round trips: what every lease miss and control operation costs.
        lat = []
        for _ in range(2000):
            t = time.perf_counter()
            await k.call("resolve", handle=dev.handle, sector=0, nr=1, write=False)
            lat.append(time.perf_counter() - t)
        await dev.close()
        await adr.close()
        for model in ("eadr", "adr"):
            await k.call("destroy", device=f"bench-{model}", kind="pmem")
    fm.close()
    os.close(fd)
    os.unlink(path)
    lat.sort()
    return {"throughput": {k: statistics.median(v) for k, v in results.items()},
            "rtt_median_us": statistics.median(lat) * 1e6, "rtt_p99_us": lat[int(len(lat) * 0.99)] * 1e6}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--mib", type=int, default=64, help="bytes moved per measurement, in MiB")
    args = p.parse_args()
    own_root = "DMEMU_ROOT" not in os.environ
    if own_root:
        os.environ["DMEMU_ROOT"] = tempfile.mkdtemp(prefix="dmemu-bench-", dir="/tmp")
    try:
        r = trio.run(measure, args)
    finally:
        if own_root:
            subprocess.run([sys.executable, "-m", "dmemu.cli.dmemud", "stop", "--force"],
                           capture_output=True)
    tp = r["throughput"]
    print(f"dmemu data path, {args.mib} MiB per measurement, median of {args.rounds} rounds")
    print(f"{'workload':<46} {'MiB/s':>9} {'vs memory copy':>15}")
    for name, v in tp.items():
        kind = name.split(":")[0]
        peer = tp[f"{kind}: memory copy (peer)"]
        print(f"{name:<46} {v:9.0f} {v / peer:14.2f}x")
    print(f"round trip to dmemud (resolve): median {r['rtt_median_us']:.0f} us, "
          f"p99 {r['rtt_p99_us']:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
