"""daxfs SOURCE MOUNTPOINT [-o opts] [-f] [-v]: mount a daxfs through FUSE.

Without -f the command forks a daemon and returns only when the mount is live (or prints
the daemon's one-line error and fails), as mount helpers must for fstests.
"""
import argparse
import logging
import os
import sys

from ..errors import FsError, UsageError
from .common import fail, hint_for, setup_logging

PROG = "daxfs"
log = logging.getLogger(__name__)


def parse_args(argv):
    from ..logfile import log_dir
    p = argparse.ArgumentParser(
        prog=PROG, description="Mount the daxfs on SOURCE (an image file or a dmemu device "
        "such as /dev/pmem0) at MOUNTPOINT through FUSE.",
        epilog=f"Each mount logs to {log_dir()}/daxfs-NAME.log, NAME being the device's "
               "short name (vg0-lv0 for /dev/vg0/lv0, pmem0, or the image file's name); the "
               "directory is DMEMU_ROOT's log/.")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-o", dest="options", action="append", default=[],
                   help="comma-separated mount options: ro, rw, allow_other, "
                        "default_permissions, dev, suid, commit=SECONDS, ...")
    p.add_argument("-f", dest="foreground", action="store_true",
                   help="stay in the foreground (do not daemonize)")
    p.add_argument("-v", dest="verbose", action="count", default=0, help="say more")
    return p.parse_args(argv)


def _serve(args, mo, ready) -> None:
    import trio
    from ..logfile import start_file_logging
    from ..mount import serve
    path = start_file_logging(args.source, args.verbose)
    mo.log_file = str(path) if path else None
    log.info("pid %d serving %s on %s", os.getpid(), args.source, args.mountpoint)
    trio.run(lambda: serve(args.source, args.mountpoint, mo, ready=ready))


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(args.verbose)
    from ..mount import parse_options
    try:
        opts = [o for group in args.options for o in group.split(",")]
        mo = parse_options(opts, args.source)
        if not os.path.isdir(args.mountpoint):
            raise UsageError(f"{args.mountpoint}: mount point is not a directory; create it first")
    except (UsageError, ValueError) as e:
        return fail(PROG, str(e))
    if args.foreground:
        return _run_foreground(args, mo)
    return _daemonize(args, mo)


def _describe(e: BaseException) -> str:
    if isinstance(e, FsError):
        hint = hint_for(e)
        return (e.strerror or str(e)) + (f"; {hint}" if hint else "")
    if isinstance(e, UsageError):
        return str(e)
    if isinstance(e, OSError):
        return f"{e.strerror or e}" + ("; is FUSE available (/dev/fuse, fusermount3)?"
                                       if "fuse" in str(e).lower() else "")
    if isinstance(e, RuntimeError) and "fuse" in str(e).lower():
        if os.geteuid() != 0 and not os.access("/dev/fuse", os.R_OK | os.W_OK):
            # libfuse falls back to the setuid fusermount3 only when mount(2) is refused,
            # not when /dev/fuse itself cannot be opened
            return (f"this user cannot open /dev/fuse (mode {_mode('/dev/fuse')}); FUSE "
                    "mounts by other users than root need it crw-rw-rw-, as udev makes it "
                    "on Debian (chmod 666 /dev/fuse), or mount as root")
        return f"{e}; check the mount options and that MOUNTPOINT is not in use"
    return f"{type(e).__name__}: {e}"


def _mode(path: str) -> str:
    import stat
    try:
        return stat.filemode(os.stat(path).st_mode)
    except OSError as e:
        return e.strerror or "unknown"


def _with_source(source: str, msg: str) -> str:
    return msg if msg.startswith(source) else f"{source}: {msg}"


def _run_foreground(args, mo) -> int:
    try:
        _serve(args, mo, ready=None)
    except (OSError, UsageError, RuntimeError) as e:
        return fail(PROG, _with_source(args.source, _describe(e)))
    except KeyboardInterrupt:
        pass
    return 0


def _daemonize(args, mo) -> int:
    """Fork; the child serves the mount and reports 'ok' or its error through a pipe."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        msg = b""
        while True:
            chunk = os.read(rfd, 4096)
            if not chunk:
                break
            msg += chunk
            if msg == b"ok":
                break
        os.close(rfd)
        if msg == b"ok":
            return 0
        if not msg:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            msg = b"the daemon exited before the mount was live; run with -f -v to see why"
        return fail(PROG, msg.decode(errors="replace"))
    # child
    os.close(rfd)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    if not args.verbose:
        os.dup2(devnull, 2)
    code = 0

    def ready():
        os.write(wfd, b"ok")
        os.close(wfd)
        ready.done = True
    ready.done = False
    try:
        _serve(args, mo, ready)
    except BaseException as e:      # the parent prints it; the daemon has no terminal
        code = 1
        if not ready.done:
            try:
                os.write(wfd, _with_source(args.source, _describe(e)).encode())
            except OSError:
                pass
        else:
            logging.getLogger(PROG).exception("daemon failed")
    os._exit(code)
