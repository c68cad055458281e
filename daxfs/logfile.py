"""Where a daxfs mount logs: one file per device in dmemu's state directory, rotated.

A mount runs as a daemon with no terminal, so without a file its errors (a commit that
failed and turned the filesystem read-only, the device going away, I/O errors) would vanish.
The file is named after the device as the kernel names it in its messages (``vg0-lv0`` for
/dev/vg0/lv0, ``pmem0``, or an image file's name), so `daxfs (vg0-lv0): ...` lines and the
file that holds them match.
"""
import logging
import logging.handlers
import os
from pathlib import Path

# A busy mount logs little; a few MiB keep days of it without filling the state directory.
MAX_BYTES = 4 << 20
BACKUPS = 3


def device_name(source: str) -> str:
    """The short name messages use for SOURCE: /dev/vg0/lv0 -> vg0-lv0, /dev/mapper/x -> x,
    /dev/pmem0 -> pmem0, /tmp/fs.img -> fs.img."""
    s = source.rstrip("/")
    if s.startswith("/dev/mapper/"):
        return s[len("/dev/mapper/"):] or "mapper"
    if s.startswith("/dev/"):
        return s[len("/dev/"):].replace("/", "-") or "dev"
    return os.path.basename(s) or "daxfs"


def log_dir() -> Path:
    from dmemu.paths import state_root
    return state_root() / "log"


def log_path(source: str) -> Path:
    return log_dir() / f"daxfs-{device_name(source)}.log"


def start_file_logging(source: str, verbose: int) -> Path | None:
    """Send this process's log records to the mount's file (INFO and up; DEBUG with -vv).
    Returns the path, or None (with a warning on stderr) when the state directory cannot
    be written: a mount is still worth having without its log."""
    path = log_path(source)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES,
                                                       backupCount=BACKUPS)
    except OSError as e:
        logging.getLogger("daxfs").warning("cannot log to %s: %s; logging to stderr only",
                                           path, e.strerror or e)
        return None
    name = device_name(source)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s daxfs ({name}) [%(process)d] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    return path
