"""The emulated kernel inside dmemud: devices, opens, leases on their mappings, revocation.

A *handle* is one open of a device by one client connection (like a struct file on a block
device, with an optional exclusive claim). A *lease* is a resolution of a device range down
to the media that the client caches and loads and stores through by itself: the answer of
direct_access, and the way bios find their media without a round trip. dmemud remembers every
lease it hands out, so when the mapping underneath changes (media errors, removal, power
failure, and later table swaps and copy-on-write) it can ask each holder to drop it and wait
for the acknowledgement before the change takes effect.
"""
import collections
import errno
import logging
import os
import random
import re
import shutil
import time

import trio

from .blockdev import SECTOR_SIZE
from .errors import DmemuError, busy, invalid, no_device
from .dm.core import DeviceMapper, MappedDevice
from .dm.errors import DMError
from .dm.leases import LeaseManager
from .media import Media
from .hardware import (MODES, BaseDevice, BaseSpec, Registry, clear_badblocks, device_name,
                       merge_badblocks, new_uuid)
from .names import check_user_name
from .paths import StatePaths
from .profile import Settings
from .units import human

log = logging.getLogger(__name__)

DEFAULT_ALIGN = 2 << 20           # ndctl's default for fsdax namespaces
ALIGNMENTS = (4096, 2 << 20, 1 << 30)   # the x86-64 page sizes a namespace may be aligned to
DISK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]{0,63}$")
RESERVED_PREFIXES = ("pmem", "namespace", "dm-", "mapper", "region")


def revoke_timeout() -> float:
    """How long dmemud waits for a client to drop its mappings before giving up on it."""
    return float(os.environ.get("DMEMU_REVOKE_TIMEOUT", "10"))


class Lease:
    __slots__ = ("handle", "start", "end", "write", "backing", "path")

    def __init__(self, handle, start, end, write, backing, path=()):
        self.handle = handle
        self.start = start          # sectors of the handle's device
        self.end = end
        self.write = write
        self.backing = backing      # [(BaseDevice, first sector, end sector)] the lease reaches
        self.path = path            # [(MappedDevice, start, end)] it was resolved through

    def reaches(self, dev, start: int, end: int) -> bool:
        return any(b is dev and s < end and e > start for b, s, e in self.backing)

    def through(self, md) -> bool:
        return any(d is md for d, _, _ in self.path)

    def covers(self, md, start: int, end: int) -> bool:
        return any(d is md and s < end and e > start for d, s, e in self.path)


class Handle:
    def __init__(self, hid: int, conn, device, exclusive: bool, read_only: bool):
        self.id = hid
        self.conn = conn
        self.device = device
        self.exclusive = exclusive
        self.read_only = read_only
        self.leases: list[Lease] = []
        self.dead: str | None = None      # why every further I/O fails, once the device is gone
        # The filesystem holding it was unmounted and is writing its last commit: still
        # open, no longer a mount (as sysfs stops showing the mount at umount).
        self.unmounted = False

    def describe(self) -> str:
        return f"pid {self.conn.pid} ({self.conn.prog})"


# The kernel log ring (__LOG_BUF_LEN is a power of two of bytes; lines suffice here).
LOG_RING_LINES = 4096


class Kernel(LeaseManager):
    def __init__(self, paths: StatePaths):
        self.paths = paths
        self.booted = time.monotonic()
        self.log_ring: collections.deque = collections.deque(maxlen=LOG_RING_LINES)
        self._background = None
        self.registry = Registry(paths.registry)
        self.specs: list[BaseSpec] = self.registry.load()
        self.devices: dict[str, BaseDevice] = {}
        self.handles: dict[int, Handle] = {}
        self._next_handle = 1
        self.boot_lost: dict[str, int] = {}     # bytes each device lost when this boot rolled back
        self.settings = Settings(paths.settings)
        self.dm = DeviceMapper(self, self)
        self.dm.params = self.settings.params
        for spec in self.specs:
            if spec.enabled:
                try:
                    self.devices[spec.blockdev] = BaseDevice(spec, self._image_base(spec), create=True)
                except OSError as e:
                    # As a namespace whose media fails to probe: absent, the others serve on.
                    log.error("%s: its media cannot be opened (%s); the device stays absent until "
                              "the image files in %s are mended", spec.blockdev, e, self.paths.images)

    def _image_base(self, spec: BaseSpec) -> str:
        return str(self.paths.images / spec.uuid)

    def _save(self) -> None:
        self.registry.save(self.specs)

    # -- the kernel log (dmesg) ---------------------------------------------------------

    def printk(self, line: str) -> None:
        """One line of the kernel log, stamped with the seconds since boot as dmesg shows."""
        self.log_ring.append((time.monotonic() - self.booted, line))
        log.warning("%s", line)

    async def serve_background(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Work started from synchronous code (revocations found mid-copy) runs here."""
        async with trio.open_nursery() as nursery:
            self._background = nursery
            task_status.started()
            await trio.sleep_forever()

    # -- boot and shutdown ---------------------------------------------------------------

    def boot(self) -> None:
        """Coming up after a crash loses what was volatile; after a clean stop nothing."""
        clean = self.paths.clean_marker.exists()
        if not clean:
            for dev in self.devices.values():
                lost = dev.media.power_fail()
                self.boot_lost[dev.name] = lost     # clients reattaching must know
                if lost:
                    log.info("%s: %d bytes not durable at the last crash were lost", dev.name, lost)
        else:
            self.paths.clean_marker.unlink()

    def shutdown(self) -> None:
        for dev in self.devices.values():
            dev.media.writeback_all()
            dev.close()
        self.devices.clear()
        self.paths.clean_marker.write_text("dmemud stopped cleanly\n")

    # -- lookups ---------------------------------------------------------------------------

    def find_spec(self, ident: str, *, kind: str | None = None) -> BaseSpec:
        key = ident[5:] if ident.startswith("/dev/") else ident
        # Kernel names first: a label can never shadow a device's own name.
        for label in (False, True):
            for spec in self.specs:
                if kind and spec.kind != kind:
                    continue
                if (spec.name and key == spec.name) if label else key in (spec.blockdev, spec.dev):
                    return spec
        what = {"pmem": "namespace", "disk": "disk"}.get(kind or "", "device")
        raise no_device(f"{ident}: no such {what}")

    def find_base(self, name: str) -> BaseSpec | None:
        # Kernel names first: a label can never shadow a device's own name.
        return (next((s for s in self.specs if name in (s.blockdev, s.dev)), None)
                or next((s for s in self.specs if s.name and name == s.name), None))

    def lookup(self, ident: str):
        """Any device users may name: /dev/pmem0, namespace0.0, disk0, /dev/mapper/x, dm-3."""
        md = self.dm.find(ident)
        if md is not None:
            return md
        key = ident[5:] if ident.startswith("/dev/") else ident
        spec = next((s for s in self.specs if s.devno == key), None) or self.find_base(key)
        if spec is None:
            raise no_device(f"{ident}: no such device")
        dev = self.devices.get(spec.blockdev)
        if dev is None:
            raise no_device(f"{ident}: device is disabled (removed); enable it first")
        return dev

    lookup_any = lookup

    def users(self, dev) -> list[Handle]:
        return [h for h in self.handles.values() if h.device is dev and not h.dead]

    def users_through(self, base) -> list[Handle]:
        """Every live handle whose device is ``base`` or stands on it."""
        return [h for h in self.handles.values() if not h.dead and
                (h.device is base or (isinstance(h.device, MappedDevice)
                                      and base in self.dm.base_devices(h.device)))]

    @staticmethod
    def revoke_timeout() -> float:
        return revoke_timeout()

    # -- hardware --------------------------------------------------------------------------

    def _check_space(self, size: int, model: str) -> None:
        copies = 1 if model == "eadr" else 2
        free = shutil.disk_usage(self.paths.root).free
        if size * copies > free:
            raise DmemuError(errno.ENOSPC,
                             f"not enough space on the host for {human(size)} of {model} media "
                             f"({human(free)} free in {self.paths.root}); choose a smaller size")

    def _add(self, spec: BaseSpec) -> BaseDevice:
        self._check_space(spec.size, spec.model)
        try:
            dev = BaseDevice(spec, self._image_base(spec), create=True, format_btt=True)
        except DmemuError:          # e.g. too small for a BTT: leave no image behind
            self._remove_images(spec)
            raise
        self.specs.append(spec)
        try:
            self._save()
        except BaseException:
            self.specs.remove(spec)
            dev.close()
            self._remove_images(spec)
            raise
        self.devices[spec.blockdev] = dev
        log.info("created %s (%s, %d bytes, %s)", spec.blockdev, spec.kind, spec.size, spec.model)
        return dev

    def _remove_images(self, spec: BaseSpec) -> None:
        files = Media.spec_for(spec.model, self._image_base(spec), spec.size)
        for path in {files[k] for k in ("view", "media", "dirty") if files[k]}:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def create_namespace(self, size: int, align: int | None, mode: str, name: str,
                         persistence: str, sector_size: int | None = None) -> BaseSpec:
        align = DEFAULT_ALIGN if align is None else align
        self._check_mode(mode)
        sector_size = self._check_sector_size(mode, sector_size)
        if persistence not in ("eadr", "adr"):
            raise invalid(f"persistence '{persistence}' is unknown: use eadr or adr")
        if align not in ALIGNMENTS:
            raise invalid(f"align {human(align)} is not supported: use 4K, 2M or 1G")
        if size <= 0:
            raise invalid("size must be greater than zero")
        if size % align:
            up = -(-size // align) * align
            raise invalid(f"size {human(size)} is not a multiple of the alignment {human(align)}: "
                          f"use --size {human(up)} or a smaller --align")
        if name:
            check_user_name(name, "namespace name")
            if "/" in name or not name.isprintable() or len(name) > 63:
                raise invalid(f"invalid namespace name '{name}': up to 63 printable characters, no '/'")
            if any(s.name == name for s in self.specs):
                raise DmemuError(errno.EEXIST, f"a namespace named '{name}' already exists")
            if self.find_base(name) or self.dm.find(name):
                raise DmemuError(errno.EEXIST, f"a device named '{name}' already exists")
        used = {s.minor for s in self.specs if s.kind == "pmem"}
        idx = next(i for i in range(len(used) + 1) if i not in used)
        spec = BaseSpec(kind="pmem", blockdev=device_name(mode, idx), dev=f"namespace0.{idx}", size=size,
                        minor=idx, uuid=new_uuid(), model=persistence, name=name or "",
                        mode=mode, align=align, sector_size=sector_size)
        self._add(spec)
        return spec

    @staticmethod
    def _check_mode(mode: str) -> None:
        if mode not in MODES:
            raise invalid(f"mode '{mode}' is not supported: use fsdax (DAX-capable), raw (not "
                          f"DAX-capable), sector (atomic sectors, not DAX-capable) or devdax "
                          f"(a DAX character device)")

    @staticmethod
    def _check_sector_size(mode: str, sector_size: int | None) -> int:
        """ndctl -l: a sector namespace's BTT has 512 or 4096-byte sectors; the other modes
        address the pmem in 512-byte sectors only."""
        if sector_size is None:
            return SECTOR_SIZE
        if mode == "sector" and sector_size in (512, 4096):
            return sector_size
        if sector_size == SECTOR_SIZE:
            return sector_size
        raise invalid(f"sector size {sector_size} is not supported for mode {mode}: "
                      + ("use 512 or 4096" if mode == "sector"
                         else "only sector mode (a BTT) takes 4096; other modes use 512"))

    def reconfigure_namespace(self, ident: str, mode: str, force: bool, name: str | None,
                              sector_size: int | None = None) -> BaseSpec:
        """ndctl create-namespace -e: the same capacity (and contents) in another mode; an
        enabled namespace needs force, one in use is refused whatever."""
        spec = self.find_spec(ident, kind="pmem")
        self._check_mode(mode)
        sector_size = self._check_sector_size(mode, sector_size)
        if name is not None and name != spec.name:
            check_user_name(name, "namespace name")
            if any(s.name == name for s in self.specs):
                raise DmemuError(errno.EEXIST, f"a namespace named '{name}' already exists")
        if spec.enabled and not force:
            raise busy(f"{spec.dev} is active, specify --force for re-configuration")
        was_open = self._close_unused(spec)
        old = (spec.mode, spec.blockdev, spec.sector_size)
        spec.mode, spec.sector_size = mode, sector_size
        spec.blockdev = device_name(mode, spec.minor)
        try:
            # a BTT is formatted on the media now (the others keep the contents)
            dev = BaseDevice(spec, self._image_base(spec), create=True, format_btt=True)
        except DmemuError:
            spec.mode, spec.blockdev, spec.sector_size = old
            if was_open:
                self.devices[spec.blockdev] = BaseDevice(spec, self._image_base(spec))
            raise
        if name is not None:
            spec.name = name
        spec.enabled = True
        self._save()
        self.devices[spec.blockdev] = dev
        log.info("reconfigured %s as %s (%s)", spec.dev, mode, spec.blockdev)
        return spec

    def create_disk(self, size: int, name: str | None) -> BaseSpec:
        if size <= 0 or size % SECTOR_SIZE:
            raise invalid(f"disk size {size} is not a positive multiple of {SECTOR_SIZE} bytes")
        used = {s.minor for s in self.specs if s.kind == "disk"}
        idx = next(i for i in range(len(used) + 1) if i not in used)
        if name is None:
            taken = {s.blockdev for s in self.specs}
            name = next(f"disk{i}" for i in range(len(taken) + 1) if f"disk{i}" not in taken)
        # A disk's name is its kernel name (as sdb is): it may not take another kind's prefix,
        # and it starts with a letter, so it never reads as a number (names.py).
        if not DISK_NAME.match(name) or name.startswith(RESERVED_PREFIXES):
            raise invalid(f"invalid disk name '{name}': use letters, digits and _.+- "
                          f"(not starting with pmem, namespace, dm-, mapper or region)")
        if any(name in (s.blockdev, s.name, s.dev) for s in self.specs) or self.dm.find(name):
            raise DmemuError(errno.EEXIST, f"a device named '{name}' already exists")
        spec = BaseSpec(kind="disk", blockdev=name, size=size, minor=idx, uuid=new_uuid(),
                        model="disk", mode="raw")
        self._add(spec)
        return spec

    def _close_unused(self, spec) -> bool:
        """Close the base device of ``spec`` before it changes or goes, refusing while
        anything has it open or maps it; whether it was open."""
        dev = self.devices.get(spec.blockdev)
        if dev is None:
            return False
        users = [h.describe() for h in self.users(dev)]
        users += [f"{md.name} ({md.devno})" for md in self.dm.holders(dev)]
        if users:
            raise busy(f"{spec.dev or spec.blockdev} is busy: open by " + ", ".join(users)
                       + "; unmount or close it first")
        dev.close()
        del self.devices[spec.blockdev]
        return True

    def destroy(self, ident: str, kind: str) -> BaseSpec:
        spec = self.find_spec(ident, kind=kind)
        self._close_unused(spec)
        self.specs.remove(spec)
        self._save()
        self._remove_images(spec)
        log.info("destroyed %s", spec.blockdev)
        return spec

    # -- media errors ----------------------------------------------------------------------

    async def inject_error(self, ident: str, sector: int, count: int) -> BaseSpec:
        spec = self.find_spec(ident)
        nr = spec.size // SECTOR_SIZE
        if sector < 0 or count <= 0 or sector + count > nr:
            raise invalid(f"{spec.blockdev}: error range {sector}+{count} is outside the device "
                          f"(0..{nr - 1} sectors)")
        spec.badblocks = merge_badblocks(spec.badblocks + [[sector, count]])
        self._save()
        await self._revoke_device_range(spec, sector, count, "media error")
        return spec

    async def clear_error(self, ident: str, sector: int | None, count: int | None) -> BaseSpec:
        spec = self.find_spec(ident)
        if sector is None:
            sector, count = 0, spec.size // SECTOR_SIZE
        if clear_badblocks(spec, sector, count or 1):
            self._save()
            await self._revoke_device_range(spec, sector, count or 1, "media error cleared")
        return spec

    async def _revoke_device_range(self, spec: BaseSpec, sector: int, count: int, why: str) -> None:
        dev = self.devices.get(spec.blockdev)
        if dev is not None:
            await self.revoke(lambda lease: lease.reaches(dev, sector, sector + count), why)

    # -- opens and leases ------------------------------------------------------------------

    def open(self, conn, ident: str, exclusive: bool, read_only: bool) -> Handle:
        dev = self.lookup(ident)
        others = self.users(dev)
        if exclusive:
            holder = next((h for h in others if h.exclusive or not h.read_only), None)
            if holder:
                claim = "claimed" if holder.exclusive else "open for writing"
                raise busy(f"{dev.name} is {claim} by {holder.describe()}")
        elif not read_only:
            holder = next((h for h in others if h.exclusive), None)
            if holder:
                raise busy(f"{dev.name} is claimed by {holder.describe()} (mounted?); "
                           f"open it read-only or unmount it first")
        h = Handle(self._next_handle, conn, dev, exclusive, read_only)
        self._next_handle += 1
        self.handles[h.id] = h
        return h

    def device_info(self, dev) -> dict:
        bases = self.dm.base_devices(dev)
        return {"name": dev.name, "devno": dev.devno, "nr_sectors": dev.nr_sectors,
                "dax": dev.dax_capable, "bio_based": getattr(dev, "bio_based", False),
                "chardev": getattr(dev, "chardev", False),
                "flush_set": [b.name for b in bases],
                "backings": {b.name: b.media_spec for b in bases}}

    def info(self, h: Handle) -> dict:
        return {"handle": h.id, "read_only": h.read_only, "exclusive": h.exclusive,
                **self.device_info(h.device)}

    def handle(self, conn, hid: int) -> Handle:
        h = self.handles.get(hid)
        if h is None or h.conn is not conn:
            raise DmemuError(errno.EBADF, f"no open device handle {hid}")
        if h.dead:
            raise DmemuError(errno.EIO, f"{h.device.name}: {h.dead}")
        return h

    def close(self, h: Handle) -> None:
        h.leases.clear()
        self.handles.pop(h.id, None)

    async def resolve(self, h: Handle, sector: int, nr: int, write: bool) -> dict:
        """Where [sector, sector+nr) of the handle's device lives, as a lease on a range."""
        dev = h.device
        if write and (h.read_only or getattr(dev, "read_only", False)):
            raise DmemuError(errno.EROFS, f"{dev.name}: opened read-only")
        if sector < 0 or nr <= 0 or sector + nr > dev.nr_sectors:
            raise DmemuError(errno.EIO, f"{dev.name}: access beyond end of device "
                                        f"(sector {sector}+{nr}, size {dev.nr_sectors})")
        region = await dev.region(sector, write, nr)
        if h.dead:
            raise DmemuError(errno.EIO, f"{dev.name}: {h.dead}")
        segments, backings = [], {}
        for sg in region.segs:
            d = {"start": sg.start, "end": sg.end, "kind": sg.kind}
            if sg.kind == "map":
                d.update(backing=sg.base.name, offset=sg.base_sector * SECTOR_SIZE)
                backings[sg.base.name] = sg.base.media_spec
            segments.append(d)
        # The client lets a new lease replace whatever it overlaps; keep the same books here,
        # so the list stays as small as the client's cache and revocations scan only that.
        h.leases = [x for x in h.leases if x.end <= region.start or x.start >= region.end]
        h.leases.append(Lease(h, region.start, region.end, write, region.backing(), region.path))
        return {"start": region.start, "end": region.end, "write": write, "segments": segments,
                "backings": backings}

    async def bio(self, h: Handle, op: str, sector: int, data: bytes = b"", nbytes: int = 0,
                  fua: bool = False, preflush: bool = False):
        """A bio dmemud carries out itself: writes over media errors (which it clears, as the
        pmem driver does) and I/O to targets that must see every bio (log-writes).

        Returns (data read, base devices whose media errors changed).
        """
        dev = h.device
        if getattr(dev, "chardev", False):
            raise DmemuError(errno.EINVAL, f"{dev.name}: a device-dax character device takes no "
                                           f"read or write, only mappings (direct_access)")
        if op in ("write", "discard") and h.read_only:
            raise DmemuError(errno.EROFS, f"{dev.name}: opened read-only")
        n = (len(data) if op == "write" else nbytes) // SECTOR_SIZE
        if sector < 0 or sector + n > dev.nr_sectors:
            raise DmemuError(errno.EIO, f"{dev.name}: access beyond end of device")
        if op in ("write", "discard") and isinstance(dev, MappedDevice):
            # Resolve the range for writing first: copy-on-write happens there (with the
            # revocations it needs), so the synchronous write below finds every chunk copied.
            pos = sector
            while pos < sector + n:
                pos = (await dev.region(pos, True, sector + n - pos)).end
        bases = self.dm.base_devices(dev)
        before = {b.name: [list(x) for x in b.spec.badblocks] for b in bases}
        out = b""
        try:
            if op == "read":
                out = dev.read(sector, nbytes)
            elif op == "write":
                self._clearing_write(dev, sector, data, fua, preflush)
            elif op == "discard":
                if isinstance(dev, MappedDevice):
                    dev.discard(sector, n)
                else:
                    self._clearing_write(dev, sector, bytes(n * SECTOR_SIZE), False, False)
            elif op == "flush":
                dev.flush()
            else:
                raise DmemuError(errno.EINVAL, f"unknown bio operation '{op}'")
        except OSError as e:
            raise DmemuError(e.errno or errno.EIO, e.strerror or str(e)) from None
        except DMError as e:
            raise DmemuError(e.errno, f"{dev.name}: {e.message}") from None
        changed = [b for b in bases if b.spec.badblocks != before[b.name]]
        if changed:
            self._save()
        return out, changed

    def _clearing_write(self, dev, sector, data, fua, preflush) -> None:
        """Write, clearing media errors under the written sectors on the way down."""
        if isinstance(dev, MappedDevice):
            # Clear under every base range the write reaches, then write through the targets.
            pos, end = sector, sector + len(data) // SECTOR_SIZE
            while pos < end:
                r = dev.region_sync(pos, False) if not dev.bio_based else None
                if r is None:
                    break
                for sg in r.segs:
                    a, b = max(sg.start, pos), min(sg.end, end)
                    if a < b and sg.kind == "poison":
                        clear_badblocks(sg.base.spec, sg.base_sector + (a - sg.start), b - a)
                pos = min(r.end, end)
            dev.write(sector, data, fua=fua, preflush=preflush)
        else:
            dev.write(sector, data, fua=fua, preflush=preflush)
            if getattr(dev, "btt", None) is None:      # a BTT clears under what it wrote
                clear_badblocks(dev.spec, sector, len(data) // SECTOR_SIZE)

    async def revoke(self, predicate, why: str) -> list:
        """Ask every holder of a lease matching ``predicate`` to drop it; wait for them.

        Returns the connections that did not acknowledge in time (the caller decides whether
        that fails the operation, as for a suspend, or not, as for a removal).
        """
        by_handle: dict[Handle, list[Lease]] = {}
        for h in list(self.handles.values()):
            hit = [lease for lease in h.leases if predicate(lease)]
            if hit:
                by_handle[h] = hit
                h.leases = [lease for lease in h.leases if not predicate(lease)]
        if not by_handle:
            return []
        failed = []

        async def one(h: Handle, leases: list[Lease]) -> None:
            ranges = [[lease.start, lease.end] for lease in leases]
            ok = await h.conn.event("revoke", timeout=revoke_timeout(), handle=h.id,
                                    ranges=ranges, reason=why)
            if not ok:
                failed.append(h.conn)

        async with trio.open_nursery() as nursery:
            for h, leases in by_handle.items():
                nursery.start_soon(one, h, leases)
        return failed

    # -- the lease manager device-mapper sees (dmemu.dm.leases) ------------------------------

    def revoke_soon(self, predicate, why: str) -> None:
        if self._background is not None:
            self._background.start_soon(self.revoke, predicate, why)

    async def freeze(self, handles: list) -> tuple[list, list]:
        frozen, failed = [], []

        async def one(h):
            if await h.conn.event("freeze", timeout=revoke_timeout(), handle=h.id):
                frozen.append(h)
            else:
                failed.append(h)
        async with trio.open_nursery() as n:
            for h in handles:
                n.start_soon(one, h)
        return frozen, failed

    async def thaw(self, handles: list) -> None:
        async with trio.open_nursery() as n:
            for h in handles:
                if not h.dead:
                    n.start_soon(lambda h=h: h.conn.event("thaw", timeout=revoke_timeout(), handle=h.id))

    async def tell_users(self, dev, info: dict) -> None:
        async with trio.open_nursery() as n:
            for h in self.users(dev):
                n.start_soon(lambda h=h: h.conn.event("table", timeout=revoke_timeout(),
                                                      handle=h.id, **info))

    async def kill(self, handles: list, reason: str) -> None:
        await self.kill_handles(handles, reason)

    async def kill_handles(self, handles: list[Handle], reason: str) -> list:
        """The device under these handles is gone: every later I/O through them fails."""
        failed = []
        for h in handles:
            h.dead = reason
            h.leases.clear()

        async def one(h: Handle) -> None:
            if not await h.conn.event("gone", timeout=revoke_timeout(), handle=h.id, reason=reason):
                failed.append(h.conn)

        async with trio.open_nursery() as nursery:
            for h in handles:
                nursery.start_soon(one, h)
        return failed

    # -- persistence traces (crash points at every fence) -----------------------------------

    def _trace_paths(self, dev) -> tuple[str, str]:
        d = self.paths.root / "traces"
        d.mkdir(exist_ok=True, mode=0o700)
        return str(d / f"{dev.name}.base"), str(d / f"{dev.name}.trace")

    async def _quiesced(self, dev, why: str, change) -> None:
        """Hold new resolutions of ``dev``, take back every mapping of it, then ``change()``."""
        dev._unheld = trio.Event()
        try:
            failed = await self.revoke(lambda lease: lease.reaches(dev, 0, dev.nr_sectors), why)
            if failed:
                raise DmemuError(errno.ETIMEDOUT, f"{dev.name}: " + ", ".join(
                    f"pid {c.pid} ({c.prog})" for c in failed) + " did not drop its mappings; "
                    "nothing was changed")
            change()
        finally:
            held, dev._unheld = dev._unheld, None
            held.set()
        await self.refresh_users(dev)

    async def refresh_users(self, base) -> None:
        """Tell every user standing on ``base`` its media changed (new files to map)."""
        for h in self.users_through(base):
            await h.conn.event("table", timeout=revoke_timeout(), handle=h.id,
                               **self.device_info(h.device))

    async def trace_start(self, ident: str) -> dict:
        dev = self.lookup(ident)
        if isinstance(dev, MappedDevice) or dev.spec.model != "adr":
            raise invalid(f"{dev.name}: persistence traces need an adr namespace (with eadr every "
                          f"store is durable when it lands: there are no fences to stop at)")
        if dev.media_spec.get("trace"):
            raise busy(f"{dev.name}: already tracing to {dev.media_spec['trace']}")
        base, trace = self._trace_paths(dev)

        def start():
            from .persist_trace import copy_sparse
            copy_sparse(dev.media_spec["media"], base)
            open(trace, "wb").close()
            dev.set_trace(trace)
        await self._quiesced(dev, "persistence trace started", start)
        return {"base": base, "trace": trace}

    async def trace_stop(self, ident: str) -> dict:
        dev = self.lookup(ident)
        trace = dev.media_spec.get("trace") if not isinstance(dev, MappedDevice) else None
        if not trace:
            raise invalid(f"{dev.name}: not tracing")
        base, _ = self._trace_paths(dev)
        await self._quiesced(dev, "persistence trace stopped", lambda: dev.set_trace(None))
        return {"base": base, "trace": trace}

    # -- removal, power failure ------------------------------------------------------------

    async def disable(self, ident: str) -> BaseSpec:
        """Hot removal: the device disappears under its users, who get errors from now on."""
        spec = self.find_spec(ident)
        dev = self.devices.pop(spec.blockdev, None)
        spec.enabled = False
        self._save()
        if dev is not None:
            dev.removed = True
            await self.kill_handles(self.users_through(dev), "device removed")
            await self.revoke(lambda lease: lease.reaches(dev, 0, dev.nr_sectors), "device removed")
            dev.close()
            log.info("%s removed", spec.blockdev)
        return spec

    async def enable(self, ident: str) -> BaseSpec:
        spec = self.find_spec(ident)
        if not spec.enabled:
            spec.enabled = True
            dev = self.devices[spec.blockdev] = BaseDevice(spec, self._image_base(spec), create=True)
            self._save()
            if not self.settings.linux:
                # Linux leaves the tables over a removed device failing until they are
                # loaded again (lvchange --refresh, vgchange -an/-ay); here they follow it.
                await self.dm.reattach(dev)
        return spec

    async def power_fail(self, idents: list[str], tear: bool, seed: int | None) -> dict:
        """Power is cut: users lose their devices, volatile data is lost, devices come back."""
        devs = [self.lookup(i) for i in idents] if idents else list(self.devices.values())
        # What stood on the failed media was memory: mapped devices go, as at a reboot, and
        # so does everything stacked on them (a snapshot over the origin's -real device).
        doomed = self.dm.standing_on(devs)
        hit = {h.id: h for d in devs for h in self.users_through(d)}
        hit.update({h.id: h for md in doomed for h in self.users(md)})
        await self.kill_handles(list(hit.values()), "power failure")
        for md in doomed:
            await self.dm.discard(md)
        rng = random.Random(seed)
        lost = {}
        for dev in devs:
            lost[dev.name] = dev.media.power_fail(tear=tear, rng=rng)
            log.info("power failure on %s: %d bytes lost", dev.name, lost[dev.name])
        return lost
