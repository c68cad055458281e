"""What every fuzzer shares: the result record and a private dmemud to aim at."""
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
TOOLS = TOP / "tools"


@dataclass
class Result:
    name: str
    seed: int
    trials: int = 0
    failures: dict = field(default_factory=dict)      # kind -> count
    examples: dict = field(default_factory=dict)      # kind -> the first case that showed it

    def fail(self, kind: str, case: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1
        self.examples.setdefault(kind, case[:400])

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def summary(self) -> str:
        head = f"{self.name}: {self.trials} trials, seed {self.seed}, {self.failed} failures"
        lines = [head] + [f"  {k}: {n} (first: {self.examples[k]})" for k, n in sorted(self.failures.items())]
        return "\n".join(lines)


def env_for(root: Path) -> dict:
    env = dict(os.environ, DMEMU_ROOT=str(root))
    env["PYTHONPATH"] = str(TOP) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def tool(root: Path, name: str, *args, input: str | None = None, timeout: float = 120):
    return subprocess.run([str(TOOLS / name), *map(str, args)], capture_output=True, text=True,
                          input=input, env=env_for(root), timeout=timeout)


def daemon_pid(root: Path) -> int | None:
    try:
        return int((root / "dmemud.pid").read_text().strip() or 0) or None
    except (FileNotFoundError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead to its clients.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def stop_daemon(root: Path) -> None:
    """Stop the dmemud of ``root`` that this fuzzer started; kill it by its pid if it will not."""
    pid = daemon_pid(root)
    subprocess.run([sys.executable, "-m", "dmemu.cli.dmemud", "stop", "--force"], env=env_for(root),
                   capture_output=True, timeout=60)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


def tracebacks(root: Path) -> int:
    log = root / "dmemud.log"
    return log.read_text(errors="replace").count("Traceback") if log.exists() else 0
