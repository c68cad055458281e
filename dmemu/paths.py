"""Where dmemud keeps its state: DMEMU_ROOT, or a per-user default.

Root gets /var/lib/dmemu (namespaces are hardware: they must outlive reboots of the daemon,
so not /run); other users get $XDG_STATE_HOME/dmemu. The directory is 0700: the socket in it
must be reachable only by its owner.
"""
import os
from pathlib import Path


def state_root() -> Path:
    env = os.environ.get("DMEMU_ROOT")
    if env:
        return Path(env).absolute()
    if os.geteuid() == 0:
        return Path("/var/lib/dmemu")
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "dmemu"


class StatePaths:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else state_root()
        self.socket = self.root / "dmemud.sock"
        self.pidfile = self.root / "dmemud.pid"
        self.lock = self.root / "dmemud.lock"
        self.log = self.root / "dmemud.log"
        self.registry = self.root / "hardware.json"
        self.clean_marker = self.root / "clean-shutdown"
        self.images = self.root / "images"
        self.settings = self.root / "kernel.json"     # profile and module parameters

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        self.images.mkdir(exist_ok=True, mode=0o700)
