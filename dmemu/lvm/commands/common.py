"""What every lvm command shares: LVM's two-space voice, the scan that warns about missing
PVs, and taking a VG for a command (refusing a write while PVs are missing).

Every command that changes metadata takes its locks, scans under them, checks everything it
can before the first write (so a refusal changes nothing), then changes device-mapper state
and commits metadata in the order that keeps a crash harmless: for a new snapshot the DM
devices first (the snapshot point is the origin's suspend), metadata last; a failure on the
way is undone step by step.
"""
import sys

from ...errors import DmemuError
from ..errors import LvmError
from ..store import Store


# -q (lvm2's --quiet): once silences what lvm2 prints with log_print_unless_silent (the
# "successfully ..." lines); twice also answers every prompt "no" without asking.
QUIET = 0


def say(msg: str) -> None:
    if not QUIET:
        print(f"  {msg}", flush=True)


def warn(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def dm_failure(e: DmemuError, what: str) -> LvmError:
    return LvmError(f"{e.message}\n  Failed to {what}. Nothing was changed.")


async def scan(k) -> Store:
    """Scan, warning (as LVM does, on stderr) about every PV of a VG that is missing."""
    st = Store(k)
    await st.scan()
    for vg in st.vgs.values():
        for pv in vg.missing_pvs():
            warn(f"WARNING: Couldn't find device with uuid {pv.id}.")
            warn(f"WARNING: VG {vg.name} is missing PV {pv.id} (last written to {pv.device}).")
    return st


async def vg_locked(k, name, write: bool = False):
    st = await scan(k)
    vg = st.vg(name)
    if write and vg.missing_pvs():
        raise LvmError(f"Cannot change VG {vg.name} while PVs are missing.")
    return st, vg


def yes_no_prompt(question: str) -> bool:
    """lvm2's yes_no_prompt: the question on stderr (no indent), an answer read from stdin;
    y/yes or n/no, anything else asks again; end of input answers no and says so."""
    if QUIET >= 2:
        return False
    while True:
        sys.stdout.flush()
        sys.stderr.write(question)
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            sys.stderr.write("[n]\n")
            sys.stderr.flush()
            return False
        answer = line.strip().lower()
        if answer in ("y", "yes"):
            return True
        if answer in ("n", "no"):
            return False
        warn(f"WARNING: Invalid input '{line.strip()[:8]}'.")
