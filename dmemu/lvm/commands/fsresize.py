"""The filesystem step of lvextend/lvresize/lvreduce -r (--resizefs, --fs resize): what
lvm2's lvresize_fs_helper (fsadm before it) does for ext4 and XFS, done for daxfs with
daxfs-resize, in lvm2's words.

Growing runs after the LV has grown (online when the filesystem is mounted); shrinking
runs before the LV shrinks, offline only (a mounted filesystem is unmounted for it and
mounted again), and a refusal leaves the LV as it was.
"""
import os
import sys
from pathlib import Path

import trio

from .. import fsprobe
from ..errors import LvmError
from ..units import long_size
from .common import say, warn, yes_no_prompt

TOP = str(Path(__file__).resolve().parents[3])


async def daxfs_resize(path: str, nbytes: int | None = None) -> tuple[int, str, str]:
    """Run daxfs-resize as fsadm runs resize2fs: its own process, its output passed on."""
    cmd = [sys.executable, "-P", "-c", "import sys; from daxfs.cli.resize import main; "
           "sys.exit(main())", path]
    if nbytes is not None:
        cmd.append(f"{nbytes // 1024}K")
    r = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False,
                               env=_env())
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


async def _step(cmd: list[str], name: str, *shown: str) -> bool:
    """One step of lvm2's lvresize_fs_helper: its name and arguments, the tool's output,
    then "done" or "failed", as the helper logs them."""
    print(" ".join((name,) + shown), flush=True)
    r = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False,
                               env=_env())
    for line in r.stdout.decode(errors="replace").splitlines():
        print(line, flush=True)
    for line in r.stderr.decode(errors="replace").splitlines():
        print(line, file=sys.stderr, flush=True)
    print(f"{name} {'done' if r.returncode == 0 else 'failed'}", flush=True)
    return r.returncode == 0


def _env() -> dict:
    # the daxfs of this checkout, whatever the caller's working directory
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (TOP, os.environ.get("PYTHONPATH")) if p))


def _tool(module: str, *args: str) -> list[str]:
    return [sys.executable, "-P", "-c", f"import sys; from {module} import main; sys.exit(main())",
            *args]


def _mount_options(where: str) -> str | None:
    """The -o options the mount was made with, so the remount keeps them (its DAX mode)."""
    try:
        return os.getxattr(where, "trusted.daxfs.mount_options").decode() or None
    except OSError:
        return None


async def reduce(info, vgname: str, lvname: str, dm: str, nbytes: int, mounted: bool,
                 yes: bool = False, released=None) -> None:
    """Before the LV shrinks to nbytes: shrink the filesystem on it to fit, or refuse.
    As lvm2 2.03's --fsmode manage does for ext4: a mounted filesystem is unmounted,
    checked, shrunk and mounted again where it was; an unmounted one is checked and shrunk.
    The steps are confirmed first unless -y; any step failing leaves the LV as it was.
    ``released()`` waits until the unmounted filesystem has let go of the device."""
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
        say("File system unmount is needed for reduce.")
    say("File system fsck will be run before reduce.")
    steps = ("unmount, " if where else "") + "fsck, daxfs-resize"
    if not yes and not yes_no_prompt(
            f"Continue with {info.fstype} file system reduce steps: {steps}? [y/n]:"):
        raise LvmError("File system not reduced.")
    say(f"Reducing file system {info.fstype} to {long_size(nbytes)} ({nbytes} bytes) on "
        f"{vgname}/{lvname}...")
    dev = f"/dev/{vgname}/{lvname}"
    failed = f"File system reduce error: {vgname}/{lvname} was not reduced."
    options = None
    if where:
        options = _mount_options(where)
        if not await _step(["fusermount3", "-u", where], "unmount", where):
            raise LvmError(f"Failed to unmount {where}.\n  {failed}")
    try:
        if where and released is not None and not await released():
            raise LvmError(f"{dev} is still in use after unmounting {where}.\n  {failed}")
        if not await _step(_tool("daxfs.cli.fsck", "-n", dev), "fsck.daxfs", dev):
            raise LvmError(f"fsck.daxfs found problems on {dev}.\n  {failed}")
        size = f"{nbytes // 1024}k"
        if not await _step(_tool("daxfs.cli.resize", dev, size), "daxfs-resize", dev, size):
            raise LvmError(failed)
    finally:
        # mounted again where it was, shrunk or not, as the helper restores the mount
        if where and not await _step(
                _tool("daxfs.cli.mount", dev, where, *(["-o", options] if options else [])),
                "remount", dev, where):
            warn(f"WARNING: {dev} could not be mounted again on {where}.")
    say(f"Reduced file system {info.fstype} on {vgname}/{lvname}.")
