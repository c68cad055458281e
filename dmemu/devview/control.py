"""Start the device view in the background, find it again, and stop it.

A view records itself in the state directory (``devview/<hash of mountpoint>.pid``: its pid
and mountpoint) once mounted, and removes the record when it ends. Starting waits on a pipe
until the child says the mount is live (or why it is not); stopping unmounts with
fusermount3 and waits for the process to end.
"""
import errno
import hashlib
import logging
import os
import select
import shutil
import subprocess
import sys
import time

from ..errors import DmemuError
from ..paths import StatePaths

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
PROG = "dmemu-devview"


def default_mountpoint(paths: StatePaths) -> str:
    return str(paths.root / "dev")


def record_path(paths: StatePaths, mountpoint: str):
    tag = hashlib.sha1(os.fsencode(mountpoint)).hexdigest()[:16]
    return paths.root / "devview" / f"{tag}.pid"


def write_record(paths: StatePaths, mountpoint: str) -> None:
    p = record_path(paths, mountpoint)
    p.parent.mkdir(exist_ok=True, mode=0o700)
    p.write_text(f"{os.getpid()}\n{mountpoint}\n")


def remove_record(paths: StatePaths, mountpoint: str) -> None:
    p = record_path(paths, mountpoint)
    try:
        if p.read_text().split("\n")[0] == str(os.getpid()):
            p.unlink()
    except FileNotFoundError:
        pass


def recorded_pid(paths: StatePaths, mountpoint: str) -> int | None:
    try:
        pid = int(record_path(paths, mountpoint).read_text().split("\n")[0])
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None


def mount_state(mountpoint: str) -> str:
    """'absent', 'free' (a directory, nothing mounted), 'mounted' or 'stale' (server gone)."""
    try:
        os.stat(mountpoint)
    except FileNotFoundError:
        return "absent"
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            return "stale"
        raise
    return "mounted" if os.path.ismount(mountpoint) else "free"


def check_free(paths: StatePaths, mountpoint: str) -> None:
    state = mount_state(mountpoint)
    if state == "stale":
        raise DmemuError(errno.ENOTCONN, f"{mountpoint}: a device view that died is still mounted "
                                         f"there; run '{PROG} --stop --mountpoint {mountpoint}'")
    if state == "mounted":
        pid = recorded_pid(paths, mountpoint)
        who = f"the device view (pid {pid})" if pid else "something else"
        raise DmemuError(errno.EBUSY, f"{mountpoint}: {who} is already mounted there; "
                                      f"run '{PROG} --stop' first or choose another --mountpoint")
    if state == "free" and not os.path.isdir(mountpoint):
        raise DmemuError(errno.ENOTDIR, f"{mountpoint}: not a directory; choose another --mountpoint")


def spawn(paths: StatePaths, mountpoint: str, verbose: int) -> int:
    """Start a detached view and return its pid once its mount is live."""
    r, w = os.pipe()
    env = dict(os.environ, DMEMU_ROOT=str(paths.root))
    env.pop("DMEMU_DEVVIEW", None)    # a daemon the view might start must not start a view
    top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = top + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    args = [sys.executable, "-P", "-m", "dmemu.cli.devview", "-f", "--ready-fd", str(w),
            "--mountpoint", mountpoint] + ["-v"] * verbose
    paths.ensure()
    with open(paths.root / "devview.log", "ab") as logf:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                pass_fds=(w,), start_new_session=True, env=env, cwd="/")
    os.close(w)
    got = b""
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while b"\n" not in got:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                break
            chunk = os.read(r, 4096)
            if not chunk:
                break
            got += chunk
    finally:
        os.close(r)
    line = got.decode(errors="replace").strip()
    if line == "ready":
        return proc.pid
    if line.startswith("error "):
        raise DmemuError(errno.EIO, line[len("error "):])
    raise DmemuError(errno.EIO, f"the device view did not start (exit status {proc.poll()}); "
                                f"see {paths.root / 'devview.log'}")


def stop(paths: StatePaths, mountpoint: str) -> None:
    pid = recorded_pid(paths, mountpoint)
    state = mount_state(mountpoint)
    if state in ("absent", "free") and pid is None:
        raise DmemuError(errno.ENOENT, f"no device view is mounted at {mountpoint}")
    if state in ("mounted", "stale"):
        fusermount = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
        r = subprocess.run([fusermount, "-u", mountpoint], capture_output=True, text=True)
        if r.returncode != 0:
            if "busy" in r.stderr.lower():
                raise DmemuError(errno.EBUSY, f"{mountpoint} is busy: files in it are open "
                                              f"(see 'fuser -vm {mountpoint}'); close them and try again")
            raise DmemuError(errno.EIO, f"cannot unmount {mountpoint}: {r.stderr.strip()}")
    if pid is not None and not _wait_exit(pid, STOP_TIMEOUT):
        raise DmemuError(errno.ETIMEDOUT, f"the device view (pid {pid}) was unmounted but did not "
                                          f"exit within {STOP_TIMEOUT:.0f}s; see {paths.root / 'devview.log'}")


def _wait_exit(pid: int, timeout: float) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)
