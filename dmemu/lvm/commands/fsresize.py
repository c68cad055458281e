"""The filesystem step of lvextend/lvresize/lvreduce -r (--resizefs, --fs resize): what
lvm2's lvresize_fs_helper (fsadm before it) does for ext4 and XFS, done for daxfs with
daxfs-resize, in lvm2's words.

Growing runs after the LV has grown (online when the filesystem is mounted); shrinking
runs before the LV shrinks, offline only, and a refusal leaves the LV as it was.
"""
import os
import sys
from pathlib import Path

import trio

from .. import fsprobe
from ..errors import LvmError
from ..units import long_size
from .common import say

TOP = str(Path(__file__).resolve().parents[3])


async def daxfs_resize(path: str, nbytes: int | None = None) -> tuple[int, str, str]:
    """Run daxfs-resize as fsadm runs resize2fs: its own process, its output passed on."""
    cmd = [sys.executable, "-c", "import sys; from daxfs.cli.resize import main; "
           "sys.exit(main())", path]
    if nbytes is not None:
        cmd.append(f"{nbytes // 1024}K")
    # the daxfs of this checkout, whatever the caller's working directory
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (TOP, os.environ.get("PYTHONPATH")) if p))
    r = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False,
                               env=env)
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def require_active(active: bool, vgname: str, lvname: str) -> None:
    if not active:
        raise LvmError(f"File system resize requires active LV {vgname}/{lvname}.")


def _mount_point(mounted: bool, vgname: str, lvname: str, dm: str) -> str | None:
    """Where the LV is mounted: dmemud says whether a filesystem holds it; the mount table
    (the machine's, where another dmemud may use the same names) only says where."""
    if not mounted:
        return None
    return fsprobe.mounted_at(fsprobe.lv_sources(vgname, lvname, dm)) or "(mount point unknown)"


async def extend(info, vgname: str, lvname: str, dm: str, nbytes: int, mounted: bool) -> None:
    """After the LV grew to nbytes: grow the filesystem on it to fill it."""
    if info is None:
        say("File system not found for --resizefs, skipping resize.")
        return
    if info.fstype != "daxfs":
        raise LvmError(f"Unsupported file system type for extend: {info.fstype}.\n"
                       "  File system extend error.")
    where = _mount_point(mounted, vgname, lvname, dm)
    say(f"File system {info.fstype} found on {vgname}/{lvname}"
        + (f" mounted at {where}." if where else "."))
    say(f"Extending file system {info.fstype} to {long_size(nbytes)} ({nbytes} bytes) on "
        f"{vgname}/{lvname}...")
    code, out, err = await daxfs_resize(f"/dev/{vgname}/{lvname}")
    for line in out.splitlines():
        print(line, flush=True)
    if code != 0:
        raise LvmError(f"{_last_line(err)}\n  File system extend error.")
    say(f"Extended file system {info.fstype} on {vgname}/{lvname}.")


async def reduce(info, vgname: str, lvname: str, dm: str, nbytes: int, mounted: bool) -> None:
    """Before the LV shrinks to nbytes: shrink the filesystem on it to fit, or refuse."""
    if info is None:
        say("File system not found for --resizefs, skipping resize.")
        return
    where = _mount_point(mounted, vgname, lvname, dm)
    say(f"File system {info.fstype} found on {vgname}/{lvname}"
        + (f" mounted at {where}." if where else "."))
    if info.last_byte <= nbytes:
        cmp = "equal to" if info.last_byte == nbytes else "smaller than"
        say(f"File system size ({long_size(info.last_byte)}) is {cmp} the requested size "
            f"({long_size(nbytes)}).")
        say("File system reduce is not needed, skipping.")
        return
    say(f"File system size ({long_size(info.last_byte)}) is larger than the requested size "
        f"({long_size(nbytes)}).")
    if info.fstype != "daxfs":
        raise LvmError(f"File system reduce is required and not supported ({info.fstype}).")
    say("File system reduce is required using daxfs-resize.")
    if where:
        # a mounted daxfs grows online only, as ext4: lvm2 would unmount it (--fsmode
        # manage); a FUSE mount's unmount is the user's to make
        raise LvmError(f"File system unmount is needed for reduce: unmount {where} and run "
                       "the command again.")
    say(f"Reducing file system {info.fstype} to {long_size(nbytes)} ({nbytes} bytes) on "
        f"{vgname}/{lvname}...")
    code, out, err = await daxfs_resize(f"/dev/{vgname}/{lvname}", nbytes)
    for line in out.splitlines():
        print(line, flush=True)
    if code != 0:
        raise LvmError(f"{_last_line(err)}\n  File system reduce error: "
                       f"{vgname}/{lvname} was not reduced.")
    say(f"Reduced file system {info.fstype} on {vgname}/{lvname}.")
