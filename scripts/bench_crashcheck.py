"""How crash-state checking scales with Dask workers, and how fast the broken modes are caught.

    .venv/bin/python scripts/bench_crashcheck.py scaling [--rounds 3] [--spread 4]
    .venv/bin/python scripts/bench_crashcheck.py broken --old CHECKOUT [--rounds 2]

scaling: records a few generated workloads once (both crash models), then checks all of
their states on a LocalCluster of 1 worker and of 2 workers, alternately, and prints the
states/s of each round, the medians and their ratio, with the load average before and
after. Only the checking is timed (the cluster is up and has the recordings), so the
ratio is the scaling of the part that runs on the workers.

broken: the three broken-on-purpose runs (log and fences fsync-append, fences dax-msync),
each as the checkout at CHECKOUT runs it (`crashcheck --broken`, every point) and as this
one does with -x (stop at the first failed state), interleaved; seconds until exit.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP))


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def record(spread: int, samples: int) -> list:
    import trio

    from daxfs import crash_ace
    from daxfs.crash_record import record_log, record_pmem
    from dmemu import client
    recs = []

    async def run():
        async with client.connect(prog="bench_crashcheck") as k:
            for name, seq in crash_ace.generated("seq-1", 1, None, spread):
                for fn in (record_log, record_pmem):
                    recs.append(await fn(k, name, crash_ace.workload_for(seq), size_mib=8,
                                         tools=str(TOP / "tools"), alphabet=crash_ace.ALPHABET))
    root = tempfile.mkdtemp(prefix="bench-crash-")
    os.environ["DMEMU_ROOT"] = root
    try:
        trio.run(run)
    finally:
        subprocess.run([str(TOP / "tools/dmemud"), "stop", "--force"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    return recs


def check_on(workers: int, recs: list, jobs: list) -> float:
    """states/s of checking ``jobs`` [(rec index, batch)] on a fresh LocalCluster."""
    import logging
    import warnings
    warnings.filterwarnings("ignore", message="Port .* is already in use")
    logging.getLogger("distributed").setLevel(logging.CRITICAL)

    from distributed import Client, LocalCluster, wait

    from daxfs.crash_explore import check_batch
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.CRITICAL) as cluster, \
            Client(cluster) as c:
        data = [c.scatter(r, broadcast=True, hash=False) for r in recs]
        # warm up: every worker imports the checker once
        wait([c.submit(check_batch, f"warm{i}", data[0], jobs[0][1][:1], pure=False)
              for i in range(workers * 2)])
        t0 = time.perf_counter()
        futs = [c.submit(check_batch, f"r{i}", data[i], b, pure=False) for i, b in jobs]
        results = c.gather(futs)
        secs = time.perf_counter() - t0
    assert not any(r.failures for r in results), [r.failures for r in results if r.failures]
    return sum(r.checked for r in results) / secs


def scaling(args) -> None:
    from daxfs.crash_explore import batches
    recs = record(args.spread, args.samples)
    jobs = [(i, b) for i, r in enumerate(recs) for b in batches(r, 1, args.samples)]
    n = sum(len(b) for _, b in jobs)
    print(f"{len(recs)} recordings, {n} states in {len(jobs)} batches; load {load()}")
    rates = {1: [], 2: []}
    ratios = []
    for rnd in range(args.rounds):
        for w in ((1, 2) if rnd % 2 == 0 else (2, 1)):
            before = load()
            r = check_on(w, recs, jobs)
            rates[w].append(r)
            print(f"round {rnd + 1}: {w} worker(s): {r:.0f} states/s (load {before} -> {load()})")
        # the two runs of one round are back to back: their ratio is the least disturbed
        # by a load that drifts over minutes
        ratios.append(rates[2][-1] / rates[1][-1])
        print(f"round {rnd + 1}: ratio {ratios[-1]:.2f}")
    m1, m2 = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"median: 1 worker {m1:.0f} states/s, 2 workers {m2:.0f} states/s; median of the "
          f"rounds' ratios {statistics.median(ratios):.2f}; load {load()}")


def broken(args) -> None:
    runs = [["-w", "fsync-append"], ["--mode", "fences", "-w", "fsync-append"],
            ["--mode", "fences", "-w", "dax-msync"]]
    old, new = Path(args.old) / "tools/crashcheck", TOP / "tools/crashcheck"
    times = {}
    for rnd in range(args.rounds):
        for argv in runs:
            for label, cmd in (("before", [str(old), *argv, "--broken"]),
                               ("now -x", [str(new), *argv, "--broken", "-x", "--workers", "0",
                                           "-q"])):
                t0 = time.perf_counter()
                r = subprocess.run(cmd, capture_output=True, text=True)
                secs = time.perf_counter() - t0
                caught = r.returncode == 1 and "differ from what was made durable" in r.stdout
                times.setdefault((" ".join(argv), label), []).append(secs)
                print(f"round {rnd + 1}: {' '.join(argv)} {label}: {secs:.1f} s, "
                      f"{'caught' if caught else 'NOT CAUGHT'} (load {load()})")
    for (argv, label), ts in times.items():
        print(f"{argv} {label}: median {statistics.median(ts):.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("scaling")
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--spread", type=int, default=4)
    s.add_argument("--samples", type=int, default=8)
    b = sub.add_parser("broken")
    b.add_argument("--old", required=True, help="a checkout of the crashcheck to compare with")
    b.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    scaling(args) if args.what == "scaling" else broken(args)


if __name__ == "__main__":
    main()
