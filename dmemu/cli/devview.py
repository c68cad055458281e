"""dmemu-devview: show every dmemud device as a file, for dd, cmp, losetup and friends."""
import argparse
import logging
import os
import sys

import trio

from ..devview import control
from ..devview.mount import serve
from ..errors import DmemuError
from ..paths import StatePaths
from .common import EXIT_FAILURE, ArgumentParser, fail, setup_logging

log = logging.getLogger("dmemu-devview")

EPILOG = """\
The files behave as block devices: reads and writes go through dmemud's device stack, fsync
is a cache flush, O_DIRECT needs 512-byte aligned offsets and sizes, writes past the end fail
with ENOSPC. They are regular files to the host, so ioctls such as 'blockdev --getsize64'
cannot work on them: use 'stat -c %s FILE' for the size, or 'losetup -f --show FILE' for a
real block device. O_EXCL never reaches the view (FUSE drops it from open flags), so an
exclusive claim needs a dmemu client (a daxfs mount); opening for writing a device that
someone claimed fails with EBUSY. Shared mmap of the files is refused (ENODEV)."""


def build_parser(prog: str) -> ArgumentParser:
    p = ArgumentParser(prog=prog, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Mount a view of every dmemud device (pmemN, disks, mapper/NAME, "
                                   "VG/LV) as files, by default at $DMEMU_ROOT/dev.")
    p.add_argument("-m", "--mountpoint", help="where to mount (default: $DMEMU_ROOT/dev)")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="serve in the foreground instead of returning once mounted")
    p.add_argument("--stop", action="store_true", help="unmount the view and wait for it to end")
    p.add_argument("--debug-fuse", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="count", default=0, help="say more (-vv: debug)")
    return p


def main(argv=None) -> int:
    prog = os.path.basename(sys.argv[0]) or control.PROG
    args = build_parser(prog).parse_args(argv)
    setup_logging(args.verbose)
    paths = StatePaths()
    mountpoint = os.path.abspath(args.mountpoint or control.default_mountpoint(paths))
    try:
        if args.stop:
            control.stop(paths, mountpoint)
            return 0
        if args.mountpoint and args.ready_fd is None and not os.path.isdir(mountpoint):
            # The last component is made, as a convenience; a missing parent is refused:
            # creating directories up from the host's root for a typo is not ours to do.
            if not os.path.isdir(os.path.dirname(mountpoint)):
                raise DmemuError(2, f"{mountpoint}: its parent directory does not exist; "
                                    "create it first or name another mount point")
        control.check_free(paths, mountpoint)
        if not args.foreground:
            control.spawn(paths, mountpoint, args.verbose)
            return 0
        if not os.path.exists(mountpoint):
            os.makedirs(mountpoint, mode=0o755)
        return _foreground(paths, mountpoint, args)
    except DmemuError as e:
        return _report(prog, args.ready_fd, e.message)
    except OSError as e:
        msg = e.strerror if e.filename is None else f"{e.filename}: {e.strerror}"
        return _report(prog, args.ready_fd, msg)
    except KeyboardInterrupt:
        return 130


def _foreground(paths: StatePaths, mountpoint: str, args) -> int:
    if args.ready_fd is not None:
        # Daemonized: stderr is devview.log, where times say when things happened.
        for h in logging.getLogger().handlers:
            h.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))

    def ready():
        control.write_record(paths, mountpoint)
        if args.ready_fd is not None:
            os.write(args.ready_fd, b"ready\n")
            os.close(args.ready_fd)
            args.ready_fd = None
    try:
        trio.run(lambda: serve(mountpoint, paths.root, on_ready=ready, debug=args.debug_fuse))
    except RuntimeError as e:
        # pyfuse3.init refuses a mount with a RuntimeError naming nothing more useful.
        raise DmemuError(5, f"cannot mount {mountpoint}: {e}; is /dev/fuse available "
                            f"and fusermount3 installed?") from None
    finally:
        control.remove_record(paths, mountpoint)
    return 0


def _report(prog: str, ready_fd: int | None, message: str) -> int:
    if ready_fd is not None:
        try:
            os.write(ready_fd, f"error {message}\n".encode())
        except OSError:
            pass
    return fail(prog, message, EXIT_FAILURE)


if __name__ == "__main__":
    sys.exit(main())
