#!/usr/bin/env python3
"""Benchmark: the daxfs daemon's memory after 100,000 files and a 1 GiB file.

Mounts daxfs on a pmem namespace of a private dmemud (dax=always and dax=never, one after
the other), creates FILES empty files in one directory, writes a 1 GiB file with 1 MiB
writes, and prints the daemon's memory from /proc/PID/status at each step: private memory
(RssAnon: the inode cache, directories, Python's heap) apart from shared mappings
(RssFile + RssShmem: pages of the mapped pmem image, which are page cache and not the
daemon's to free), and the peak (VmHWM, which counts both). Then it lists the directory
with stat of every entry (ls -l) and asks the kernel to drop its dentry and inode caches,
which sends FORGET for every inode it held: what the daemon keeps afterwards is what its
own cache bounds allow.

    .venv/bin/python scripts/bench_memory.py [--files 100000] [--mib 1024] [--modes always,never]

The target (issue: bounded memory): RssAnon <= 100 MiB after the files and the 1 GiB file.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent / "tools"
MiB = 1 << 20


def status_mib(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) / 1024
    return out


def sh(*argv, env) -> str:
    r = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{argv[0]}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def wait_mounted(mnt: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"daxfs did not mount {mnt} (see its log)")
        time.sleep(0.05)


def one_mode(mode: str, args, work: Path) -> list[tuple[str, dict]]:
    env = dict(os.environ, DMEMU_ROOT=str(work / f"dmemu-{mode}"),
               PATH=f"{TOOLS}:{os.environ['PATH']}")
    size = args.mib + 512 + args.files * 8 // 1024       # the file, metadata, and room
    sh("ndctl", "create-namespace", "-s", f"{size}M", "--align", "4K", env=env)
    sh("mkfs.daxfs", "/dev/pmem0", env=env)
    mnt = work / f"mnt-{mode}"
    mnt.mkdir()
    log = open(work / f"daxfs-{mode}.log", "wb")
    proc = subprocess.Popen([TOOLS / "daxfs", "/dev/pmem0", mnt, "-f", "-o", f"dax={mode}"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    steps = []
    try:
        wait_mounted(mnt, proc)
        pid = proc.pid
        steps.append(("mounted", status_mib(pid)))
        d = mnt / "many"
        d.mkdir()
        t = time.perf_counter()
        for i in range(args.files):
            os.close(os.open(d / f"f{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
        rate = args.files / (time.perf_counter() - t)
        steps.append((f"{args.files:,} files created ({rate:,.0f}/s)", status_mib(pid)))
        block = os.urandom(MiB)
        fd = os.open(mnt / "big", os.O_CREAT | os.O_WRONLY, 0o644)
        t = time.perf_counter()
        for _ in range(args.mib):
            os.write(fd, block)
        os.fsync(fd)
        os.close(fd)
        rate = args.mib / (time.perf_counter() - t)
        steps.append((f"{args.mib} MiB file written ({rate:,.0f} MiB/s)", status_mib(pid)))
        n = sum(1 for e in os.scandir(d) if e.stat(follow_symlinks=False))
        assert n == args.files, n
        steps.append(("directory listed with stat (ls -l)", status_mib(pid)))
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")          # dentries and inodes: the kernel sends FORGET
        time.sleep(1)
        steps.append(("kernel caches dropped (FORGET)", status_mib(pid)))
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=30)
        log.close()
        subprocess.run([TOOLS / "dmemud", "stop", "--force"], env=env, capture_output=True)
    return steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--mib", type=int, default=1024, help="size of the big file in MiB")
    p.add_argument("--modes", default="always,never", help="dax= modes to measure")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench_memory.py: run as root (it drops the kernel's caches)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="daxfs-mem-", dir="/tmp"))
    print(f"daxfs daemon memory (MiB), {args.files:,} files in one directory and a "
          f"{args.mib} MiB file; load average {os.getloadavg()[0]:.1f}")
    try:
        for mode in args.modes.split(","):
            print(f"dax={mode}")
            print(f"  {'step':<44} {'RssAnon':>8} {'RssFile+Shmem':>14} {'VmHWM':>8}")
            for what, m in one_mode(mode, args, work):
                print(f"  {what:<44} {m['RssAnon']:8.1f} {m['RssFile'] + m['RssShmem']:14.1f} "
                      f"{m['VmHWM']:8.1f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
