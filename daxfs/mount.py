"""Serving one daxfs mount: the trio runtime of the daemon lives here and only here.

Everything is built in one AsyncExitStack, so teardown runs in reverse: the FUSE session
is closed first, then the filesystem commits, flushes and marks itself clean, then the
device is released. Background work (the periodic commit, kernel cache invalidations)
runs in a nursery that ends with the mount.
"""
import logging
import os
import signal
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import pyfuse3
import trio

from . import fuseloop, pagecache
from .dax import DaxPolicy, check_mount, parse_dax_option
from .fs import Filesystem
from .kmsg import KernelLog
from .logfile import device_name
from .operations import Operations
from .source import open_source

log = logging.getLogger(__name__)

# Options daxfs consumes itself: libfuse refuses unknown options, and these mean nothing to
# FUSE (fstab/mount(8) words) or are ours (dax modes, commit interval).
OWN_FLAGS = {"defaults", "auto", "noauto", "user", "users", "nouser", "nofail", "_netdev",
             "dax", "remount", "rw", "relatime", "strictatime", "lazytime", "nolazytime",
             "diratime", "nodiratime"}
OWN_PREFIXES = ("dax=", "x-", "comment=", "commit=", "subtype=", "fsname=")

# What libfuse 3 itself accepts (lib/mount.c fuse_mount_opts and the kernel flags it maps,
# lib/fuse_lowlevel.c fuse_ll_opts). Anything else makes fuse_session_new() fail without
# naming the option, and only after the filesystem has been opened and its mount counted:
# so an option outside this list is refused by name before anything is opened.
FUSE_FLAGS = {"allow_other", "allow_root", "auto_unmount", "blkdev", "default_permissions",
              "ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "async", "sync",
              "dirsync", "atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime",
              "strictatime", "nostrictatime", "lazytime", "nolazytime", "debug", "-d", "--debug"}
FUSE_PREFIXES = ("max_read=", "blksize=", "context=", "fscontext=", "defcontext=", "rootcontext=",
                 "user=")


@dataclass
class MountOptions:
    read_only: bool = False
    fuse: list = field(default_factory=list)   # what goes to pyfuse3.init
    dax: str | None = None                      # taken out for the DAX mount logic
    commit_interval: float = 5.0
    noatime: bool = False
    strictatime: bool = False                   # atime on every read, not relatime's
    skip_flush: bool = False                    # x-crashcheck-skip-flush: broken on purpose
    skip_dax_flush: bool = False                # x-crashcheck-skip-dax-flush: likewise
    writeback: bool = False                     # FUSE writeback cache (-o writeback)
    log_file: str | None = None                 # where this mount logs, told to dmemud
    given: str = ""                             # the -o options as given, for a remount


def parse_options(opts: list[str], source: str) -> MountOptions:
    """Split -o options into ours and FUSE's (fsname is SOURCE; no subtype, so /proc/mounts
    shows plain 'fuse' as fstests requires)."""
    mo = MountOptions(given=",".join(o for o in opts if o))
    for o in opts:
        if not o:
            continue
        if o == "ro":
            mo.read_only = True
        elif o == "rw":
            mo.read_only = False
        elif o == "dax":
            mo.dax = "always"
        elif o.startswith("dax="):
            mo.dax = o[4:]
        elif o in ("writeback", "nowriteback"):
            mo.writeback = o == "writeback"
            continue
        elif o == "x-crashcheck-skip-flush":
            mo.skip_flush = True
        elif o == "x-crashcheck-skip-dax-flush":
            mo.skip_dax_flush = True
        elif o == "noatime":
            mo.noatime = True
        elif o in ("atime", "relatime"):
            mo.noatime = mo.strictatime = False
        elif o == "strictatime":
            mo.noatime, mo.strictatime = False, True
        elif o.startswith("commit="):
            try:
                mo.commit_interval = float(o[7:])
            except ValueError:
                raise ValueError(f"bad commit interval '{o}'") from None
            if not 0 < mo.commit_interval < 1e6:
                raise ValueError(f"bad commit interval '{o}': use a number of seconds above 0")
            continue
        if o in OWN_FLAGS or o.startswith(OWN_PREFIXES) or o == "ro":
            continue
        if o not in FUSE_FLAGS and not (o.startswith(FUSE_PREFIXES) and o.split("=", 1)[1]):
            raise ValueError(f"unknown mount option '{o}'")
        mo.fuse.append(o)
    try:
        parse_dax_option(mo.dax)
    except OSError as e:
        raise ValueError(e.strerror) from None
    if mo.read_only:
        mo.fuse.append("ro")
    # daxfs leaves permission checks to the kernel (mode bits, sticky directories,
    # chown/chmod rules): without this option every user could do anything
    if "default_permissions" not in mo.fuse:
        mo.fuse.append("default_permissions")
    mo.fuse.append(f"fsname={source}")
    return mo


class Committer:
    """The background commit: the running transaction (and every fast-commit record before
    it) goes to the journal and home every `interval` seconds, so changes that nobody
    fsyncs become durable within that time (ext4's commit=5 default), and at once when the
    fast-commit area fills up, so fsync never has to do it. Whatever goes wrong in a commit
    turns the filesystem read-only (transaction.py) and is logged; the daemon keeps serving."""

    def __init__(self, fs: Filesystem, interval: float):
        self.fs = fs
        self.interval = interval
        self._wake = trio.Event()
        fs.fc.kick = self.kick

    def kick(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            with trio.move_on_after(self.interval):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self.fs.commit()
            except Exception as e:          # commit() already turned the fs read-only
                log.error("background commit failed: %s", e)

async def serve(source: str, mountpoint: str, mo: MountOptions, *, ready=None) -> None:
    """Mount and serve until unmounted (umount/fusermount3 -u) or SIGTERM/SIGINT."""
    async with AsyncExitStack() as stack:
        dev = await stack.enter_async_context(
            open_source(source, exclusive=not mo.read_only, read_only=mo.read_only,
                        log=mo.log_file))
        dax_mode = parse_dax_option(mo.dax)
        check_mount(dax_mode, getattr(dev, "dax", False))   # before anything is written
        fs = await Filesystem.mount(dev, read_only=mo.read_only, track_lookups=True)
        fs.dax = DaxPolicy(dax_mode, getattr(dev, "dax", False))
        if mo.skip_flush:
            log.warning("x-crashcheck-skip-flush: commits will not flush what they reference; "
                        "this filesystem is NOT crash-safe (a test of the crash checker)")
            fs.journal.skip_preflush = True
            fs.fc.skip_preflush = True
        if mo.skip_dax_flush and fs.daxio is not None:
            log.warning("x-crashcheck-skip-dax-flush: DAX stores are never flushed; this "
                        "filesystem is NOT crash-safe (a test of the crash checker)")
            fs.daxio.skip_flush = True
        _follow_device(dev, fs, mountpoint)
        if mo.noatime:
            fs.relatime = False
        fs.strictatime = mo.strictatime and not mo.read_only
        stack.push_async_callback(fs.unmount)
        ops = Operations(fs)
        ops.mount_options = mo.given
        if mo.writeback:
            # the kernel merges small writes into large ones and sends them at writeback
            # or fsync; fsync still commits, so durability rules do not change
            ops.enable_writeback_cache = True
            fs.writeback_cache = True
        stack.callback(lambda: log.info("requests served: %s; %d bytes written",
                                        dict(sorted(ops.requests.items())), ops.write_bytes))
        ops.after_init = lambda: _widen_readahead(mountpoint)
        pyfuse3.init(ops, mountpoint, mo.fuse)
        unmounted = False

        def close_fuse():
            pyfuse3.close(unmount=not unmounted)
        stack.callback(close_fuse)
        log.info("%s mounted on %s (%s)", source, mountpoint, ",".join(mo.fuse))
        async with trio.open_nursery() as nursery:
            if getattr(dev, "client", None) is not None:      # a dmemu device: dmesg
                kmsg = KernelLog(device_name(source))
                logging.getLogger("daxfs").addHandler(kmsg)
                stack.callback(logging.getLogger("daxfs").removeHandler, kmsg)
                nursery.start_soon(kmsg.run, dev.client)
            nursery.start_soon(ops.run_invalidator)
            if not mo.read_only:
                nursery.start_soon(Committer(fs, mo.commit_interval).run)
            nursery.start_soon(_terminate_on_signal)
            if ready is not None:
                ready()
            fuseloop.install()
            await pyfuse3.main()
            # main() returns once the kernel ended the session (umount) or terminate()
            unmounted = not _terminated
            if hasattr(dev, "unmounted"):
                await dev.unmounted()
            nursery.cancel_scope.cancel()


_terminated = False

# The kernel reads ahead at most read_ahead_kb of the mount's bdi per READ request: 128 KiB
# by default, so a 1 MiB read(2) costs eight requests. libfuse offers 1 MiB requests
# (max_pages 256), so the readahead window is widened to match: a cold sequential read
# then costs one request per MiB instead of eight (measured: 64 MiB read in 64 READs
# instead of 512). Random reads are not read ahead by the kernel either way. It is set once
# the kernel has taken the reply to INIT, which caps the readahead at what it offered.
READAHEAD_KB = 1024


def _widen_readahead(mountpoint: str) -> None:
    """Set the mount's bdi readahead (root only; the mount works without it). Found in
    /proc/self/mountinfo, never by a stat(2) of the mount point, which would wait for a
    reply from this very process: only its parent directory is resolved."""
    parent, name = os.path.split(os.path.abspath(mountpoint))
    target = os.path.join(os.path.realpath(parent), name)
    majmin = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[4] == target:
                    majmin = fields[2]          # the last one is ours
        if majmin is not None:
            with open(f"/sys/class/bdi/{majmin}/read_ahead_kb", "w") as f:
                f.write(f"{READAHEAD_KB}\n")
    except OSError as e:
        log.info("readahead of %s left as it was: %s", mountpoint, e)


def _follow_device(dev, fs: Filesystem, mountpoint: str) -> None:
    """Answer dmemud's events for the device under the mount: freeze and thaw around a
    suspend (a snapshot being taken), and the device going away (removal, power failure)."""
    if hasattr(dev, "freeze_hook"):
        async def freeze_hook(kind: str) -> None:
            if kind == "freeze":
                # freeze_super syncs the filesystem before freezing it: what the kernel
                # still caches for us (mmap stores, writeback-cache writes) belongs in the
                # frozen image, so it must reach us while the gate is still open.
                if not fs.read_only and not fs.dead:
                    try:
                        await trio.to_thread.run_sync(pagecache.write_back, mountpoint,
                                                      fs.open_for_writing())
                    except OSError as e:
                        log.error("writing back the page cache before a freeze failed: %s", e)
                await fs.freeze()
            else:
                fs.thaw()
        dev.freeze_hook = freeze_hook
    if hasattr(dev, "event_hooks"):
        def on_event(ev: dict) -> None:
            if ev.get("event") == "gone":
                fs.device_gone(ev.get("reason", "device gone"))
        dev.event_hooks.append(on_event)


async def _terminate_on_signal() -> None:
    global _terminated
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
        async for sig in sigs:
            log.info("signal %d: unmounting", sig)
            _terminated = True
            pyfuse3.terminate()
            return
