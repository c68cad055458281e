"""Bad command lines for every command in tools/, run as a user runs them.

Each trial picks a command and builds an argument list from its real vocabulary with parts
replaced: unknown options, missing and extra arguments, sizes that are negative, fractional,
enormous or not numbers, device names that do not exist or read as numbers, table lines with
too few or wrong fields, paths that climb out with ``..``. The command runs as a subprocess in
a private DMEMU_ROOT (its working directory the fuzzer's own), over a namespace, a disk, a VG
and a DM device.

Failures counted: ``traceback`` (Python's traceback on stderr), ``signal`` (killed by a
signal), ``hang`` (still running after 60 s), ``silent`` (a non-zero exit that says nothing at
all), ``daemon`` (dmemud went away). Mounting commands are left out: they would need a
mount point and leave mounts behind; their option checks have tests of their own.
"""
import random
import subprocess
from pathlib import Path

from .common import TOOLS, Result, alive, daemon_pid, env_for, stop_daemon, tool

DEVICES = ["/dev/pmem0", "pmem0", "/dev/disk0", "/dev/mapper/dm0", "dm0", "/dev/vg0/lv0", "vg0/lv0",
           "/dev/pmem9", "259:0", "253:0", "0:0", "", "-", "..", "../../../nonexistent-fuzz/x", "/dev/",
           "namespace0.0", "x" * 300, "-1", "/dev/mapper/", "vg0", "lv0"]
SIZES = ["4M", "-4M", "0", "1.5", "1e400", "99999999999999999999T", "4Q", "", "M", "0.5K", "18446744073709551616",
         "-1", "nan", "inf", "4096", "1G", "3"]
NUMBERS = ["0", "-1", "1", "18446744073709551616", "1.5", "x", "", "0x10", "99999999999"]
TABLES = ["", "0 8 zero", "0 8", "x y z", "0 -8 linear pmem0 0", "0 8 linear pmem0", "0 8 linear pmem0 -1",
          "0 8 linear 259:0 99999999999", "0 8 snapshot pmem0 disk0 P 8", "0 8 snapshot pmem0 pmem0 X 3",
          "0 8 log-writes pmem0 pmem0", "8 8 zero", "0 8 zero\n0 8 zero", "0 8 nosuch", "0 8 error extra",
          "0 18446744073709551616 zero", "0 8 linear dm0 0"]
WORDS = ["--bogus", "-Z", "--", "-", "--size", "-s", "-L", "-n", "--name", "-o", "--help=x", "--units=q",
         "extra", "--table", "-c", "-f", "-y", "-a", "-v"]

VOCABULARY = {
    "ndctl": [["create-namespace", "-s", "SIZE"], ["create-namespace", "-s", "SIZE", "-a", "SIZE", "-m", "W"],
              ["create-namespace", "--name", "DEV", "-s", "4M"], ["destroy-namespace", "DEV"],
              ["disable-namespace", "DEV"], ["enable-namespace", "DEV"], ["list"], ["inject-error", "DEV", "-b", "N", "-n", "N"],
              ["clear-errors", "DEV"], ["power-fail", "DEV"]],
    "dmemu": [["disk", "create", "-s", "SIZE", "-n", "DEV"], ["disk", "destroy", "DEV"], ["disk", "list"],
              ["lsblk"], ["remove", "DEV"], ["add", "DEV"], ["param", "W", "W"], ["trace", "W", "DEV"],
              ["crash-image", "DEV", "N", "W"]],
    "dmsetup": [["create", "DEV", "--table", "TABLE"], ["load", "DEV", "--table", "TABLE"], ["suspend", "DEV"],
                ["resume", "DEV"], ["remove", "DEV"], ["rename", "DEV", "DEV"], ["message", "DEV", "N", "W"],
                ["table", "DEV"], ["status", "DEV"], ["info", "DEV"], ["ls"], ["targets"], ["remove_all"]],
    "pvcreate": [["DEV"], ["-ff", "DEV"]], "pvremove": [["DEV"]], "pvs": [["-o", "W"], ["DEV"]],
    "vgcreate": [["DEV", "DEV"], ["-s", "SIZE", "DEV", "DEV"]], "vgs": [["-o", "W", "--units", "W"]],
    "vgchange": [["-a", "W", "DEV"], ["-ay", "DEV"]], "vgremove": [["DEV"]],
    "lvcreate": [["-L", "SIZE", "-n", "DEV", "DEV"], ["-s", "-L", "SIZE", "-n", "DEV", "DEV"],
                 ["-l", "N", "-n", "DEV", "DEV"], ["-s", "-c", "SIZE", "-L", "SIZE", "DEV"]],
    "lvs": [["-a", "-o", "W"], ["--reportformat", "W"]], "lvremove": [["DEV"]], "lvrename": [["DEV", "DEV", "DEV"]],
    "lvextend": [["-L", "SIZE", "DEV"], ["-l", "N", "DEV"]], "lvchange": [["-a", "W", "DEV"]],
    "lvconvert": [["--merge", "DEV"]], "lvm": [["W"], ["W", "DEV"]],
    "mkfs.daxfs": [["DEV"], ["-L", "W", "DEV"], ["-U", "W", "DEV"], ["-f", "DEV"]],
    "fsck.daxfs": [["-n", "DEV"], ["-y", "DEV"], ["-p", "DEV"], ["DEV"]],
    "xfs_io": [["-c", "pwrite N N", "DEV"], ["-c", "pread N N", "DEV"], ["-c", "W", "DEV"],
               ["-r", "-c", "mmap N N", "DEV"], ["-c", "truncate N", "DEV"]],
    "replay-log": [["--log", "DEV"], ["--log", "DEV", "--replay", "DEV", "--limit", "N"],
                   ["--log", "DEV", "--end-mark", "W", "--replay", "DEV"]],
    "daxfs-rmap": [["DEV", "N"], ["DEV"]],
}


def _fill(rng: random.Random, word: str) -> str:
    pools = {"SIZE": SIZES, "DEV": DEVICES, "N": NUMBERS, "TABLE": TABLES, "W": WORDS + ["y", "n", "start", "on"]}
    if word in pools:
        return rng.choice(pools[word])
    if "N" in word.split():
        return " ".join(rng.choice(NUMBERS) if w == "N" else w for w in word.split())
    return word


def generate(rng: random.Random) -> list[str]:
    cmd = rng.choice(list(VOCABULARY))
    args = [_fill(rng, w) for w in rng.choice(VOCABULARY[cmd])]
    for _ in range(rng.choice([0, 0, 1, 2])):
        r = rng.random()
        if r < 0.4 and args:
            args[rng.randrange(len(args))] = rng.choice(WORDS + DEVICES + SIZES)
        elif r < 0.7:
            args.insert(rng.randrange(len(args) + 1), rng.choice(WORDS))
        elif args:
            del args[rng.randrange(len(args))]
    return [cmd] + args


def setup(root: Path) -> None:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for cmd in (("ndctl", "create-namespace", "-s", "32M", "-a", "4K"),
                ("dmemu", "disk", "create", "-s", "16M", "-n", "disk0"),
                ("pvcreate", "/dev/disk0"), ("vgcreate", "vg0", "/dev/disk0"),
                ("lvcreate", "-L", "4M", "-n", "lv0", "vg0"),
                ("dmsetup", "create", "dm0", "--table", "0 8 zero")):
        r = tool(root, *cmd)
        if r.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")


def run(trials: int, seed: int, workdir: Path, progress=None) -> Result:
    root = Path(workdir)
    setup(root)
    scratch = root / "cwd"
    scratch.mkdir(exist_ok=True)
    result = Result("cli", seed)
    pid = daemon_pid(root)
    rng = random.Random(seed)
    try:
        for trial in range(trials):
            argv = generate(rng)
            result.trials += 1
            case = " ".join(repr(a) if (" " in a or not a) else a for a in argv)
            try:
                r = subprocess.run([str(TOOLS / argv[0]), *argv[1:]], capture_output=True, text=True,
                                   env=env_for(root), cwd=scratch, timeout=60, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                result.fail("hang", case)
                continue
            if "Traceback" in r.stderr:
                result.fail("traceback", f"{case}: {r.stderr.strip().splitlines()[-1]}")
            elif r.returncode < 0 or r.returncode > 128:
                result.fail("signal", f"{case}: exit {r.returncode}")
            elif r.returncode and not (r.stderr.strip() or r.stdout.strip()):
                result.fail("silent", f"{case}: exit {r.returncode}")
            if not alive(pid):
                result.fail("daemon", case)
                break
            if progress:
                progress(trial + 1)
    finally:
        stop_daemon(root)
    return result
