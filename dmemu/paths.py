"""Where dmemud keeps its state: DMEMU_ROOT, or a per-user default.

Root gets /var/lib/dmemu (namespaces are hardware: they must outlive reboots of the daemon,
so not /run); other users get $XDG_STATE_HOME/dmemu. The directory is 0700: the socket in it
must be reachable only by its owner.

The directory is trusted only when it is safe, as sshd's StrictModes and lvm2's checks of
its own directories: owned by the user who uses it and writable by nobody else. Anyone who
can write to it can plant symlinks where image files will be opened, or a hardware.json that
names files elsewhere, or a socket that answers in dmemud's place: a root dmemud would then
extend and write files it was never meant to touch. Such a directory is refused with one
line saying why, before anything in it is opened.
"""
import errno
import os
import stat
from pathlib import Path

from .errors import DmemuError


def state_root() -> Path:
    env = os.environ.get("DMEMU_ROOT")
    if env:
        return Path(env).absolute()
    if os.geteuid() == 0:
        return Path("/var/lib/dmemu")
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "dmemu"


def check_private_dir(path: Path, what: str) -> None:
    """Refuse ``path`` unless it is a directory of ours that no one else can write to."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) and what == "state directory":
            st = os.stat(path)      # DMEMU_ROOT itself may be a link; what it names is checked
    except FileNotFoundError:
        return
    me = os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise DmemuError(errno.ENOTDIR, f"refusing {what} {path}: it is {kind}; "
                                        f"remove it or set DMEMU_ROOT to a directory you own")
    if st.st_uid != me:
        raise DmemuError(errno.EPERM, f"refusing {what} {path}: it is owned by uid {st.st_uid}, "
                                      f"not by you (uid {me}); set DMEMU_ROOT to a directory you own")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise DmemuError(errno.EPERM, f"refusing {what} {path}: it is writable by others (mode "
                                      f"{stat.S_IMODE(st.st_mode):04o}); chmod 700 {path}")


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

    def check(self) -> None:
        """Refuse a state directory (or its images directory) someone else could write to."""
        check_private_dir(self.root, "state directory")
        check_private_dir(self.images, "images directory")

    def ensure(self) -> None:
        self.root.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(self.root, 0o700)
        except FileExistsError:
            pass
        self.check()
        os.chmod(self.root, 0o700)      # ours and safe: tighten reading too, for the socket
        try:
            os.mkdir(self.images, 0o700)
        except FileExistsError:
            pass
        self.check()
