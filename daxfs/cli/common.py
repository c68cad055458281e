"""What every daxfs command shares: logging set-up and the one-line error convention."""
import logging
import sys

from ..errors import FsError, UsageError


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if not verbose else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(name)s: %(message)s", stream=sys.stderr)
    # The level belongs to the terminal's handler: a mount's log file may want more.
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr:
            h.setLevel(level)


def fail(prog: str, msg: str, hint: str = "", code: int = 1) -> int:
    print(f"{prog}: {msg}" + (f"; {hint}" if hint else ""), file=sys.stderr)
    return code


def hint_for(e: OSError) -> str:
    """What to do about a failure, unless the message already says it."""
    import errno
    text = str(e)
    if "enable it" in text or "install" in text:
        return ""
    return {errno.EBUSY: "unmount it or stop the other user first",
            errno.ENOENT: "check the name",
            errno.EACCES: "run as root or fix the permissions",
            errno.ENODEV: "check the name with 'dmemu lsblk'",
            errno.EROFS: "the device is read-only",
            # Only a device with no daxfs superblock at all wants mkfs (which destroys what
            # is there); damage inside a daxfs, its journal's header included, is fsck's.
            errno.EUCLEAN: ("make one with mkfs.daxfs" if "not a daxfs filesystem" in str(e)
                            else "repair it with fsck.daxfs -y")}.get(e.errno, "")


def run_tool(prog: str, run, args, device: str) -> int:
    """Run a command's async ``run(args)`` and turn what it raises into one line and an exit
    code: the one convention of mkfs.daxfs and daxfs-resize."""
    import trio
    try:
        trio.run(run, args)
    except UsageError as e:
        return fail(prog, str(e), code=e.exit_code)
    except FsError as e:
        return fail(prog, e.strerror or str(e), hint_for(e))
    except OSError as e:
        return fail(prog, f"{device}: {e.strerror}", hint_for(e))
    return 0


__all__ = ["setup_logging", "fail", "hint_for", "run_tool", "FsError", "UsageError"]
