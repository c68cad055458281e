#!/usr/bin/env python3
"""How close daxfs's write rows can get: pyfuse3's own floor, measured beside the peers.

bench_peers.py's targets for the write rows are ratios to pyfuse3's passthroughfs. This
measures, in the same run and interleaved, a pyfuse3 filesystem that does nothing at all
(scripts/floorfs: every write dropped, every fsync a no-op, the attributes cached for a
minute), passthroughfs and daxfs, on the three rows of one or two requests per operation:

  rand write 4 KiB, O_DIRECT      one WRITE per write
  rand write 4 KiB (+ final fsync)  one WRITE per write (no writeback cache)
  4 KiB write + fsync each        WRITE and FSYNC (passthroughfs answers FSYNC with ENOSYS
                                   once, and the kernel then never sends it again)

A target above the floor's own ratio asks for less than pyfuse3's request loop costs.
Needs root, /dev/fuse, fio; run scripts/setup.sh first.
"""
import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_peers as bp  # noqa: E402

ROWS = [  # key, label, daxfs target (ratio to passthroughfs)
    ("odirect", "rand write 4 KiB, O_DIRECT", 1.5),
    ("randwrite", "rand write 4 KiB + final fsync", 1.5),
    ("fsynceach", "4 KiB write + fsync each", 1.0),
]


def floor_subject(sizes: bp.Sizes) -> bp.FuseCommandSubject:
    return bp.FuseCommandSubject(
        "pyfuse3-floor", lambda backing, mnt: [bp.VENV_PYTHON, "-m", "scripts.floorfs", mnt],
        sizes)


def write_rows(path: Path, sizes: bp.Sizes) -> dict:
    size = f"--size={sizes.file_mib}M"
    rand_io = f"--io_size={sizes.rand_io_mib}M"
    cap = f"--runtime={sizes.runtime_s}"
    r = {}
    job = bp.fio(path, "odirect", "f", "--rw=randwrite", "--bs=4k", "--direct=1", size,
                 rand_io, cap)
    r["odirect"] = bp._rate(job, "write", "IOPS")
    job = bp.fio(path, "randwrite", "f", "--rw=randwrite", "--bs=4k", size, rand_io, cap,
                 "--end_fsync=1")
    r["randwrite"] = bp._rate(job, "write", "IOPS")
    # a file of its own, as in bench_peers.py: appends, not writes into the random writes'
    # thousands of extents
    job = bp.fio(path, "fsynceach", "sync", "--rw=write", "--bs=4k",
                 f"--size={sizes.fsync_file_mib}M", cap, "--fsync=1")
    r["fsynceach"] = bp._rate(job, "write", "IOPS")
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--cache-dir", type=Path, default=bp.DEFAULT_CACHE,
                   help=f"where the pyfuse3 examples are kept (default {bp.DEFAULT_CACHE})")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    bp.check_requirements()
    sizes = bp.QUICK if args.quick else bp.FULL
    examples = bp.fetch_pyfuse3_examples(bp.VENV_PYTHON, args.cache_dir)
    subjects = [
        floor_subject(sizes),
        bp.FuseCommandSubject("passthroughfs", lambda backing, mnt: [
            bp.VENV_PYTHON, examples / "passthroughfs.py", backing, mnt], sizes),
        bp.daxfs_subject(sizes, "always"),
    ]
    os.chdir(bp.TOP)             # python -m scripts.floorfs
    load_before = os.getloadavg()
    raw = {s.name: [] for s in subjects}
    base = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    try:
        for round_no in range(args.runs):
            order = subjects[round_no % len(subjects):] + subjects[:round_no % len(subjects)]
            for s in order:
                workdir = base / f"{s.name}-{round_no}"
                workdir.mkdir()
                t = time.monotonic()
                with s.mount(workdir) as m:
                    raw[s.name].append(write_rows(m.path, sizes))
                print(f"round {round_no + 1}/{args.runs}: {s.name} ({time.monotonic() - t:.0f} s)")
    finally:
        shutil.rmtree(base, ignore_errors=True)     # unmounted by then
    med = {name: {k: statistics.median(r[k] for r in rounds) for k, _, _ in ROWS}
           for name, rounds in raw.items()}
    ref = med["passthroughfs"]
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"\n{when}  medians of {args.runs} interleaved round(s)"
          f"{'  (--quick sizes)' if args.quick else ''}  load average "
          f"{load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    names = [s.name for s in subjects]
    head = f"{'workload (IOPS)':32} " + " ".join(f"{n:>17}" for n in names) + \
        "   floor/pt  daxfs/pt  daxfs/floor  target"
    print(head)
    print("-" * len(head))
    for key, label, target in ROWS:
        vals = [med[n][key] for n in names]
        fl, pt, dx = med["pyfuse3-floor"][key], ref[key], med["daxfs-dax-always"][key]
        print(f"{label:32} " + " ".join(f"{v:>17,.0f}" for v in vals) +
              f"   {fl / pt:7.2f}x  {dx / pt:7.2f}x  {dx / fl:10.2f}x  {target:5.1f}x")
    print("pt: passthroughfs. A target above floor/pt asks for less than pyfuse3's own floor.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
