#!/usr/bin/env python3
"""Measure the filesystems daxfs is compared with, in the same run (design.md section 6).

Peers:
  kernel-tmpfs    the memory ceiling: a kernel tmpfs mount
  pyfuse3-tmpfs   pyfuse3's examples/tmpfs.py (everything in an in-memory sqlite)
  passthroughfs   pyfuse3's examples/passthroughfs.py over a tmpfs backing directory:
                  the Python peer every ratio is taken against

The two examples come from the source distribution of the pyfuse3 version installed in
the checkout's .venv: `pip download` fetches it at benchmark time into a cache directory
(never into the repository) and they run with the .venv's python.

Workloads (fio from Debian, buffered I/O, psync engine; metadata through os calls):
  seq write 1 MiB (+ final fsync) / seq read 1 MiB cold / rand read 4 KiB cold /
  rand write 4 KiB + final fsync / 4 KiB write + fsync each (IOPS, p99 fsync latency) /
  rand write 4 KiB O_DIRECT / mmap 4 KiB store + msync(MS_SYNC) of its page /
  create, stat (warm), rename, unlink on N files / list a directory of M entries /
  peak RSS of the filesystem daemon (VmHWM); FUSE requests per operation where the
  daemon counts them (daxfs).
"Cold" means `echo 3 > /proc/sys/vm/drop_caches` right before the job (kernel tmpfs
cannot drop its pages: it stays the in-memory ceiling). Every subject is measured in
each of R interleaved rounds (subject order rotates) and the table shows medians.

A subject is a small object with a ``name`` and ``mount(workdir)`` returning a context
manager that yields a Mounted(path, pid); add the project's own filesystem by writing
one more (see FuseCommandSubject) and passing it to run_benchmark(). Everything mounted
is unmounted and every process started is stopped, also on errors and Ctrl-C.

Usage: bench_peers.py [--quick] [--runs R] [--json FILE|-] [--chart PNG] [--only NAME,...]
Needs root (mounts, drop_caches), /dev/fuse, fusermount3 and fio.
"""
import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
VENV_PYTHON = TOP / ".venv" / "bin" / "python"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "daxfs-bench"
REFERENCE = "passthroughfs"   # design.md: "pyfuse3 passthroughfs is the Python peer to beat"
MOUNT_TIMEOUT = 20.0          # seconds a FUSE daemon gets to appear in the mount table
UNMOUNT_TIMEOUT = 20.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each workload does. The full sizes stay modest for a 2-core box; the
    runtime cap bounds the slow peers (pyfuse3's tmpfs.py rewrites the whole file on
    every write, so its writes get slower as the file grows)."""
    file_mib: int             # data file of the seq/rand jobs
    rand_io_mib: int          # fio --io_size of the random jobs (bounds their I/O count)
    fsync_file_mib: int       # file of the write+fsync-each job
    runtime_s: int            # fio --runtime: a job stops at its size or this, whichever first
    meta_files: int           # N for create/stat/rename/unlink
    list_entries: int         # entries of the listed directory
    tmpfs_size: str           # size= of the kernel tmpfs mounts
    frag_extents: int         # extents of the file the fragmented fsync job writes into


FULL = Sizes(file_mib=256, rand_io_mib=64, fsync_file_mib=16, runtime_s=20, meta_files=5000,
             list_entries=10_000, tmpfs_size="2g", frag_extents=16_000)
QUICK = Sizes(file_mib=16, rand_io_mib=8, fsync_file_mib=2, runtime_s=4, meta_files=500,
              list_entries=1000, tmpfs_size="512m", frag_extents=2000)


def small_files(sizes: Sizes) -> Sizes:
    """Sizes for pyfuse3's tmpfs.py, which keeps each file as one sqlite blob, rewrites
    the whole blob for every write request and enables the writeback cache: the kernel
    then writes dirty pages back one 4 KiB request at a time, each costing a copy of the
    whole file, long after fio's runtime cap. A 256 MiB file takes it hours; its data
    jobs therefore use a small file, which the table notes."""
    return dataclasses.replace(sizes, file_mib=min(sizes.file_mib, 16),
                               rand_io_mib=min(sizes.rand_io_mib, 4),
                               fsync_file_mib=min(sizes.fsync_file_mib, 1),
                               frag_extents=min(sizes.frag_extents, 500))


# -- metrics ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool = True
    # daxfs's target (the durable-speed issue, design.md section 6): a ratio to the
    # reference for rates ("ratio"), or a value in the metric's own unit ("value")
    target: float | None = None
    target_kind: str = "ratio"
    charted: bool = True        # a bar in the chart of ratios


def target_text(m: Metric) -> str:
    if m.target is None:
        return ""
    sign = "≥" if m.higher_is_better else "≤"
    if m.target_kind == "ratio":
        return f"{sign} {m.target:g}×"
    return f"{sign} {m.target:,g} {m.unit}"


def target_met(m: Metric, value, ratio) -> bool | None:
    if m.target is None:
        return None
    x = ratio if m.target_kind == "ratio" else value
    if x is None:
        return None
    return x >= m.target if m.higher_is_better else x <= m.target


METRICS = [
    Metric("seq_write", "seq write 1 MiB", "MiB/s", target=1.2),
    Metric("seq_read_cold", "seq read 1 MiB, cold", "MiB/s", target=1.2),
    Metric("rand_read_cold", "rand read 4 KiB, cold", "IOPS", target=2.0),
    Metric("rand_write_fsync", "rand write 4 KiB + final fsync", "IOPS", target=1.5),
    Metric("write_fsync_each", "4 KiB write + fsync each", "IOPS", target=1.0),
    Metric("write_fsync_write_p99", "  p99 write latency", "µs", higher_is_better=False,
           charted=False),
    Metric("write_fsync_p99", "  p99 fsync latency", "µs", higher_is_better=False,
           target=1000, target_kind="value", charted=False),
    Metric("write_fsync_fragmented", "4 KiB write + fsync each, file of many extents",
           "IOPS"),
    Metric("commits_fragmented", "  full commits per fsync there", "commit",
           higher_is_better=False, charted=False),
    Metric("mmap_msync", "mmap 4 KiB store + msync(MS_SYNC)", "IOPS", target=1.0),
    Metric("odirect_randwrite", "rand write 4 KiB, O_DIRECT", "IOPS", target=1.5),
    Metric("create", "create", "ops/s", target=2.0),
    Metric("stat_warm", "stat, warm", "ops/s", target=4.0),
    Metric("rename", "rename", "ops/s", target=2.0),
    Metric("unlink", "unlink", "ops/s", target=2.0),
    Metric("list_dir", "list directory", "entries/s", target=100.0),
    Metric("peak_rss", "daemon peak RSS", "MiB", higher_is_better=False, charted=False),
    # at the end of the run: the daemon's private memory, and the pages of shared mappings
    # it counts (daxfs maps the pmem image: page cache, not the daemon's memory)
    Metric("rss_anon", "  private (RssAnon), at the end", "MiB", higher_is_better=False,
           charted=False),
    Metric("rss_shared", "  shared mappings (RssFile + RssShmem)", "MiB",
           higher_is_better=False, charted=False),
    # FUSE requests the daemon served per operation (daxfs counts them and serves the
    # counts as the root's trusted.daxfs.stats; peers do not): a request costs ~100 µs of
    # a Python daemon, so an extra one per write cannot come back unnoticed
    Metric("reqs_write_fsync", "FUSE requests per 4 KiB write+fsync", "req",
           higher_is_better=False, charted=False),
    Metric("getxattr_write_fsync", "  of which GETXATTR", "req", higher_is_better=False,
           charted=False),
    Metric("reqs_rand_write", "FUSE requests per 4 KiB rand write", "req",
           higher_is_better=False, charted=False),
    Metric("reqs_mmap_msync", "FUSE requests per mmap store + msync", "req",
           higher_is_better=False, charted=False),
    Metric("reqs_odirect", "FUSE requests per O_DIRECT 4 KiB write", "req",
           higher_is_better=False, charted=False),
    Metric("reqs_create", "FUSE requests per create", "req", higher_is_better=False,
           charted=False),
]

STATS_XATTR = "trusted.daxfs.stats"


def fuse_stats(path: Path) -> dict | None:
    """The daemon's counters (requests by kind, commits), where it tells (daxfs); else None."""
    try:
        return json.loads(os.getxattr(path, STATS_XATTR))
    except (OSError, ValueError):
        return None


def fuse_requests(path: Path) -> dict | None:
    """The daemon's requests served so far, by kind, where it tells (daxfs); else None."""
    stats = fuse_stats(path)
    return None if stats is None else stats.get("requests")


def per_op(before: dict | None, after: dict | None, n: int, kind: str | None = None):
    """Requests (of one kind, or all but the two stats reads) per operation."""
    if before is None or after is None or not n:
        return None
    if kind is not None:
        return (after.get(kind, 0) - before.get(kind, 0) - (kind == "getxattr")) / n
    return (sum(after.values()) - sum(before.values()) - 1) / n


# -- subjects -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Mounted:
    path: Path
    pid: int | None           # the filesystem daemon, None for a kernel filesystem


def run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], check=True, **kw)


def is_mountpoint(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def wait_mount_change(path: Path, mounted: bool, timeout: float, proc=None) -> None:
    """Wait until ``path`` is (or is no longer) a mount point.

    /proc/self/mountinfo signals POLLPRI whenever the mount table changes, so this waits
    on that event instead of sleeping; the short poll interval only lets us notice a
    daemon that died before mounting.
    """
    deadline = time.monotonic() + timeout
    with open("/proc/self/mountinfo") as f:
        poller = select.poll()
        poller.register(f, select.POLLPRI | select.POLLERR)
        while is_mountpoint(path) != mounted:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{path}: filesystem process exited with {proc.returncode}")
            left = deadline - time.monotonic()
            if left <= 0:
                state = "mounted" if mounted else "unmounted"
                raise TimeoutError(f"{path} not {state} after {timeout:.0f} s")
            poller.poll(min(left, 0.5) * 1000)
            f.seek(0)
            f.read()


@contextlib.contextmanager
def tmpfs_mount(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "bench-tmpfs", path])
    try:
        yield path
    finally:
        run(["umount", path])


class KernelTmpfs:
    name = "kernel-tmpfs"

    def __init__(self, sizes: Sizes):
        self.sizes = sizes

    @contextlib.contextmanager
    def mount(self, workdir: Path):
        with tmpfs_mount(workdir / "mnt", self.sizes.tmpfs_size) as mnt:
            yield Mounted(mnt, None)


class FuseCommandSubject:
    """A FUSE filesystem served by a foreground process we start and stop ourselves.

    ``command(backing, mountpoint)`` returns the argv; ``backing`` is a fresh kernel tmpfs
    directory (used by passthrough-style filesystems, ignored by others).
    """

    def __init__(self, name: str, command, sizes: Sizes):
        self.name = name
        self.sizes = sizes
        self.command = command
        self.sizes = sizes

    @contextlib.contextmanager
    def mount(self, workdir: Path):
        with contextlib.ExitStack() as stack:
            backing = stack.enter_context(tmpfs_mount(workdir / "backing", self.sizes.tmpfs_size))
            mnt = workdir / "mnt"
            mnt.mkdir(exist_ok=True)
            log = stack.enter_context(open(workdir / f"{self.name}.log", "wb"))
            proc = subprocess.Popen([str(a) for a in self.command(backing, mnt)],
                                    stdout=log, stderr=subprocess.STDOUT)
            stack.callback(self._stop, proc, mnt)
            wait_mount_change(mnt, True, MOUNT_TIMEOUT, proc)
            yield Mounted(mnt, self.server_pid(proc))

    def server_pid(self, proc: subprocess.Popen) -> int:
        """The process serving the mount (whose memory is measured): the command itself,
        or for a shell wrapper the child it started last."""
        if self.name.startswith("daxfs"):
            try:
                kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                if kids:
                    return int(kids[-1])
            except OSError:
                pass
        return proc.pid

    @staticmethod
    def _stop(proc: subprocess.Popen, mnt: Path) -> None:
        if is_mountpoint(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        try:
            proc.wait(timeout=UNMOUNT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.terminate()           # only the daemon we started, by its own handle
            proc.wait(timeout=UNMOUNT_TIMEOUT)
        if is_mountpoint(mnt):         # a daemon that died leaves a dead mount behind
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def pyfuse3_version(python: Path) -> str:
    out = run([python, "-c", "import importlib.metadata as m; print(m.version('pyfuse3'))"],
              capture_output=True, text=True)
    return out.stdout.strip()


def fetch_pyfuse3_examples(python: Path, cache: Path) -> Path:
    """Return a directory holding examples/{tmpfs,passthroughfs}.py of the installed pyfuse3.

    `pip download --no-binary pyfuse3` fetches exactly the sdist; `:all:` would also force
    pyfuse3's build dependencies (setuptools, Cython) to be built from source just to read
    the metadata, which takes minutes and changes nothing we use.
    """
    version = pyfuse3_version(python)
    dest = cache / f"pyfuse3-{version}"
    wanted = ("tmpfs.py", "passthroughfs.py")
    if all((dest / name).is_file() for name in wanted):
        return dest
    with tempfile.TemporaryDirectory(prefix="pyfuse3-sdist-") as tmp:
        pip = subprocess.run([str(python), "-m", "pip", "download", "--quiet", "--no-deps",
                              "--no-binary", "pyfuse3", f"pyfuse3=={version}", "-d", tmp],
                             capture_output=True, text=True)
        if pip.returncode:
            raise RuntimeError(f"pip download pyfuse3=={version} failed:\n{pip.stderr}")
        (sdist,) = Path(tmp).glob("pyfuse3-*.tar.gz")
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if len(parts) == 3 and parts[1] == "examples" and parts[2] in wanted:
                    with tar.extractfile(member) as src:
                        (dest / parts[2]).write_bytes(src.read())
    missing = [n for n in wanted if not (dest / n).is_file()]
    if missing:
        raise RuntimeError(f"pyfuse3 {version} sdist has no examples/{', '.join(missing)}")
    return dest


def daxfs_subject(sizes: Sizes, mode: str) -> "FuseCommandSubject":
    """daxfs on a pmem namespace of a private dmemud whose state (the namespace image, which
    daxfs maps) lives in the subject's tmpfs backing directory, like passthroughfs's data."""
    tools = Path(__file__).resolve().parent.parent / "tools"
    # half the backing tmpfs: the image is sparse, and dmemud wants the room it could fill
    size = f"{int(sizes.tmpfs_size[:-1]) // 2}{sizes.tmpfs_size[-1]}"

    def command(backing, mnt):
        script = (f"export DMEMU_ROOT={backing}/dmemu PATH={tools}:$PATH; "
                  f"trap 'dmemud stop --force >/dev/null 2>&1' EXIT; "
                  f"ndctl create-namespace -s {size} --align 4K >/dev/null && "
                  f"mkfs.daxfs /dev/pmem0 >/dev/null && "
                  f"daxfs /dev/pmem0 {mnt} -f -o dax={mode}")
        return ["sh", "-c", script]
    return FuseCommandSubject(f"daxfs-dax-{mode}", command, sizes)


def peer_subjects(sizes: Sizes, python: Path, cache: Path) -> list:
    examples = fetch_pyfuse3_examples(python, cache)
    return [
        daxfs_subject(sizes, "always"),
        daxfs_subject(sizes, "never"),
        KernelTmpfs(sizes),
        FuseCommandSubject("pyfuse3-tmpfs",
                           lambda backing, mnt: [python, examples / "tmpfs.py", mnt],
                           small_files(sizes)),
        FuseCommandSubject("passthroughfs",
                           lambda backing, mnt: [python, examples / "passthroughfs.py",
                                                 backing, mnt], sizes),
    ]


# -- workloads ----------------------------------------------------------------------------

def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def fio(directory: Path, name: str, filename: str, *args: str) -> dict:
    out = run(["fio", f"--name={name}", f"--filename={directory / filename}",
               "--ioengine=psync", "--output-format=json", *args],
              capture_output=True, text=True)
    return json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]


def _rate(job: dict, direction: str, per: str) -> float:
    """Bytes (MiB/s) or I/Os per second over the job's whole runtime, so that the time of
    a final fsync counts too."""
    seconds = job["job_runtime"] / 1000
    side = job[direction]
    if per == "MiB/s":
        return side["io_bytes"] / 2**20 / seconds
    return side["total_ios"] / seconds


def io_workloads(path: Path, sizes: Sizes) -> dict:
    size = f"--size={sizes.file_mib}M"
    cap = f"--runtime={sizes.runtime_s}"
    r = {}
    job = fio(path, "seqwrite", "data", "--rw=write", "--bs=1M", size, cap, "--end_fsync=1")
    r["seq_write"] = _rate(job, "write", "MiB/s")
    # The reads use what the write left (it may have stopped at the runtime cap).
    written = max(1, job["write"]["io_bytes"] // 2**20)
    size = f"--size={written}M"
    drop_caches()
    job = fio(path, "seqread", "data", "--rw=read", "--bs=1M", size, cap)
    r["seq_read_cold"] = _rate(job, "read", "MiB/s")
    drop_caches()
    rand_io = f"--io_size={min(written, sizes.rand_io_mib)}M"
    job = fio(path, "randread", "data", "--rw=randread", "--bs=4k", size, rand_io, cap)
    r["rand_read_cold"] = _rate(job, "read", "IOPS")
    before = fuse_requests(path)
    job = fio(path, "randwrite", "data", "--rw=randwrite", "--bs=4k", size, rand_io, cap,
              "--end_fsync=1")
    r["reqs_rand_write"] = per_op(before, fuse_requests(path), job["write"]["total_ios"])
    r["rand_write_fsync"] = _rate(job, "write", "IOPS")
    before = fuse_requests(path)
    job = fio(path, "odirect", "data", "--rw=randwrite", "--bs=4k", "--direct=1", size,
              rand_io, cap)
    r["reqs_odirect"] = per_op(before, fuse_requests(path), job["write"]["total_ios"])
    r["odirect_randwrite"] = _rate(job, "write", "IOPS")
    os.unlink(path / "data")
    r.update(mmap_msync(path, sizes))
    before = fuse_requests(path)
    job = fio(path, "fsynceach", "sync", "--rw=write", "--bs=4k",
              f"--size={sizes.fsync_file_mib}M", cap, "--fsync=1")
    after = fuse_requests(path)
    n = job["write"]["total_ios"]
    r["reqs_write_fsync"] = per_op(before, after, n)
    r["getxattr_write_fsync"] = per_op(before, after, n, "getxattr")
    r["write_fsync_each"] = _rate(job, "write", "IOPS")
    r["write_fsync_write_p99"] = job["write"]["clat_ns"]["percentile"]["99.000000"] / 1000
    r["write_fsync_p99"] = job["sync"]["lat_ns"]["percentile"]["99.000000"] / 1000
    os.unlink(path / "sync")
    r.update(fragmented_fsync(path, sizes))
    return r


def fragmented_fsync(path: Path, sizes: Sizes) -> dict:
    """4 KiB writes into the holes of a file written every other block (frag_extents
    extents, made durable first), each followed by fsync: a record of daxfs's fast
    commits must carry what changed, not the file's whole extent list, or every fsync
    becomes a full commit (which the stats show)."""
    block = os.urandom(4096)
    fd = os.open(path / "frag", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for k in range(sizes.frag_extents):
            os.pwrite(fd, block, 2 * k * 4096)
        os.fsync(fd)
        before = fuse_stats(path)
        done, start = 0, time.perf_counter()
        deadline = start + sizes.runtime_s
        for k in range(sizes.frag_extents):
            os.pwrite(fd, block, (2 * k + 1) * 4096)
            os.fsync(fd)
            done += 1
            if time.perf_counter() > deadline:
                break
        elapsed = time.perf_counter() - start
        after = fuse_stats(path)
    finally:
        os.close(fd)
    os.unlink(path / "frag")
    commits = None if before is None or after is None else \
        (after["commits"] - before["commits"]) / done
    return {"write_fsync_fragmented": done / elapsed, "commits_fragmented": commits}


def mmap_msync(path: Path, sizes: Sizes) -> dict:
    """Stores of 4 KiB into a shared mapping of a written file, each made durable with
    msync(MS_SYNC) of its page before the next (what an application without MAP_SYNC
    does), in a random page order; as many as fit the runtime cap."""
    import mmap
    import random
    size = sizes.fsync_file_mib << 20
    f = path / "mapped"
    with open(f, "wb") as out:
        out.write(os.urandom(1 << 20) * (size >> 20))
        out.flush()
        os.fsync(out.fileno())
    pages = list(range(size // 4096))
    random.Random(12).shuffle(pages)
    block = os.urandom(4096)
    fd = os.open(f, os.O_RDWR)
    try:
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        before = fuse_requests(path)
        done, start = 0, time.perf_counter()
        deadline = start + sizes.runtime_s
        for page in pages:
            off = page * 4096
            m[off:off + 4096] = block
            m.flush(off, 4096)              # msync(MS_SYNC)
            done += 1
            if time.perf_counter() > deadline:
                break
        elapsed = time.perf_counter() - start
        reqs = per_op(before, fuse_requests(path), done)
        m.close()
    finally:
        os.close(fd)
    os.unlink(f)
    return {"mmap_msync": done / elapsed, "reqs_mmap_msync": reqs}


def _timed(ops) -> float:
    """Operations per second of a list of zero-argument calls."""
    start = time.perf_counter()
    for op in ops:
        op()
    return len(ops) / (time.perf_counter() - start)


def metadata_workloads(path: Path, sizes: Sizes) -> dict:
    d = path / "meta"
    d.mkdir()
    names = [d / f"f{i:06d}" for i in range(sizes.meta_files)]
    renamed = [d / f"r{i:06d}" for i in range(sizes.meta_files)]
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    before = fuse_requests(path)
    r = {"create": _timed([lambda n=n: os.close(os.open(n, flags, 0o644)) for n in names])}
    r["reqs_create"] = per_op(before, fuse_requests(path), len(names))
    for n in names:                      # warm: lookups done once before the timed pass
        os.stat(n)
    r["stat_warm"] = _timed([lambda n=n: os.stat(n) for n in names])
    r["rename"] = _timed([lambda a=a, b=b: os.rename(a, b) for a, b in zip(names, renamed)])
    r["unlink"] = _timed([lambda n=n: os.unlink(n) for n in renamed])
    d.rmdir()

    d = path / "list"
    d.mkdir()
    for i in range(sizes.list_entries):
        os.close(os.open(d / f"entry-{i:06d}", flags, 0o644))
    listed, start = 0, time.perf_counter()
    # at least one full listing, more while it is too quick to time well
    while listed == 0 or time.perf_counter() - start < 0.5:
        count = len(os.listdir(d))
        assert count == sizes.list_entries, count
        listed += count
    r["list_dir"] = listed / (time.perf_counter() - start)
    shutil.rmtree(d)
    return r


def peak_rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def rss_split_mib(pid: int | None) -> tuple[float | None, float | None]:
    if pid is None:
        return None, None
    kib = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem"):
                kib[key] = int(rest.split()[0])
    return kib.get("RssAnon", 0) / 1024, (kib.get("RssFile", 0) + kib.get("RssShmem", 0)) / 1024


def measure(subject, sizes: Sizes, workdir: Path) -> dict:
    """All workloads on one fresh mount of ``subject`` (its own ``sizes`` if it has some)."""
    sizes = getattr(subject, "sizes", sizes)
    with subject.mount(workdir) as m:
        result = io_workloads(m.path, sizes)
        result.update(metadata_workloads(m.path, sizes))
        result["peak_rss"] = peak_rss_mib(m.pid)
        result["rss_anon"], result["rss_shared"] = rss_split_mib(m.pid)
    return result


# -- the run ------------------------------------------------------------------------------

def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    fio_version = run(["fio", "--version"], capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": model,
            "mem_gib": round(mem_kib / 2**20, 1), "fio": fio_version}


def run_benchmark(subjects, sizes: Sizes, runs: int, progress=print) -> dict:
    raw: dict[str, list[dict]] = {s.name: [] for s in subjects}
    base = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    try:
        for round_no in range(runs):
            # rotate the order so no subject always runs first (cold machine) or last
            order = subjects[round_no % len(subjects):] + subjects[:round_no % len(subjects)]
            for subject in order:
                workdir = base / f"{subject.name}-{round_no}"
                workdir.mkdir()
                t = time.monotonic()
                raw[subject.name].append(measure(subject, sizes, workdir))
                progress(f"round {round_no + 1}/{runs}: {subject.name} "
                         f"({time.monotonic() - t:.0f} s)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    median = {name: {m.key: _median([r[m.key] for r in rounds]) for m in METRICS}
              for name, rounds in raw.items()}
    return {"median": median, "raw": raw}


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratios(median: dict, reference: str = REFERENCE) -> dict:
    """value / reference value for every subject and metric (1.0 = as good as the peer for
    a higher-is-better metric; below 1.0 is better for latency and RSS)."""
    ref = median.get(reference, {})
    out = {}
    for name, values in median.items():
        out[name] = {k: (v / ref[k] if v is not None and ref.get(k) else None)
                     for k, v in values.items()}
    return out


def _fmt(value, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "req":
        return f"{value:.2f}"
    if unit in ("MiB/s", "MiB", "µs") and value < 100:
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def format_table(median: dict, reference: str = REFERENCE) -> str:
    names = list(median)
    rat = ratios(median, reference)
    others = [n for n in names if n != reference]
    header = ["workload", "unit", *names, *[f"{n} / {reference}" for n in others],
              "daxfs target"]
    rows = [header]
    for m in METRICS:
        row = [m.label, m.unit, *[_fmt(median[n][m.key], m.unit) for n in names]]
        for n in others:
            cell = "—" if rat[n][m.key] is None else f"{rat[n][m.key]:.2f}×"
            if n.startswith("daxfs") and target_met(m, median[n][m.key], rat[n][m.key]):
                cell += " ✓"
            row.append(cell)
        row.append(target_text(m))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for i, r in enumerate(rows):
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(r[2:], widths[2:])]
        lines.append("  ".join(cells))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"ratios: value / {reference}; above 1 is better, except for latency and RSS;"
                 f" ✓: a daxfs target met")
    return "\n".join(lines)


def draw_chart(info: dict, out: Path, reference: str = REFERENCE) -> None:
    """A bar chart of every subject's ratio to the reference, one group of bars per
    workload, with daxfs's targets marked: what the table says, at a glance."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    median = info["median"]
    rat = ratios(median, reference)
    names = [n for n in median if n != reference]
    metrics = [m for m in METRICS if m.charted]
    fig, ax = plt.subplots(figsize=(12, 5.5))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(metrics))]
        ys = [rat[name][m.key] or 0 for m in metrics]
        ax.bar(xs, ys, width, label=name)
        for x, y in zip(xs, ys):
            if y:
                ax.annotate(f"{y:.2g}", (x, y), ha="center", va="bottom", fontsize=7,
                            xytext=(0, 1), textcoords="offset points")
    for j, m in enumerate(metrics):
        if m.target is not None and m.target_kind == "ratio":
            ax.hlines(m.target, j - 0.45, j + 0.45, colors="black", linestyles="dashed",
                      linewidth=1, label="daxfs target" if j == 0 else None)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([m.label for m in metrics], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"ratio to {reference} (log scale; above 1 is better)")
    load = f"load average {info['loadavg_before'][0]:.1f} -> {info['loadavg_after'][0]:.1f}"
    ax.set_title(f"bench_peers {info['date']}, medians of {info['runs']} interleaved "
                 f"round(s){' (--quick sizes)' if info['quick'] else ''}, {load}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def check_requirements() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (mounts, drop_caches)")
    for tool in ("fio", "fusermount3", "mount", "umount"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found (Debian: apt-get install fio fuse3)")
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse missing")
    if not VENV_PYTHON.exists():
        problems.append(f"{VENV_PYTHON} missing: run scripts/setup.sh first")
    if problems:
        raise SystemExit("bench_peers: " + "; ".join(problems))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--runs", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--json", metavar="FILE", help="also write results as JSON ('-': stdout)")
    p.add_argument("--chart", metavar="PNG", type=Path,
                   help="also draw the ratios to passthroughfs as a bar chart (matplotlib)")
    p.add_argument("--only", metavar="NAMES", help="comma-separated subset of subjects")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                   help=f"where the pyfuse3 examples are kept (default {DEFAULT_CACHE})")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    check_requirements()
    sizes = QUICK if args.quick else FULL
    subjects = peer_subjects(sizes, VENV_PYTHON, args.cache_dir)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in subjects}
        if unknown:
            p.error(f"unknown subject(s): {', '.join(sorted(unknown))}")
        subjects = [s for s in subjects if s.name in wanted]
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "sizes": dataclasses.asdict(sizes), "runs": args.runs,
            "quick": args.quick, "pyfuse3": pyfuse3_version(VENV_PYTHON),
            "subjects": [s.name for s in subjects],
            "subject_sizes": {s.name: dataclasses.asdict(getattr(s, "sizes", sizes))
                              for s in subjects}}
    log = sys.stderr if args.json == "-" else sys.stdout
    # Other work on the machine skews absolute numbers (ratios within a run much less):
    # keep the load average next to the results.
    info["loadavg_before"] = os.getloadavg()
    result = run_benchmark(subjects, sizes, args.runs, progress=lambda s: print(s, file=log))
    info["loadavg_after"] = os.getloadavg()
    info.update(result, ratios=ratios(result["median"]))
    m = info["machine"]
    print(f"\n{info['date']}  nproc {m['nproc']}  kernel {m['kernel']}  "
          f"pyfuse3 {info['pyfuse3']}  medians of {args.runs} interleaved run(s)"
          f"{'  (--quick sizes)' if args.quick else ''}  load average "
          f"{info['loadavg_before'][0]:.1f} -> {info['loadavg_after'][0]:.1f}", file=log)
    print(format_table(result["median"]), file=log)
    for name, own in info["subject_sizes"].items():
        if own != info["sizes"]:
            print(f"{name}: data jobs on a {own['file_mib']} MiB file ({own['rand_io_mib']} MiB "
                  f"of random I/O, {own['fsync_file_mib']} MiB written with fsync each) "
                  f"instead of {sizes.file_mib}/{sizes.rand_io_mib}/{sizes.fsync_file_mib} MiB",
                  file=log)
    if args.chart:
        draw_chart(info, args.chart)
        print(f"chart: {args.chart}", file=log)
    if args.json == "-":
        json.dump(info, sys.stdout, indent=2)
        print()
    elif args.json:
        Path(args.json).write_text(json.dumps(info, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
