"""dmemud: run, start, stop and ask about the emulated kernel daemon."""
import argparse
import errno
import logging
import os
import sys

import trio

from .. import client
from ..autostart import ensure_daemon
from ..daemon import DaemonLock, Server
from ..errors import DmemuError
from ..paths import StatePaths
from ..process import wait_for_exit
from .common import ArgumentParser, fail, run

log = logging.getLogger("dmemud")

# Writing back the volatile caches of large images can take a while on a loaded machine.
STOP_TIMEOUT = 120.0


def build_parser(prog: str) -> ArgumentParser:
    p = ArgumentParser(prog=prog, description="The dmemu emulated kernel: owns pmem namespaces, "
                       "disks and device-mapper devices, and serves them on a unix socket in "
                       "DMEMU_ROOT.")
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    r = sub.add_parser("run", help="run in the foreground (logs to the state directory)")
    r.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    sub.add_parser("start", help="start in the background unless already running")
    s = sub.add_parser("stop", help="stop cleanly (refused while devices are in use)")
    s.add_argument("-f", "--force", action="store_true", help="stop even if devices are in use")
    sub.add_parser("status", help="say whether it runs, where, and who uses which device")
    return p


def _serve(paths: StatePaths, ready_fd: int | None) -> int:
    paths.ensure()
    lock = DaemonLock(paths)
    lock.acquire()
    handler = logging.FileHandler(paths.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)

    async def main():
        server = Server(paths)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            if os.environ.get("DMEMU_DEVVIEW", "0") != "0":
                # Before saying ready, so that the files are there when the first command returns.
                await _start_devview(paths, os.environ["DMEMU_DEVVIEW"])
            if ready_fd is not None:
                os.write(ready_fd, b"ready\n")
                os.close(ready_fd)
    try:
        trio.run(main)
    finally:
        lock.release()
    return 0


async def _start_devview(paths: StatePaths, where: str) -> None:
    """DMEMU_DEVVIEW=1 (or =DIR): show the devices as files once the daemon serves, as udev
    fills /dev at boot. The view ends by itself when the daemon stops."""
    from ..devview import control
    mountpoint = where if where.startswith("/") else control.default_mountpoint(paths)
    try:
        await trio.to_thread.run_sync(control.check_free, paths, mountpoint)
        await trio.to_thread.run_sync(control.spawn, paths, mountpoint, 0)
    except (DmemuError, OSError) as e:
        log.warning("device view not started: %s", e)


async def _stop(paths: StatePaths, force: bool) -> int:
    if not paths.socket.exists():
        print("dmemud is not running")
        return 0
    try:
        async with client.connect(paths.root, autostart=False, prog="dmemud") as c:
            pid = (await c.call("status"))["pid"]
            await c.call("shutdown", force=force)
    except DmemuError as e:
        if e.errno == errno.ECONNREFUSED:   # a stale socket: nobody serves it
            print("dmemud is not running")
            return 0
        raise
    # Return only once the daemon has exited: until then it still maps the images (their
    # file system stays busy) and holds its pidfile lock, so "stop; start" or "stop; umount"
    # would race with it.
    if not await trio.to_thread.run_sync(wait_for_exit, pid, STOP_TIMEOUT):
        raise DmemuError(errno.ETIMEDOUT, f"dmemud (pid {pid}) said it would stop but still "
                                          f"runs after {STOP_TIMEOUT:.0f}s; see {paths.log}")
    print("dmemud stopped")
    return 0


async def _status(paths: StatePaths) -> int:
    try:
        async with client.connect(paths.root, autostart=False, prog="dmemud") as c:
            st = await c.call("status")
    except DmemuError:
        print(f"dmemud is not running (state directory {paths.root})")
        return 3     # as systemctl/LSB status: program is not running
    print(f"dmemud is running: pid {st['pid']}, state directory {st['root']}, "
          f"{st['connections'] - 1} other client(s), up {st['uptime']:.0f}s")
    print(f"profile: {st['profile']}")
    for o in st["opens"]:
        mode = "exclusive" if o["exclusive"] else ("read-only" if o["read_only"] else "shared")
        print(f"  {o['device']}: {mode} open by pid {o['pid']} ({o['prog']})")
    return 0


def main(argv=None) -> int:
    prog = os.path.basename(sys.argv[0]) or "dmemud"
    args = build_parser(prog).parse_args(argv)
    paths = StatePaths()
    try:
        if args.cmd == "run":
            return _serve(paths, args.ready_fd)
        if args.cmd == "start":
            ensure_daemon(paths)
            print(f"dmemud is running in {paths.root}")
            return 0
        if args.cmd == "stop":
            return run(prog, _stop, paths, args.force)
        if args.cmd in (None, "status"):
            return run(prog, _status, paths)
    except DmemuError as e:
        return fail(prog, e.message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
