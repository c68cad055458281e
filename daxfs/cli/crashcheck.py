"""crashcheck: record workloads on a real daxfs and check every crash state they allow.

    crashcheck [-w WORKLOAD]... [--mode log|fences|both] [--seed N] [--samples K]
               [--count N] [--workers N | --scheduler ADDRESS] [--json FILE]
               [--state ID] [--size MiB] [--broken]
    crashcheck report RESULTS.json [-o CHART.png]

WORKLOAD: a shipped workload (fsync-files, rename-storm, ...), a generated family
(seq-1: every one-operation sequence; seq-2, seq-3: --count sampled sequences) or one
generated workload (seq-2/17). Default: the shipped workloads of the mode.

Each workload runs on a fresh daxfs: over a disk with a volatile write cache under
log-writes (log mode), or on an adr pmem namespace mounted with DAX (fences mode). Then
every crash state the hardware allows (crash_states) is rebuilt and checked with fsck and
the workload's oracle, as tasks on a Dask cluster: a LocalCluster with one worker per
core (--workers N; 0 checks in this process) or the cluster at --scheduler. Exit 1 when
a state fails, with the command that checks that state alone.
"""
import argparse
import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import trio

from .. import crash_ace
from ..crash_workloads import DAX_WORKLOADS, WORKLOADS

PROG = "crashcheck"
TOOLS = str(Path(__file__).resolve().parent.parent.parent / "tools")
SHOWN_FAILURES = 3          # printed in full per workload; all of them go to --json


class UsageError(Exception):
    pass


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                epilog="crashcheck report RESULTS.json [-o CHART.png]: "
                                       "summary and chart of a --json file")
    p.add_argument("-w", "--workload", action="append", metavar="WORKLOAD",
                   help="a shipped workload, seq-1, seq-2, seq-3, or seq-N/I "
                        "(default: the shipped workloads of the mode)")
    p.add_argument("--mode", choices=("log", "fences", "both"), default="log",
                   help="log: a disk with a write cache under log-writes (default); "
                        "fences: an adr pmem namespace mounted with DAX; both")
    p.add_argument("--seed", type=int, default=1, help="seed of every sample (default 1)")
    p.add_argument("--samples", type=int, default=8,
                   help="random subsets per crash point beyond one-out/one-in (default 8)")
    p.add_argument("--bound", type=int, default=None, metavar="N",
                   help="at most N states per crash point (the first of none, all, "
                        "one-out, one-in, torn, samples; default: no bound)")
    p.add_argument("-x", "--exitfirst", action="store_true",
                   help="stop at the first failed state")
    p.add_argument("--count", type=int, default=None,
                   help="sequences sampled for seq-2 and seq-3 (default 100)")
    p.add_argument("--spread", type=int, default=None, metavar="N",
                   help="only N of the seq-1 sequences, evenly spread over its operations "
                        "(default: all)")
    p.add_argument("--workers", type=int, default=None,
                   help="LocalCluster workers (default: one per core; 0: check here)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="check on the Dask cluster of this scheduler (tcp://host:8786)")
    p.add_argument("--json", metavar="FILE", help="write every result to FILE")
    p.add_argument("--state", metavar="ID", help="check only this state (as a failure names it)")
    p.add_argument("--size", type=int, default=None,
                   help="device size in MiB (default 32; 8 for generated workloads)")
    p.add_argument("--broken", action="store_true",
                   help="mount broken on purpose (the checker must fail): log mode commits "
                        "without their flush, fences mode never flushes DAX stores")
    p.add_argument("--record-jobs", type=int, default=3, metavar="N",
                   help="workloads recorded at once (default 3)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.workers is not None and a.workers < 0:
        p.error("--workers must be 0 or more")
    if a.workers is not None and a.scheduler:
        p.error("--workers and --scheduler exclude each other")
    if a.record_jobs < 1:
        p.error("--record-jobs must be 1 or more")
    if a.samples < 0 or (a.count is not None and a.count < 1) or (a.spread or 1) < 1 or (a.bound is not None and a.bound < 1):
        p.error("--samples must be 0 or more, --count, --spread and --bound 1 or more")
    return a


def resolve(args) -> list:
    """[(name, mode, workload function, alphabet, size MiB, description)] to record."""
    modes = ["log", "fences"] if args.mode == "both" else [args.mode]
    specs = args.workload or None
    out = []
    for mode in modes:
        names = specs or sorted(DAX_WORKLOADS if mode == "fences" else WORKLOADS)
        for spec in names:
            if crash_ace.is_generated(spec):
                try:
                    gen = crash_ace.generated(spec, args.seed, args.count, args.spread)
                except ValueError as e:
                    raise UsageError(str(e)) from None
                for name, seq in gen:
                    out.append((name, mode, crash_ace.workload_for(seq), crash_ace.ALPHABET,
                                args.size or 8, crash_ace.describe(seq)))
                continue
            table = dict(WORKLOADS, **DAX_WORKLOADS)
            if spec not in table:
                raise UsageError(f"unknown workload {spec}; choose from "
                                 f"{', '.join(sorted(table))}, seq-1, seq-2, seq-3")
            if mode == "fences" and spec == "snapshot-during-writes":
                if specs and args.mode == "fences":
                    raise UsageError(f"workload {spec} does not run in fences mode "
                                     "(it snapshots through device-mapper)")
                continue
            fn = table[spec]
            out.append((spec, mode, fn, None, args.size or 32,
                        (fn.__doc__ or "").strip().splitlines()[0]))
    # both models of a workload one after the other: a run cut short has checked both
    rank = {}
    for name, mode, *_ in out:
        rank.setdefault(name, len(rank))
    return sorted(out, key=lambda item: (rank[item[0]], modes.index(item[1])))


def reproduce_cmd(args, name: str, mode: str, state: str | None) -> str:
    cmd = [PROG, "-w", name, "--mode", mode]
    if state:
        cmd += ["--state", state]
    cmd += ["--seed", str(args.seed)]
    if args.samples != 8:
        cmd += ["--samples", str(args.samples)]
    if args.bound:
        cmd += ["--bound", str(args.bound)]
    if name.startswith(("seq-2/", "seq-3/")) and args.count not in (None, 100):
        cmd += ["--count", str(args.count)]
    if args.size:
        cmd += ["--size", str(args.size)]
    if args.broken:
        cmd.append("--broken")
    return " ".join(cmd)


class Run:
    """Counters and results, updated from the workers' callbacks (another thread)."""

    def __init__(self, args, progress):
        self.args = args
        self.lock = threading.Lock()
        self.runs = {}            # (name, mode) -> dict
        self.order = []
        self.checked = self.failed = self.total = 0
        self.progress = progress
        self.t0 = time.perf_counter()
        self.stop = threading.Event()        # -x: a state failed, check no more
        self.rank = {}

    def ordered(self) -> list:
        """The runs in the order the workloads were asked for, whatever finished first."""
        return sorted(self.order, key=lambda k: self.rank.get(k, 0))

    def add(self, name, mode, description, rec=None, error=None, record_seconds=0.0):
        r = {"workload": name, "family": name.split("/")[0], "mode": mode,
             "description": description, "states": 0, "points": 0, "repaired": 0,
             "failures": [], "record_seconds": round(record_seconds, 3),
             "check_seconds": 0.0, "expected": 0, "repairs": []}
        if error:
            r["failures"].append({"state": "workload", "problems": [error],
                                  "reproduce": reproduce_cmd(self.args, name, mode, None)})
        with self.lock:
            self.runs[(name, mode)] = r
            self.order.append((name, mode))
            if error:
                self.failed += 1
                if self.args.exitfirst:
                    self.stop.set()
        return r

    def expect(self, key, n, points):
        with self.lock:
            self.runs[key]["expected"] += n
            self.runs[key]["points"] = points
            self.total += n
        self.progress.update(total=self.total)

    def done(self, res):
        name, mode = res.key.rsplit("|", 1)
        with self.lock:
            r = self.runs[(name, mode)]
            r["states"] += res.checked
            r["repaired"] += res.repaired
            for sid, found in res.repairs:
                if len(r["repairs"]) < 3:
                    r["repairs"].append({"state": sid, "fsck": found})
            r["check_seconds"] = round(r["check_seconds"] + res.seconds, 3)
            for sid, problems in res.failures:
                r["failures"].append({"state": sid, "problems": problems,
                                      "reproduce": reproduce_cmd(self.args, name, mode, sid)})
            self.checked += res.checked
            self.failed += len(res.failures)
            if self.failed and self.args.exitfirst:
                self.stop.set()
        self.progress.update(advance=res.checked, failed=self.failed,
                             rate=self.checked / max(time.perf_counter() - self.t0, 1e-9))


class Progress:
    """A rich progress bar on stderr (states/s, failures so far), or nothing."""

    def __init__(self, quiet: bool):
        self.bar = None
        if quiet:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                   TimeElapsedColumn)
        console = Console(stderr=True)
        if not console.is_terminal:
            return
        self.bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(),
                       MofNCompleteColumn(), TextColumn("{task.fields[rate]:.0f} states/s"),
                       TextColumn("[red]{task.fields[failed]} failed"), TimeElapsedColumn(),
                       console=console, transient=False)
        self.task = self.bar.add_task("crash states", total=0, rate=0.0, failed=0)

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def update(self, **kw):
        if self.bar:
            self.bar.update(self.task, **kw)

    def log(self, text):
        if self.bar:
            self.bar.console.print(text, markup=False, highlight=False)


async def record_all(todo, args, runner, run: Run, progress: Progress):
    """Record the workloads, a few at a time (a recording mostly waits for a daxfs process
    to start and mount), and hand their states to the runner as each is ready."""
    from dmemu import client
    from ..crash_explore import batches
    from ..crash_record import record_log, record_pmem
    limiter = trio.CapacityLimiter(max(1, args.record_jobs))

    async def one(name, mode, fn, alphabet, size, desc):
        async with limiter:
            if args.exitfirst and run.failed:
                return
            progress.update(description=f"{name} ({mode})")
            record = record_pmem if mode == "fences" else record_log
            t0 = time.perf_counter()
            try:
                async with client.connect(prog=PROG) as k:
                    rec = await record(k, name, fn, size_mib=size, tools=TOOLS,
                                       broken=args.broken, alphabet=alphabet)
            except Exception as e:
                # a workload that fails on daxfs is a finding too
                run.add(name, mode, desc, error=f"the workload failed: {e}")
                return
        key = f"{name}|{mode}"
        run.add(name, mode, desc, rec=rec, record_seconds=time.perf_counter() - t0)
        if args.state:
            from ..crash_states import find_state
            st = find_state(rec, args.state, args.seed, args.samples)
            if st is None:
                raise UsageError(f"{name} ({mode}) has no state {args.state} "
                                 "(the recording differs, or the seed or bounds do)")
            all_batches = [[st]]
        else:
            all_batches = list(batches(rec, args.seed, args.samples, bound=args.bound))
        points = len({s.point for b in all_batches for s in b})
        run.expect((name, mode), sum(len(b) for b in all_batches), points)
        for b in all_batches:
            runner.submit(key, rec, b, run.done)

    runner.stop = run.stop
    async with trio.open_nursery() as nursery:
        for item in todo:
            nursery.start_soon(one, *item)


def _run_unwrapped(fn, *args) -> None:
    """trio.run, raising the first error itself rather than the nursery's group of them
    (Ctrl-C, a usage error found while recording)."""
    try:
        trio.run(fn, *args)
    except BaseExceptionGroup as group:
        leaf = group
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None


def print_results(run: Run, args) -> bool:
    failed = False
    many = len(run.order) > 12
    families = {}
    for key in run.ordered():
        r = run.runs[key]
        f = families.setdefault((r["family"], r["mode"]), [0, 0, 0, 0])
        f[0] += 1
        f[1] += r["states"]
        f[2] += len(r["failures"])
        f[3] += r["repaired"]
        if r["failures"]:
            failed = True
        if many and not r["failures"]:
            continue
        extra = f", {r['repaired']} repaired by fsck" if r["repaired"] else ""
        print(f"{r['workload']} ({r['mode']}): {r['states']} states at {r['points']} crash "
              f"points checked, {len(r['failures'])} failed{extra}")
        for fail in r["failures"][:SHOWN_FAILURES]:
            print(f"  FAILED {r['workload']} [{r['description']}] state {fail['state']}:")
            for p in fail["problems"][:5]:
                print(f"    {p}")
            print(f"    reproduce: {fail['reproduce']}")
        if len(r["failures"]) > SHOWN_FAILURES:
            print(f"  ... and {len(r['failures']) - SHOWN_FAILURES} more failed states"
                  + (f" (all in {args.json})" if args.json else " (--json FILE lists them)"))
    if many:
        for (fam, mode), (n, states, fails, rep) in sorted(families.items()):
            print(f"{fam} ({mode}): {n} workloads, {states} states checked, {fails} failed, "
                  f"{rep} repaired by fsck")
    return failed


def write_json(path: str, run: Run, args, seconds: float, workers: int,
               interrupted: bool = False) -> None:
    doc = {"interrupted": interrupted, "seed": args.seed, "samples": args.samples, "count": args.count,
           "broken": args.broken, "workers": workers, "seconds": round(seconds, 2),
           "states": run.checked, "failed": run.failed,
           "load": list(os.getloadavg()),
           "runs": [run.runs[k] for k in run.ordered()]}
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)


def _terminate_as_interrupt(signum, frame) -> None:
    """SIGTERM (a test's timeout, a batch system's kill) cleans up as Ctrl-C does: the
    mounts, devices and dmemud of the recordings and the Dask workers. Through SIGINT's own
    handler where there is one, which trio runs at a point where it is safe."""
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        from ..crash_report import main as report_main
        return report_main(argv[1:])
    args = parse_args(argv)
    try:
        todo = resolve(args)
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    if args.json:
        d = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(d):
            print(f"{PROG}: cannot write {args.json}: {d} is not a directory", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    root = tempfile.mkdtemp(prefix="crashcheck-", dir="/tmp")
    caller_root = os.environ.get("DMEMU_ROOT")
    os.environ["DMEMU_ROOT"] = root      # a dmemud of its own, which it stops at the end
    runner = None
    progress = Progress(args.quiet)
    run = Run(args, progress)
    run.rank = {(name, mode): i for i, (name, mode, *_) in enumerate(todo)}
    t0 = time.perf_counter()
    try:
        from ..crash_explore import DaskRunner, LocalRunner
        try:
            if args.state or args.workers == 0:
                runner = LocalRunner()
            else:
                runner = DaskRunner(workers=args.workers or os.cpu_count() or 1,
                                    scheduler=args.scheduler)
        except OSError as e:
            print(f"{PROG}: cannot reach the Dask scheduler {args.scheduler}: {e}",
                  file=sys.stderr)
            return 2
        with progress:
            _run_unwrapped(record_all, todo, args, runner, run, progress)
            runner.wait()
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; {run.checked} states checked", file=sys.stderr)
        if args.json:           # what was checked so far still counts
            write_json(args.json, run, args, time.perf_counter() - t0,
                       runner.workers if runner else 0, interrupted=True)
        return 130
    except Exception as e:
        print(f"{PROG}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    finally:
        if runner is not None:
            runner.close()
        subprocess.run([f"{TOOLS}/dmemud", "stop", "--force"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        if caller_root is None:
            os.environ.pop("DMEMU_ROOT", None)
        else:
            os.environ["DMEMU_ROOT"] = caller_root
    seconds = time.perf_counter() - t0
    failed = print_results(run, args)
    print(f"{run.checked} states in {seconds:.1f} s ({run.checked / max(seconds, 1e-9):.0f} "
          f"states/s, {runner.workers or 'no'} workers), {run.failed} failed")
    if args.json:
        write_json(args.json, run, args, seconds, runner.workers)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
