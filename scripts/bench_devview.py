#!/usr/bin/env python3
"""Benchmark of the device view: sequential dd through its files against dd on the images.

For each device (an eadr namespace, a disk with a write cache, a linear DM device on the
namespace) dd moves the same bytes in 1 MiB blocks: writes with conv=fsync, reads with
iflag=direct, through the view's file and on the device's backing image file directly (the
peer). The peer's direct reads come from the host's disk, so buffered peer reads (from the
page cache, where the view's data lives too) are measured as well. Medians of interleaved
rounds, printed as MiB/s and as ratios view/peer.

    .venv/bin/python scripts/bench_devview.py [--rounds 3] [--mib 128]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOP)
from dmemu.media import Media  # noqa: E402

MiB = 1 << 20


def run(*args, check=True):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"bench_devview: {' '.join(map(str, args))} failed: {r.stderr.strip()}")
    return r.stdout


def tool(name, *args):
    return run(os.path.join(TOP, "tools", name), *args)


def dd_seconds(*args) -> float:
    t = time.perf_counter()
    run("dd", "status=none", *args)
    return time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mib", type=int, default=128, help="MiB moved per measurement")
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="dmemu-bench-", dir="/tmp")
    os.environ["DMEMU_ROOT"] = root
    n = args.mib
    size = f"{n * 2}M"
    try:
        tool("ndctl", "create-namespace", "-s", size)
        tool("dmemu", "disk", "create", "-s", size)
        tool("dmsetup", "create", "lin", "--table", f"0 {n * 2048} linear pmem0 {n * 2048}")
        tool("dmemu-devview")
        view = os.path.join(root, "dev")
        images = {}
        for line in json.loads(open(os.path.join(root, "hardware.json")).read())["devices"]:
            files = Media.spec_for(line["model"], os.path.join(root, "images", line["uuid"]), line["size"])
            images[line["blockdev"]] = files["media"] or files["view"]
        cases = [("pmem0 (eadr)", f"{view}/pmem0", images["pmem0"], 0),
                 ("disk0 (write cache)", f"{view}/disk0", images["disk0"], 0),
                 ("mapper/lin on pmem0", f"{view}/mapper/lin", images["pmem0"], n)]
        res: dict[str, list[float]] = {}

        def add(key, seconds):
            res.setdefault(key, []).append(n / seconds)

        for _ in range(args.rounds):
            for name, vfile, image, skip in cases:
                common = ["bs=1M", f"count={n}"]
                add((name, "write", "view"), dd_seconds("if=/dev/zero", f"of={vfile}", *common,
                                                        "conv=fsync,notrunc"))
                add((name, "write", "peer"), dd_seconds("if=/dev/zero", f"of={image}", *common,
                                                        f"seek={skip}", "conv=fsync,notrunc"))
                add((name, "read direct", "view"), dd_seconds(f"if={vfile}", "of=/dev/null", *common,
                                                              "iflag=direct"))
                add((name, "read direct", "peer"), dd_seconds(f"if={image}", "of=/dev/null", *common,
                                                              f"skip={skip}", "iflag=direct"))
                add((name, "read cached", "peer"), dd_seconds(f"if={image}", "of=/dev/null", *common,
                                                              f"skip={skip}"))
    finally:
        subprocess.run([os.path.join(TOP, "tools", "dmemu-devview"), "--stop"], capture_output=True)
        subprocess.run([sys.executable, "-m", "dmemu.cli.dmemud", "stop", "--force"],
                       capture_output=True, cwd=TOP)
        shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"device view: dd, 1 MiB blocks, {n} MiB per measurement, median of {args.rounds} rounds")
    print(f"{'device':<22} {'workload':<34} {'view MiB/s':>10} {'peer MiB/s':>10} {'view/peer':>10}")
    for name, *_ in cases:
        for what, peer in (("write", "write"), ("read direct", "read direct"), ("read direct", "read cached")):
            v, q = med[(name, what, "view")], med[(name, peer, "peer")]
            label = f"{what} vs peer {peer}" if what != peer else what
            print(f"{name:<22} {label:<34} {v:10.0f} {q:10.0f} {v / q:9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
