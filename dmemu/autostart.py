"""Start dmemud when a client finds it absent, so that two clients racing get one daemon.

The spawner holds ``spawn.lock`` while it checks and starts; the daemon itself holds its
pidfile lock for life, so even a daemon started by hand cannot be doubled.
"""
import fcntl
import os
import socket
import subprocess
import sys
import time

from . import protocol
from .errors import DmemuError
from .paths import StatePaths

START_TIMEOUT = 30.0


def _answers(path: str) -> bool:
    """A dmemud is there and answers a hello. A daemon killed a moment ago can still take
    a connection while it exits (its socket closes with its last thread) and then drops
    it: a connection alone does not say a daemon is there."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(START_TIMEOUT)
    try:
        s.connect(path)
        s.sendall(protocol.encode({"id": 0, "op": "hello", "prog": "autostart",
                                   "pid": os.getpid()}))
        return bool(s.recv(1))
    except OSError:
        return False
    finally:
        s.close()


def _wait_for_exit(paths: StatePaths) -> None:
    """Until no process holds the daemon lock (a daemon that took the probe and dropped it
    is exiting), at most START_TIMEOUT; a new daemon could not take the lock before."""
    try:
        fd = os.open(paths.pidfile, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return                      # released when fd is closed below
            except BlockingIOError:
                time.sleep(0.01)
    finally:
        os.close(fd)


def ensure_daemon(paths: StatePaths) -> None:
    if _answers(str(paths.socket)):
        return
    paths.ensure()
    with open(paths.root / "spawn.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(str(paths.socket)):
            return
        _wait_for_exit(paths)
        spawn(paths)


def spawn(paths: StatePaths) -> int:
    """Start a detached dmemud and return its pid once it accepts connections."""
    r, w = os.pipe()
    env = dict(os.environ, DMEMU_ROOT=str(paths.root))
    # The daemon must import this very dmemu, whether installed or run from a checkout.
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = top + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(paths.log, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "dmemu.cli.dmemud", "run", "--ready-fd", str(w)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, pass_fds=(w,),
            start_new_session=True, env=env, cwd="/")
    os.close(w)
    deadline = time.monotonic() + START_TIMEOUT
    got = b""
    try:
        while b"\n" not in got and time.monotonic() < deadline:
            chunk = os.read(r, 64)
            if not chunk:
                break
            got += chunk
    finally:
        os.close(r)
    if not got.startswith(b"ready"):
        code = proc.poll()
        raise DmemuError(5, f"dmemud did not start (exit status {code}); see {paths.log}")
    return proc.pid
