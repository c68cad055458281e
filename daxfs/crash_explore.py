"""Checking crash states in batches, here or on the workers of a Dask cluster.

A batch is a list of states of one recording, in point order. The process that checks it
keeps the recording (Dask scatters it once to every worker) and a BaseBuilder per
recording, so consecutive batches move the base image forward instead of rebuilding it:
a state costs its own writes, fsck and the oracle, nothing proportional to the device or
the log.

The states, their names and their batches depend on the recording, the seed and the
bounds only, never on the number or order of workers, so a cluster and one process check
the same states and report the same failures.
"""
import logging
import threading
import time
import warnings
from dataclasses import dataclass, field

import trio

from .crash_oracle import check_device, expectations
from .crash_states import BaseBuilder, OverlayDevice, Recording, State, state_device, states

BATCH_STATES = 256         # 0.3 to 3 s of work: a task costs the scheduler and the client a
                           # few ms, which with 32 states took the second core's gain away


@dataclass
class BatchResult:
    key: str
    checked: int = 0
    repaired: int = 0
    failures: list = field(default_factory=list)     # (state id, problems)
    repairs: list = field(default_factory=list)      # (state id, fsck's findings): a few
    seconds: float = 0.0


_builders: dict = {}       # per process: recording key -> BaseBuilder (a few, most recent)


def _builder(key: str, rec: Recording) -> BaseBuilder:
    b = _builders.get(key)
    if b is None or b.rec is not rec:
        if len(_builders) >= 4:
            _builders.pop(next(iter(_builders)))
        b = _builders[key] = BaseBuilder(rec)
    return b


async def check_state(rec: Recording, state: State, builder: BaseBuilder) -> tuple[list, list]:
    """(problems, what fsck repaired, if it had to) of one state."""
    dev = state_device(rec, state, builder)
    fsdev = OverlayDevice(dev.base, rec.fs_bytes)
    fsdev.blocks = dev.blocks
    want = expectations(rec.events, rec.position, state.point)
    problems, repaired = await check_device(fsdev, want, rec.bounds)
    snap = rec.snapshot
    if snap and state.point > snap["at"]:
        from .crash_record import snapshot_view
        view = snapshot_view(dev.image(), rec.fs_bytes, snap["cow_offset"], snap["cow_bytes"])
        if view is None:
            problems.append("snapshot: its COW store is invalid")
        else:
            snap_want = expectations(rec.events, rec.position, snap["at"])
            more, _ = await check_device(OverlayDevice(view, rec.fs_bytes), snap_want)
            problems += [f"snapshot: {p}" for p in more]
    return problems, repaired


def check_batch(key: str, rec: Recording, batch: list) -> BatchResult:
    """Check a batch of states (run on a worker, or here)."""
    # a crash state is damaged by design: what daxfs logs on meeting it is the checker's
    # to report, not noise on the terminal
    logging.getLogger("daxfs").setLevel(logging.CRITICAL)
    builder = _builder(key, rec)
    res = BatchResult(key)
    t0 = time.perf_counter()

    async def run():
        for state in batch:
            try:
                problems, repaired = await check_state(rec, state, builder)
            except Exception as e:        # a crash of the checker on this state is a finding
                problems, repaired = [f"checking raised {type(e).__name__}: {e}"], []
            res.checked += 1
            if repaired:
                res.repaired += 1
                if len(res.repairs) < 2:
                    res.repairs.append((state.id, repaired))
            if problems:
                res.failures.append((state.id, problems))
    trio.run(run)
    res.seconds = time.perf_counter() - t0
    return res


def batches(rec: Recording, seed: int, samples: int, size: int = BATCH_STATES,
            bound: int | None = None):
    """The recording's states in batches of about ``size``, in point order; at most
    ``bound`` per point (the first ones: none, all, one-out, ...) when given."""
    cur = []
    per_point = {}
    for s in states(rec, seed, samples):
        if bound is not None:
            per_point[s.point] = per_point.get(s.point, 0) + 1
            if per_point[s.point] > bound:
                continue
        cur.append(s)
        if len(cur) >= size:
            yield cur
            cur = []
    if cur:
        yield cur


class LocalRunner:
    """Batches checked in this process, one after the other (``--workers 0``), once the
    recordings are made (they run in their own event loop)."""
    workers = 0
    stop = None

    def __init__(self):
        self.queue = []

    def submit(self, key, rec, batch, done):
        self.queue.append((key, rec, batch, done))

    def wait(self):
        while self.queue and not (self.stop and self.stop.is_set()):
            key, rec, batch, done = self.queue.pop(0)
            done(check_batch(key, rec, batch))

    def close(self):
        pass


class DaskRunner:
    """Batches checked as tasks on a dask.distributed cluster: a LocalCluster of
    ``workers`` processes (one thread each: the checker is pure Python and holds the GIL),
    or the cluster whose scheduler listens at ``scheduler``."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None):
        import logging
        from distributed import Client, LocalCluster
        logging.getLogger("distributed").setLevel(logging.ERROR)
        # the scheduler's HTTP server takes another port when another cluster has 8787
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        self.cluster = None
        if scheduler:
            self.client = Client(scheduler, timeout="20s")
        else:
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, silence_logs=logging.CRITICAL)
            self.client = Client(self.cluster)
        self.workers = len(self.client.scheduler_info()["workers"])
        self.stop = None
        self.scattered = {}       # recording key -> [its future on the workers, batches]
        self.futures = []
        self.finished = 0
        self.errors = []
        self.lock = threading.Lock()

    def submit(self, key, rec, batch, done):
        with self.lock:
            if key not in self.scattered:
                self.scattered[key] = [self.client.scatter(rec, broadcast=True, hash=False), 0]
            self.scattered[key][1] += 1
            data = self.scattered[key][0]
        fut = self.client.submit(check_batch, key, data, batch, pure=False)
        self.futures.append(fut)
        self.done = done
        fut.add_done_callback(lambda f: self._finished(key, f))

    def _finished(self, key, fut):
        """In the client's thread: hand the result on; forget a recording no batch needs
        (dropping its future lets the workers free it)."""
        try:
            if not fut.cancelled():
                self.done(fut.result())
        except Exception as e:
            self.errors.append(e)
        with self.lock:
            self.finished += 1
            entry = self.scattered.get(key)
            if entry is not None:
                entry[1] -= 1
                if entry[1] == 0:
                    del self.scattered[key]

    def wait(self):
        """Until every batch is checked (or, with a stop event set, no more is wanted)."""
        while self.finished < len(self.futures):
            if self.errors:
                raise self.errors[0]
            if self.stop is not None and self.stop.is_set():
                break
            time.sleep(0.05)
        if self.errors:
            raise self.errors[0]
        for fut in self.futures:
            fut.cancel()
        self.futures = []
        self.scattered.clear()

    def close(self):
        """Shut the workers down (also on failure and Ctrl-C): nothing is left running."""
        for fut in self.futures:
            fut.cancel()
        try:
            self.client.close(timeout=10)
        finally:
            if self.cluster is not None:
                self.cluster.close(timeout=10)
