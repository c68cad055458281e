"""The client API of dmemud: what daxfs, the tools and tests use to reach devices.

    async with dmemu.client.connect() as kernel:
        dev = await kernel.open_device("/dev/pmem0", exclusive=True)
        await dev.write(0, b"x" * 4096, fua=True)
        m = await dev.direct_access(0, 1, write=True)    # DAX: load/store the pmem itself
        m.write(0, b"hello"); m.flush(0, 5)

The socket carries control only. ``resolve`` answers where a device range lives (a lease on
image files that this process maps once) and the client then loads and stores by itself, so
the data path costs a memory copy, not a round trip. dmemud revokes leases when what lies
underneath changes; the reader task drops them before acknowledging, and every I/O looks its
lease up again, so nothing is ever written through a mapping the daemon has taken back.
"""
import bisect
import errno
import logging
import os
import socket
import sys
from contextlib import asynccontextmanager

import trio

from . import protocol
from .autostart import ensure_daemon
from .blockdev import PAGE_SECTORS, PAGE_SIZE, SECTOR_SIZE
from .errors import DmemuError
from .media import Media
from .paths import StatePaths

log = logging.getLogger(__name__)


class RevokedError(OSError):
    """A direct_access mapping was taken back by dmemud: call direct_access again."""

    def __init__(self, what: str):
        super().__init__(errno.ESTALE, f"{what}: mapping revoked; map it again")


class Segment:
    __slots__ = ("start", "end", "kind", "media", "offset")

    def __init__(self, start, end, kind, media, offset):
        self.start, self.end, self.kind, self.media, self.offset = start, end, kind, media, offset


class Lease:
    __slots__ = ("start", "end", "write", "segments", "seg_starts", "valid")

    def __init__(self, start: int, end: int, write: bool, segments: list[Segment]):
        self.start, self.end, self.write = start, end, write
        self.segments = segments
        self.seg_starts = [s.start for s in segments]
        self.valid = True

    def segment(self, sector: int) -> Segment:
        return self.segments[bisect.bisect_right(self.seg_starts, sector) - 1]


class Client:
    """One connection to dmemud, with its reader task."""

    def __init__(self, stream: trio.SocketStream, paths: StatePaths):
        self.stream = stream
        self.paths = paths
        self._next_id = 1
        self._waiting: dict[int, list] = {}
        self._send_lock = trio.Lock()
        self._devices: dict[int, "Device"] = {}
        self._media: dict[str, Media] = {}
        self.closed = False
        self.lost = False               # the daemon went away under us (not our aclose)
        self.autostart = True
        self._reattach_lock = trio.Lock()
        self._last_reattach = -1e9

    async def _reader(self) -> None:
        reader = protocol.FrameReader(self.stream)
        try:
            while True:
                frame = await reader.read()
                if frame is None:
                    break
                obj, payload = frame
                if "event" in obj:
                    await self._event(obj)
                    continue
                slot = self._waiting.pop(obj.get("id"), None)
                if slot is None:
                    continue
                done, hook = slot[0], slot[3]
                if hook is not None and "ok" in obj:
                    hook(obj["ok"])     # applied here, in order with later revocations
                slot[1], slot[2] = obj, payload
                done.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if not self.closed:
                self.lost = True
            self.closed = True
            for dev in self._devices.values():
                # Handles and leases die with the connection; the next I/O tries to open
                # the device again on a restarted dmemud (reattach).
                if not dev.dead:
                    dev._kill(f"dmemud connection lost (dmemud in {self.paths.root} stopped or "
                              f"crashed); waiting for it to come back")
                    dev.lost = True
            for slot in self._waiting.values():
                slot[0].set()
            self._waiting.clear()

    async def _event(self, obj: dict) -> None:
        dev = self._devices.get(obj.get("handle"))
        if dev is None:
            await self._send({"ack": obj["eid"]})
            return
        kind = obj["event"]
        if kind == "revoke":
            dev._revoke(obj.get("ranges", []))
        elif kind == "gone":
            dev._kill(obj.get("reason", "device gone"))
        elif kind == "table":
            dev._retable(obj)
        if dev.freeze_hook is not None and kind in ("freeze", "thaw"):
            # A filesystem freezes asynchronously (it flushes first); the reader must go on
            # reading meanwhile, so the hook runs in its own task and acknowledges at the end.
            self._nursery.start_soon(self._run_hook, dev, obj)
            return
        for hook in list(dev.event_hooks):
            hook(obj)
        await self._send({"ack": obj["eid"]})

    async def _run_hook(self, dev, obj) -> None:
        try:
            await dev.freeze_hook(obj["event"])
        except Exception as e:
            log.exception("%s handler failed", obj["event"])
            # A freeze that did not happen must not pass for one: the suspend then fails
            # cleanly instead of snapshotting a filesystem that is still changing.
            await self._send({"ack": obj["eid"], "error": {"errno": getattr(e, "errno", None) or 5,
                                                           "message": str(e)[:200]}})
            return
        await self._send({"ack": obj["eid"]})

    async def _send(self, obj: dict, payload: bytes = b"") -> None:
        async with self._send_lock:
            await self.stream.send_all(protocol.encode(obj, payload))

    async def call(self, op: str, payload: bytes = b"", *, on_reply=None, **args) -> dict:
        """Send a request, wait for its reply; raise DmemuError on a refusal."""
        result, _ = await self.call_data(op, payload, on_reply=on_reply, **args)
        return result

    async def call_data(self, op: str, payload: bytes = b"", *, on_reply=None, **args):
        if self.closed:
            raise DmemuError(errno.ENOTCONN, "dmemud connection lost")
        rid = self._next_id
        self._next_id += 1
        slot = [trio.Event(), None, b"", on_reply]
        self._waiting[rid] = slot
        try:
            await self._send({"id": rid, "op": op, **args}, payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._waiting.pop(rid, None)
            raise DmemuError(errno.ENOTCONN, "dmemud connection lost")
        await slot[0].wait()
        reply = slot[1]
        if reply is None:
            raise DmemuError(errno.ENOTCONN, "dmemud connection lost")
        if "error" in reply:
            raise DmemuError.from_wire(reply["error"])
        return reply["ok"], slot[2]

    def media(self, name: str, spec: dict) -> Media:
        """The mapped images of a base device, mapped once per process."""
        m = self._media.get(name)
        if m is None or m.spec != spec:
            m = self._media[name] = Media(spec)
        return m

    async def open_device(self, device: str, *, exclusive: bool = False,
                          read_only: bool = False, log: str | None = None) -> "Device":
        """``log`` names the opener's own log file, so dmemud's log says where to look."""
        extra = {"log": log} if log else {}
        info = await self.call("open", device=device, exclusive=exclusive, read_only=read_only,
                               **extra)
        dev = Device(self, info)
        self._devices[dev.handle] = dev
        return dev

    async def aclose(self) -> None:
        self.closed = True
        await self.stream.aclose()

    # -- a restarted dmemud ----------------------------------------------------------------

    REATTACH_INTERVAL = 1.0     # seconds between attempts while dmemud stays away

    async def reattach(self) -> None:
        """After dmemud went away: connect to it again (starting it, as any client would)
        and open every device this client had open, as it was opened.

        A restarted dmemud is a reboot after a crash, so a device comes back only if it is
        the same device (the same size on the same media) and nothing not yet durable was
        lost when dmemud came up (the daemon reports what its boot rolled back): a
        filesystem's cached state then still matches the media. Otherwise the device stays
        dead, with a reason that says how to recover.
        """
        async with self._reattach_lock:
            if not self.lost or trio.current_time() - self._last_reattach < self.REATTACH_INTERVAL:
                return
            self._last_reattach = trio.current_time()
            try:
                if self.autostart:
                    await trio.to_thread.run_sync(ensure_daemon, self.paths)
                sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    await sock.connect(str(self.paths.socket))
                except OSError:
                    sock.close()
                    raise
            except (OSError, DmemuError) as e:
                log.warning("dmemud in %s is not back yet: %s", self.paths.root, e)
                return
            self.stream = trio.SocketStream(sock)
            self._waiting = {}
            self.closed = self.lost = False
            self._nursery.start_soon(self._reader)
            try:
                hello = await self.call("hello", prog=os.path.basename(sys.argv[0] or "python"),
                                        pid=os.getpid())
                lost_at_boot = hello.get("boot_lost") or {}
                for dev in [d for d in self._devices.values() if d.lost]:
                    await self._reopen(dev, lost_at_boot)
            except DmemuError as e:
                log.warning("reattaching to dmemud failed: %s", e)

    async def _reopen(self, dev: "Device", lost_at_boot: dict) -> None:
        try:
            info = await self.call("open", device=dev.name, exclusive=dev.exclusive,
                                   read_only=dev.read_only)
        except DmemuError as e:
            if e.errno == errno.ENOTCONN:
                raise
            # Not there (yet): a mapped device comes back when it is activated again.
            dev.dead = (f"dmemud restarted and {dev.name} cannot be opened again ({e.message}); "
                        f"activate it again (vgchange -ay), or unmount and mount again")
            log.warning("%s", dev.dead)
            return
        lost = {b: n for b, n in lost_at_boot.items() if b in info["flush_set"] and n}
        backings = {n: info["backings"][n] for n in info["flush_set"]}
        if lost or info["nr_sectors"] != dev.nr_sectors or backings != dev._backings:
            with trio.CancelScope(shield=True):
                await self.call("close", handle=info["handle"])
            why = (", ".join(f"{n} bytes not yet durable on {b}" for b, n in lost.items()) + " were lost "
                   "when dmemud restarted after a crash" if lost else "it is no longer the same device")
            dev.lost = False
            dev.dead = f"not reattached: {why}; unmount, check it with fsck, and mount again"
            log.error("%s: %s", dev.name, dev.dead)
            return
        self._devices.pop(dev.handle, None)
        dev.handle = info["handle"]
        self._devices[dev.handle] = dev
        dev.lost = False
        dev.dead = None
        log.warning("%s: reattached to dmemud after it restarted", dev.name)


@asynccontextmanager
async def connect(root=None, *, autostart: bool = True, prog: str | None = None):
    """A connection to the dmemud of ``root`` (DMEMU_ROOT), starting it if absent."""
    paths = StatePaths(root)
    # Before its socket is trusted: a daemon there hands out file names this process opens.
    paths.check()
    if autostart:
        await trio.to_thread.run_sync(ensure_daemon, paths)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.connect(str(paths.socket))
    except OSError as e:
        sock.close()
        raise DmemuError(errno.ECONNREFUSED, f"dmemud is not running in {paths.root} ({e.strerror})")
    client = Client(trio.SocketStream(sock), paths)
    client.autostart = autostart
    try:
        async with trio.open_nursery() as nursery:
            client._nursery = nursery
            nursery.start_soon(client._reader)
            try:
                await client.call("hello", prog=prog or os.path.basename(sys.argv[0] or "python"),
                                  pid=os.getpid())
                yield client
            finally:
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await client.aclose()
    except BaseExceptionGroup as group:
        # The reader never raises, so the group holds only what the caller's body raised:
        # give it back as it was, not wrapped.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


@asynccontextmanager
async def open_device(device: str, *, exclusive: bool = False, read_only: bool = False, root=None,
                      log: str | None = None):
    """A device on its own connection: the shape filesystems and tools want."""
    async with connect(root) as client:
        dev = await client.open_device(device, exclusive=exclusive, read_only=read_only, log=log)
        try:
            yield dev
        finally:
            with trio.CancelScope(shield=True):
                await dev.close()


class Device:
    """An open dmemu device: the BlockDevice interface plus direct_access."""

    def __init__(self, client: Client, info: dict):
        self.client = client
        self.handle = info["handle"]
        self.name = info["name"]
        self.devno = info["devno"]
        self.nr_sectors = info["nr_sectors"]
        self.dax = info["dax"]
        self.chardev = info.get("chardev", False)
        self.read_only = info["read_only"]
        self.exclusive = info["exclusive"]
        self.bio_based = info.get("bio_based", False)
        self._flush_set = [client.media(n, info["backings"][n]) for n in info["flush_set"]]
        self._backings = {n: info["backings"][n] for n in info["flush_set"]}
        self.lost = False               # dead because dmemud went away: may be reattached
        self._starts: list[int] = []
        self._leases: list[Lease] = []
        self.dead: str | None = None
        self.event_hooks: list = []     # called with each event dict before it is acknowledged
        self.freeze_hook = None         # async fn("freeze" | "thaw"): the filesystem on top

    def _retable(self, info: dict) -> None:
        """A new table went live: size, DAX capability and the media to flush may differ."""
        self.nr_sectors = info["nr_sectors"]
        self.dax = info["dax"]
        self.bio_based = info.get("bio_based", False)
        self._flush_set = [self.client.media(n, info["backings"][n]) for n in info["flush_set"]]
        self._backings = {n: info["backings"][n] for n in info["flush_set"]}
        self._revoke([[0, 1 << 62]])

    # -- leases ----------------------------------------------------------------------------

    def _lease_at(self, sector: int, write: bool) -> Lease | None:
        i = bisect.bisect_right(self._starts, sector) - 1
        if i >= 0:
            lease = self._leases[i]
            if sector < lease.end and (lease.write or not write):
                return lease
        return None

    def _install(self, reply: dict, backings: dict) -> None:
        segs = []
        for s in reply["segments"]:
            media = None
            if s["kind"] == "map":
                name = s["backing"]
                media = self.client.media(name, backings[name]) if name in backings else self.client._media[name]
            segs.append(Segment(s["start"], s["end"], s["kind"], media, s.get("offset", 0)))
        lease = Lease(reply["start"], reply["end"], reply["write"], segs)
        # A new lease replaces whatever it overlaps: it is the daemon's latest word.
        keep = [x for x in self._leases if x.end <= lease.start or x.start >= lease.end]
        for x in self._leases:
            if x not in keep:
                x.valid = False
        keep.append(lease)
        keep.sort(key=lambda x: x.start)
        self._leases = keep
        self._starts = [x.start for x in keep]

    def _revoke(self, ranges: list) -> None:
        keep = []
        for x in self._leases:
            if any(x.start < e and x.end > s for s, e in ranges):
                x.valid = False
            else:
                keep.append(x)
        self._leases = keep
        self._starts = [x.start for x in keep]

    def _kill(self, reason: str) -> None:
        self.dead = reason
        self._revoke([[0, 1 << 62]])

    def _check(self, sector: int, nbytes: int, *, bio: bool = True) -> None:
        if bio and self.chardev:
            # A device-dax character device has no read/write: the kernel returns EINVAL.
            raise OSError(errno.EINVAL, f"{self.name}: a device-dax character device takes no "
                                        f"read or write, only mappings (direct_access)")
        if self.dead:
            raise OSError(errno.EIO, f"{self.name}: {self.dead}")
        if sector < 0 or nbytes < 0 or sector * SECTOR_SIZE + nbytes > self.nr_sectors * SECTOR_SIZE:
            raise OSError(errno.EIO, f"{self.name}: access beyond end of device "
                                     f"(sector {sector}, {nbytes} bytes, size {self.nr_sectors} sectors)")

    async def _revive(self) -> None:
        """Before I/O on a device whose dmemud went away: try to reattach."""
        if self.lost:
            await self.client.reattach()

    async def lease(self, sector: int, write: bool, nr: int = 1) -> Lease:
        """The lease covering ``sector``. For writing, ``nr`` says how many sectors from
        there are about to be written: an origin with snapshots copies their chunks in one
        batch, so one request serves the whole write."""
        await self._revive()
        nr = max(1, min(nr, self.nr_sectors - sector))
        while True:
            lease = self._lease_at(sector, write)
            if lease is not None:
                return lease
            if self.dead:
                raise OSError(errno.EIO, f"{self.name}: {self.dead}")
            try:
                await self.client.call("resolve", handle=self.handle, sector=sector, nr=nr, write=write,
                                       on_reply=lambda r: self._install(r, r.get("backings", {})))
            except DmemuError as e:
                raise e.as_oserror() from None

    # -- bios ------------------------------------------------------------------------------

    async def read(self, sector: int, nbytes: int) -> bytes:
        # The common case, one mapped segment, is a single copy out of the mapping.
        if self.dead:
            await self._revive()
        self._check(sector, nbytes)
        lease = self._lease_at(sector, False)
        if lease is not None:
            seg = lease.segment(sector)
            if seg.kind == "map" and (seg.end - sector) * SECTOR_SIZE >= nbytes:
                off = seg.offset + (sector - seg.start) * SECTOR_SIZE
                return seg.media.view[off:off + nbytes]
        buf = bytearray(nbytes)
        await self.readinto(sector, memoryview(buf))
        return bytes(buf)

    async def readinto(self, sector: int, buf: memoryview) -> None:
        nbytes = len(buf)
        if self.dead:
            await self._revive()
        self._check(sector, nbytes)
        pos = 0
        while pos < nbytes:
            s = sector + pos // SECTOR_SIZE
            lease = self._lease_at(s, False) or await self.lease(s, False)
            seg = lease.segment(s)
            n = min(nbytes - pos, (seg.end - s) * SECTOR_SIZE)
            if seg.kind == "map":
                off = seg.offset + (s - seg.start) * SECTOR_SIZE
                buf[pos:pos + n] = seg.media.view_mv[off:off + n]
            elif seg.kind == "zero":
                buf[pos:pos + n] = bytes(n)
            elif seg.kind == "bio":
                buf[pos:pos + n] = await self._bio("read", s, nbytes=n)
            else:
                raise OSError(errno.EIO, f"{self.name}: {'media error' if seg.kind == 'poison' else 'I/O error'}"
                                         f" at sector {s}")
            pos += n

    async def write(self, sector: int, data, *, fua: bool = False, preflush: bool = False) -> None:
        if self.read_only:
            raise OSError(errno.EROFS, f"{self.name}: opened read-only")
        nbytes = len(data)
        if self.dead:
            await self._revive()
        self._check(sector, nbytes)
        if preflush:
            await self.flush()
        # The common case, one mapped segment, is a single copy into the mapping.
        lease = self._lease_at(sector, True)
        if lease is not None:
            seg = lease.segment(sector)
            if seg.kind == "map" and (seg.end - sector) * SECTOR_SIZE >= nbytes:
                seg.media.write(seg.offset + (sector - seg.start) * SECTOR_SIZE, data, fua)
                return
        data = memoryview(data).cast("B")
        pos = 0
        while pos < nbytes:
            s = sector + pos // SECTOR_SIZE
            lease = self._lease_at(s, True) or await self.lease(s, True, -(-(nbytes - pos) // SECTOR_SIZE))
            seg = lease.segment(s)
            n = min(nbytes - pos, (seg.end - s) * SECTOR_SIZE)
            if seg.kind == "map":
                seg.media.write(seg.offset + (s - seg.start) * SECTOR_SIZE, data[pos:pos + n], fua)
            elif seg.kind in ("poison", "bio"):
                # dmemud carries these out itself: the driver clears poison on write (and we
                # get our lease revoked), and log-writes must see every write in order.
                await self._bio("write", s, bytes(data[pos:pos + n]), fua=fua)
            elif seg.kind != "zero":
                raise OSError(errno.EIO, f"{self.name}: I/O error at sector {s}")
            pos += n

    async def _bio(self, op: str, sector: int, data: bytes = b"", **args) -> bytes:
        try:
            _, out = await self.client.call_data("bio", data, handle=self.handle, bio=op,
                                                 sector=sector, **args)
        except DmemuError as e:
            raise e.as_oserror() from None
        return out

    async def flush(self) -> None:
        if self.dead:
            await self._revive()
        if self.dead:
            raise OSError(errno.EIO, f"{self.name}: {self.dead}")
        if self.bio_based:
            await self._bio("flush", 0)
            return
        for media in self._flush_set:
            media.flush()

    async def discard(self, sector: int, nr_sectors: int) -> None:
        if self.bio_based:
            self._check(sector, nr_sectors * SECTOR_SIZE)
            await self._bio("discard", sector, nbytes=nr_sectors * SECTOR_SIZE)
        else:
            await self.write(sector, bytes(nr_sectors * SECTOR_SIZE))

    # -- direct_access ---------------------------------------------------------------------

    async def direct_access(self, pgoff: int, nr_pages: int, *, write: bool,
                            nr_store: int | None = None) -> "DaxMapping":
        """Map pages of a DAX-capable device for loads (and stores, if ``write``).

        Like the kernel's dax_direct_access, the answer may cover fewer pages than asked
        for (up to the end of a contiguous, healthy stretch), and fails with EIO when the
        first page holds a media error. ``nr_store`` (default: all ``nr_pages``) is how
        many pages from ``pgoff`` the caller is about to store to: a snapshot origin copies
        their chunks first, in one batch, and maps further only over chunks already copied,
        so asking for a whole window never copies chunks nobody writes.
        """
        if not self.dax:
            raise OSError(errno.EOPNOTSUPP, f"{self.name} is not DAX-capable")
        if write and self.read_only:
            raise OSError(errno.EROFS, f"{self.name}: opened read-only")
        sector = pgoff * PAGE_SECTORS
        if self.dead:
            await self._revive()
        self._check(sector, nr_pages * PAGE_SIZE, bio=False)
        lease = await self.lease(sector, write,
                                 (nr_pages if nr_store is None else nr_store) * PAGE_SECTORS)
        seg = lease.segment(sector)
        if seg.kind != "map":
            raise OSError(errno.EIO, f"{self.name}: media error in page {pgoff}")
        avail = min(nr_pages, (seg.end - sector) // PAGE_SECTORS)
        if avail <= 0:
            raise OSError(errno.EIO, f"{self.name}: media error in page {pgoff}")
        return DaxMapping(self, lease, seg.media, seg.offset + (sector - seg.start) * SECTOR_SIZE,
                          pgoff, avail, write)

    async def unmounted(self) -> None:
        """Tell dmemud the filesystem on this device was unmounted: it stays open for its
        last commit, but commands such as lvchange -an treat it as open, not mounted."""
        try:
            await self.client.call("unmounted", handle=self.handle)
        except DmemuError:
            pass        # gone already: nothing to tell

    async def close(self) -> None:
        self.client._devices.pop(self.handle, None)
        self._kill("closed")
        self.lost = False
        if not self.client.closed:
            try:
                await self.client.call("close", handle=self.handle)
            except DmemuError:
                pass


class DaxMapping:
    """Pages of pmem mapped into this process: loads, stores, and flush to persistence.

    Every access checks that dmemud has not revoked the lease (a cheap attribute test), so a
    mapping taken back can never be written through; map again on RevokedError.
    """
    __slots__ = ("device", "lease", "media", "base", "pgoff", "nr_pages", "writable")

    def __init__(self, device, lease, media, base, pgoff, nr_pages, writable):
        self.device, self.lease, self.media, self.base = device, lease, media, base
        self.pgoff, self.nr_pages, self.writable = pgoff, nr_pages, writable

    @property
    def valid(self) -> bool:
        return self.lease.valid

    @property
    def length(self) -> int:
        return self.nr_pages * PAGE_SIZE

    def _at(self, off: int, n: int) -> int:
        if not self.lease.valid:
            raise RevokedError(self.device.name)
        if off < 0 or off + n > self.length:
            raise ValueError(f"offset {off}+{n} outside a {self.length}-byte mapping")
        return self.base + off

    def read(self, off: int, n: int) -> bytes:
        a = self._at(off, n)
        return self.media.view[a:a + n]

    def readinto(self, off: int, buf) -> None:
        a = self._at(off, len(buf))
        buf[:] = self.media.view[a:a + len(buf)]

    def write(self, off: int, data) -> None:
        if not self.writable:
            raise OSError(errno.EBADF, f"{self.device.name}: mapping is read-only")
        a = self._at(off, len(data))
        self.media.store(a, data)

    def flush(self, off: int, n: int) -> None:
        """clwb the range and fence: durable on return, also in adr mode."""
        a = self._at(off, n)
        self.media.flush_range(a, n)
