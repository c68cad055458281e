"""Helpers for tests: run the commands in tools/, stop a test's daemon."""
import os
import signal
import subprocess
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
TOOLS = TOP / "tools"


def _daemon_pid(root: Path) -> int | None:
    try:
        return int((root / "dmemud.pid").read_text().strip() or 0) or None
    except (FileNotFoundError, ValueError):
        return None


def stop_daemon(root: Path) -> None:
    pid = _daemon_pid(root)
    env = dict(os.environ, DMEMU_ROOT=str(root))
    subprocess.run([sys.executable, "-m", "dmemu.cli.dmemud", "stop", "--force"], env=env,
                   capture_output=True, timeout=60)
    if pid:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        os.kill(pid, signal.SIGKILL)


def tool(name: str, *args, check: bool = False, input: str | None = None, env=None) -> subprocess.CompletedProcess:
    """Run a command from tools/ the way a user would, capturing its output."""
    return subprocess.run([str(TOOLS / name), *map(str, args)], capture_output=True, text=True,
                          input=input, check=check, timeout=120, env=env)


def ok(*args, input: str | None = None) -> str:
    """Run a command from tools/ that must succeed; its standard output."""
    r = tool(*args, input=input)
    assert r.returncode == 0, f"{args}: {r.stderr}"
    return r.stdout


async def atool(*args, input: str | None = None) -> subprocess.CompletedProcess:
    """tool() from an async test, without blocking the trio loop (events keep flowing)."""
    import trio
    return await trio.to_thread.run_sync(lambda: tool(*args, input=input))
