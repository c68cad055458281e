"""Helpers for tests: run the commands in tools/, stop a test's daemon.

Most commands run in this process, on a thread of their own, exactly as tools/_run would
call their main(): starting a Python interpreter per call was most of the suite's time,
and the process boundary is not what those calls test. Commands whose process is the point
(daxfs and the mount helper fork a daemon; dmemud and dmemu-devview start servers;
crashcheck mounts) always run as real processes, and DAXFS_TEST_TOOLS=subprocess runs
every command as one, as a user's shell would.
"""
import contextlib
import importlib
import io
import os
import re
import subprocess
import sys
import threading
import traceback
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
TOOLS = TOP / "tools"
TOOL_TIMEOUT = 120

# Commands that must be their own process (see the module docstring).
ALWAYS_A_PROCESS = {"daxfs", "mount.fuse.daxfs", "dmemud", "dmemu-devview", "crashcheck"}

_tool_lock = threading.Lock()     # sys.argv/stdin/stdout are process-wide: one at a time


def _daemon_pid(root: Path) -> int | None:
    try:
        return int((root / "dmemud.pid").read_text().strip() or 0) or None
    except (FileNotFoundError, ValueError):
        return None


def stop_daemon(root: Path) -> None:
    """Stop the dmemud of ``root`` and return once it has exited (SIGKILL if it will not)."""
    from dmemu.process import wait_for_exit
    pid = _daemon_pid(root)
    if pid is None:
        return
    env = dict(os.environ, DMEMU_ROOT=str(root))
    r = subprocess.run([sys.executable, "-m", "dmemu.cli.dmemud", "stop", "--force"],
                       env=env, capture_output=True, text=True, timeout=180)
    if not wait_for_exit(pid, 0):
        os.kill(pid, 9)
        wait_for_exit(pid, 30)
        raise AssertionError(f"dmemud {pid} did not stop and was killed: {r.stderr.strip()}")


def _module_of(name: str) -> str | None:
    """The package module a tools/ command runs (read from the command file itself)."""
    m = re.search(r'_run" ([\w.]+)', (TOOLS / name).read_text())
    return m.group(1) if m else None


def _in_process(name: str, module: str, args: list[str], input: str | None):
    mod = importlib.import_module(module)
    out, err = io.StringIO(), io.StringIO()
    result = {}

    def call():
        saved = sys.argv, sys.stdin
        sys.argv, sys.stdin = [name, *args], io.StringIO(input or "")
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    result["code"] = mod.main(list(args))
                except SystemExit as e:
                    if isinstance(e.code, str):
                        print(e.code, file=sys.stderr)
                        result["code"] = 1
                    else:
                        result["code"] = e.code or 0
                except BaseException:      # what the interpreter would print, and exit 1
                    traceback.print_exc()
                    result["code"] = 1
        finally:
            sys.argv, sys.stdin = saved

    with _tool_lock:
        # A thread of its own: the caller may be inside trio.run, and the command runs its own.
        t = threading.Thread(target=call, name=f"tool {name}", daemon=True)
        t.start()
        t.join(TOOL_TIMEOUT)
        if t.is_alive():
            raise subprocess.TimeoutExpired([name, *args], TOOL_TIMEOUT)
    return subprocess.CompletedProcess([name, *args], result.get("code", 1) or 0,
                                       out.getvalue(), err.getvalue())


def tool(name: str, *args, check: bool = False, input: str | None = None, env=None,
         process: bool = False) -> subprocess.CompletedProcess:
    """Run a command from tools/ the way a user would, capturing its output. In-process
    commands run one at a time: a test that races two commands passes ``process=True``."""
    args = [str(a) for a in args]
    module = None
    if (env is None and not process and name not in ALWAYS_A_PROCESS
            and os.environ.get("DAXFS_TEST_TOOLS") != "subprocess"):
        module = _module_of(name)
    if module is not None:
        r = _in_process(name, module, args, input)
        if check and r.returncode != 0:
            raise subprocess.CalledProcessError(r.returncode, r.args, r.stdout, r.stderr)
        return r
    cmd = [str(TOOLS / name), *args]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else None,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as p:
        try:
            out, err = p.communicate(input, timeout=TOOL_TIMEOUT)
        except subprocess.TimeoutExpired:
            # SIGTERM first: a command that started daemons, mounts or workers (crashcheck)
            # takes them down with it, where SIGKILL would leave them to the next tests
            p.terminate()
            try:
                p.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
            raise subprocess.TimeoutExpired(cmd, TOOL_TIMEOUT) from None
    r = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    if check and r.returncode != 0:
        raise subprocess.CalledProcessError(r.returncode, cmd, out, err)
    return r


def ok(*args, input: str | None = None) -> str:
    """Run a command from tools/ that must succeed; its standard output."""
    r = tool(*args, input=input)
    assert r.returncode == 0, f"{args}: {r.stderr}"
    return r.stdout


async def atool(*args, input: str | None = None) -> subprocess.CompletedProcess:
    """tool() from an async test, without blocking the trio loop (events keep flowing)."""
    import trio
    return await trio.to_thread.run_sync(lambda: tool(*args, input=input))


def daxfs_daemon(mountpoint) -> int | None:
    """The pid of the daxfs daemon serving ``mountpoint`` (its command line names it)."""
    want = os.fsencode(str(mountpoint))
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if want in argv and any(b"daxfs.cli.mount" in a for a in argv):
            return int(entry.name)
    return None


def unmount(mountpoint, *, lazy: bool = False, timeout: float = 120) -> None:
    """Unmount a daxfs and return once its daemon has committed, let go of the device and
    exited, as umount(8) of a kernel filesystem returns only when it is done. Fails with
    the mount's log if the daemon is still there after ``timeout`` seconds."""
    from dmemu.process import wait_for_exit
    pid = daxfs_daemon(mountpoint)
    r = subprocess.run(["fusermount3", "-u", *(["-z"] if lazy else []), str(mountpoint)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0 and os.path.ismount(str(mountpoint)):
        raise AssertionError(f"fusermount3 -u {mountpoint}: {r.stderr.strip()}")
    if pid is not None and not wait_for_exit(pid, timeout):
        logs = "".join(p.read_text(errors="replace")[-3000:]
                       for p in Path(os.environ.get("DMEMU_ROOT", "/nonexistent")).glob("log/daxfs-*.log"))
        raise AssertionError(f"the daxfs daemon (pid {pid}) of {mountpoint} still runs "
                             f"{timeout:.0f}s after the unmount; its log:\n{logs}")
