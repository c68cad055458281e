"""The device-mapper core of dmemud: mapped devices, their tables, and the ioctls on them.

Mirrors drivers/md/dm.c, dm-table.c and dm-ioctl.c where it matters to users: a device has
a live and an inactive table slot; load fills the inactive one, resume swaps it in,
suspend holds new I/O, waits for what is in flight and (unless told otherwise) freezes the
filesystem on top and flushes. Because clients here load and store through leases instead
of sending each bio, suspend also revokes every lease that resolved through the device and
waits for the holders to acknowledge: after a suspend no stale mapping of the old table
can be used, which is what makes swapping in a snapshot-origin safe under a DAX mount.
"""
import bisect
import errno
import logging
import re

import trio

from ..blockdev import SECTOR_SIZE
from ..errors import DmemuError, busy, invalid, no_device
from .cow import Origins
from .errors import DMError
from .region import Region, flat, lift
from .table import format_table_line, parse_table
from .target_args import construct_line
from .targets import TARGETS

log = logging.getLogger(__name__)

DM_MAJOR = 253
DM_NAME_LEN = 128        # DM_NAME_LEN includes the terminating NUL
DM_UUID_LEN = 129
# Everything a table may be built from must resolve before the ioctl gives up on a holder.
FREEZE_TIMEOUT_ENV = "DMEMU_REVOKE_TIMEOUT"


class Table:
    def __init__(self, lines, targets):
        self.lines = lines
        self.targets = targets
        self.starts = [t.begin for t in targets]
        self.inherited_dax = None

    @property
    def size(self) -> int:
        return self.targets[-1].begin + self.targets[-1].len if self.targets else 0

    @property
    def dax_capable(self) -> bool:
        if self.inherited_dax is not None:
            return self.inherited_dax
        return bool(self.targets) and all(t.dax_capable() for t in self.targets)

    def target_at(self, sector: int):
        return self.targets[bisect.bisect_right(self.starts, sector) - 1]

    def devices(self) -> list:
        seen, out = set(), []
        for t in self.targets:
            for d in t.devices():
                if id(d) not in seen:
                    seen.add(id(d))
                    out.append(d)
        return out

    def dtr(self) -> None:
        for t in self.targets:
            t.dtr()


class MappedDevice:
    """A dm-N device: name, uuid, table slots, suspend state."""

    logical_block_size = SECTOR_SIZE
    kind = "dm"

    def __init__(self, dm, name: str, uuid: str, minor: int, read_only: bool):
        self.dm = dm
        self.name = name
        self.uuid = uuid
        self.minor = minor
        self.read_only = read_only
        self.live: Table | None = None
        self.inactive: Table | None = None
        self.suspended = False
        self.event_nr = 0
        self.event = trio.Event()      # set at the next table event (dm_wait, dmsetup wait)
        self.removed = False
        self._resumed = trio.Event()
        self._resumed.set()
        self.inflight = 0
        self._drained = None
        self.frozen: list = []      # holders frozen by the suspend in force, thawed at resume

    devno = property(lambda self: f"{DM_MAJOR}:{self.minor}")
    kname = property(lambda self: f"dm-{self.minor}")
    nr_sectors = property(lambda self: self.live.size if self.live else 0)
    dax_capable = property(lambda self: bool(self.live and self.live.dax_capable))

    # -- resolution ------------------------------------------------------------------------

    async def region(self, sector: int, write: bool) -> Region:
        while self.suspended:
            await self._resumed.wait()
        if self.removed or self.live is None:
            raise DmemuError(errno.EIO, f"{self.name}: no table loaded")
        self.inflight += 1
        try:
            t = self.live.target_at(sector)
            try:
                remap = await t.remap(sector - t.begin, write)
            except DMError as e:
                raise DmemuError(e.errno, f"{self.name}: {e.message}") from None
            r = await self._lift(remap, t.begin, sector, write, sync=False)
        finally:
            self.inflight -= 1
            if self.inflight == 0 and self._drained is not None:
                self._drained.set()
        return r

    def region_sync(self, sector: int, write: bool) -> Region:
        if self.live is None:
            raise DmemuError(errno.EIO, f"{self.name}: no table loaded")
        t = self.live.target_at(sector)
        remap = t.remap_sync(sector - t.begin, write)
        return self._lift_sync(remap, t.begin, sector, write)

    async def _lift(self, remap, begin, sector, write, sync):
        if remap.kind != "remap":
            r = flat(remap, begin)
        else:
            lower_sector = remap.lower_start + (sector - begin - remap.start)
            lower = await remap.lower.region(lower_sector, write)
            r = lift(lower, remap, begin, sector)
        r.path.append((self, r.start, r.end))
        return r

    def _lift_sync(self, remap, begin, sector, write):
        if remap.kind != "remap":
            r = flat(remap, begin)
        else:
            lower_sector = remap.lower_start + (sector - begin - remap.start)
            r = lift(remap.lower.region_sync(lower_sector, write), remap, begin, sector)
        r.path.append((self, r.start, r.end))
        return r

    async def drain(self) -> None:
        """Wait until no resolution is in flight (new ones wait while suspended)."""
        while self.inflight:
            self._drained = trio.Event()
            await self._drained.wait()
        self._drained = None

    # -- the daemon's own synchronous I/O (copy-on-write, exception store metadata, bios) ---

    def _pieces(self, sector: int, nbytes: int):
        """(target, target-relative sector, byte offset, byte count) over a range."""
        end = sector * SECTOR_SIZE + nbytes
        if sector < 0 or end > self.nr_sectors * SECTOR_SIZE:
            raise OSError(errno.EIO, f"{self.name}: access beyond end of device")
        pos = 0
        while pos < nbytes:
            s = sector + pos // SECTOR_SIZE
            t = self.live.target_at(s)
            n = min(nbytes - pos, (t.begin + t.len - s) * SECTOR_SIZE)
            yield t, s - t.begin, pos, n
            pos += n

    def read(self, sector: int, nbytes: int) -> bytes:
        out = bytearray()
        for t, off, pos, n in self._pieces(sector, nbytes):
            while n > 0:
                r = t.remap_sync(off, False)
                m = min(n, (r.start + r.length - off) * SECTOR_SIZE)
                if r.kind == "remap":
                    out += r.lower.read(r.lower_start + off - r.start, m)
                elif r.kind == "zero":
                    out += bytes(m)
                else:
                    raise OSError(errno.EIO, f"{self.name}: I/O error at sector {t.begin + off}")
                off, n = off + m // SECTOR_SIZE, n - m
        return bytes(out)

    def write(self, sector: int, data, *, fua: bool = False, preflush: bool = False) -> None:
        data = memoryview(bytes(data))
        if preflush:
            self.flush()
        for t, off, pos, n in self._pieces(sector, len(data)):
            if hasattr(t, "submit_write"):
                t.submit_write(off, data[pos:pos + n], fua, False)
                continue
            while n > 0:
                r = t.remap_sync(off, True)
                m = min(n, (r.start + r.length - off) * SECTOR_SIZE)
                if r.kind == "remap":
                    r.lower.write(r.lower_start + off - r.start, data[pos:pos + m], fua=fua)
                elif r.kind != "zero":
                    raise OSError(errno.EIO, f"{self.name}: I/O error at sector {t.begin + off}")
                off, pos, n = off + m // SECTOR_SIZE, pos + m, n - m

    def discard(self, sector: int, nr: int) -> None:
        for t, off, pos, n in self._pieces(sector, nr * SECTOR_SIZE):
            if hasattr(t, "submit_discard"):
                t.submit_discard(off, n // SECTOR_SIZE)
            else:
                self.write(t.begin + off, bytes(n))

    def flush(self) -> None:
        """An empty REQ_PREFLUSH: every target passes it down to all its devices."""
        if self.live is None:
            return
        for t in self.live.targets:
            if hasattr(t, "submit_flush"):
                t.submit_flush()
            else:
                for d in t.devices():
                    d.flush()

    @property
    def bio_based(self) -> bool:
        """Some target below must see every write and flush itself (log-writes)."""
        if self.live is None:
            return False
        return any(hasattr(t, "submit_write") or getattr(d, "bio_based", False)
                   for t in self.live.targets for d in t.devices())


class DeviceMapper:
    def __init__(self, kernel):
        self.kernel = kernel
        self.devices: dict[str, MappedDevice] = {}
        self.origins = Origins(self)
        self.params = {"snapshot_dax": True}
        self.loading: MappedDevice | None = None
        self._nursery = None

    # -- lookups ---------------------------------------------------------------------------

    def find(self, ident: str) -> MappedDevice | None:
        parts = ident.split("/")
        if len(parts) == 4 and parts[:2] == ["", "dev"] and parts[2] != "mapper":
            # /dev/VG/LV, as udev links LVM's volumes: the DM name doubles '-' in each part
            ident = parts[2].replace("-", "--") + "-" + parts[3].replace("-", "--")
        key = ident
        for prefix in ("/dev/mapper/", "/dev/"):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        if key in self.devices:
            return self.devices[key]
        for md in self.devices.values():
            if key in (md.kname, md.devno) or (md.uuid and key == md.uuid):
                return md
        return None

    def get(self, name: str) -> MappedDevice:
        md = self.find(name)
        if md is None:
            raise no_device(f"{name}: no such device-mapper device")
        return md

    def get_device(self, ident: str, line):
        """dm_get_device: a table argument (maj:min, /dev/NAME, a name) to a device."""
        try:
            dev = self.kernel.lookup_any(ident)
        except DmemuError:
            raise DMError(errno.ENODEV, f"line {line.lineno}: {line.text}: "
                                        f"{line.target_name}: Device lookup failed: "
                                        f"{ident}: no such device") from None
        if dev is self.loading:
            raise DMError(errno.EINVAL, f"line {line.lineno}: {line.text}: a table cannot map "
                                        f"its own device {ident}")
        if getattr(dev, "chardev", False):
            # dm_get_device looks up a block device: a device-dax character device is none.
            raise DMError(errno.ENOTBLK, f"line {line.lineno}: {line.text}: Device lookup "
                                         f"failed: {ident} is a device-dax character device, "
                                         f"not a block device")
        return dev

    def describe(self, dev) -> str:
        """A device and what it stands on, for messages: 'vg0-snap0-cow (253:2, on disk0)'."""
        if isinstance(dev, MappedDevice):
            bases = ", ".join(b.name for b in self.base_devices(dev)) or "nothing"
            return f"{dev.name} ({dev.devno}, on {bases})"
        return f"{dev.name} ({dev.devno})"

    def base_devices(self, dev) -> list:
        if not isinstance(dev, MappedDevice):
            return [dev]
        out = []
        if dev.live:
            for d in dev.live.devices():
                for b in self.base_devices(d):
                    if b not in out:
                        out.append(b)
        return out

    def holders(self, dev) -> list[MappedDevice]:
        """Mapped devices whose live or inactive table uses ``dev``."""
        return [md for md in self.devices.values()
                if any(t is not None and dev in t.devices() for t in (md.live, md.inactive))]

    def open_count(self, md) -> int:
        return len(self.kernel.users(md)) + len(self.holders(md))

    # -- revocation helpers ----------------------------------------------------------------

    async def revoke_reaching(self, dev, start: int, end: int, why: str, writes_only: bool = False):
        """Revoke every lease that reaches the media under [start, end) of ``dev``."""
        ranges = []
        if isinstance(dev, MappedDevice):
            pos = start
            while pos < end:
                r = dev.region_sync(pos, False) if dev.live else None
                if r is None:
                    break
                ranges += [(b, max(s, 0), e) for b, s, e in
                           Region(r.start, r.end, [x for x in (sg.shifted(0, pos, end) for sg in r.segs) if x]).backing()]
                pos = r.end
        else:
            ranges = [(dev, start, end)]
        if not ranges:
            return []

        def hit(lease):
            return (lease.write or not writes_only) and any(lease.reaches(b, s, e) for b, s, e in ranges)
        return await self.kernel.revoke(hit, why)

    def spawn_revoke(self, predicate, why: str) -> None:
        """Revoke from synchronous code (an invalidation found mid-copy)."""
        if self._nursery is not None:
            self._nursery.start_soon(self.kernel.revoke, predicate, why)

    def table_event(self, md: MappedDevice) -> None:
        md.event_nr += 1
        md.event.set()
        md.event = trio.Event()

    async def wait_event(self, md: MappedDevice, event_nr: int) -> int:
        """DM_DEV_WAIT: until the device's event counter passes event_nr (or it goes)."""
        while md.event_nr <= event_nr and not md.removed:
            await md.event.wait()
        return md.event_nr

    def log_event(self, message: str) -> None:
        log.warning("device-mapper: %s", message)

    # -- the ioctls ------------------------------------------------------------------------

    def _check_name(self, name: str, what: str = "name") -> None:
        if not name or "/" in name or len(name) >= DM_NAME_LEN or name in (".", ".."):
            raise invalid(f"invalid device {what} '{name}': up to {DM_NAME_LEN - 1} characters, no '/'")
        if not re.match(r"^[\x21-\x7e]+$", name):
            raise invalid(f"invalid device {what} '{name}': use printable characters, no spaces")

    def create(self, name: str, uuid: str = "", read_only: bool = False) -> MappedDevice:
        self._check_name(name)
        if uuid and len(uuid) >= DM_UUID_LEN:
            raise invalid(f"uuid is longer than {DM_UUID_LEN - 1} characters")
        if name in self.devices or self.kernel.find_base(name):
            raise DmemuError(errno.EBUSY, f"device {name} already exists")
        if uuid and any(md.uuid == uuid for md in self.devices.values()):
            raise DmemuError(errno.EBUSY, f"a device with uuid {uuid} already exists")
        used = {md.minor for md in self.devices.values()}
        minor = next(i for i in range(len(used) + 1) if i not in used)
        md = MappedDevice(self, name, uuid, minor, read_only)
        self.devices[name] = md
        log.info("created %s (%s)", name, md.devno)
        return md

    def build_table(self, md: MappedDevice, text: str) -> Table:
        lines = parse_table(text, frozenset(TARGETS))
        if not lines:
            raise invalid(f"{md.name}: empty table: give at least one line "
                          f"'<start> <length> <target> <args>'")
        targets = []
        self.loading = md
        try:
            for line in lines:
                args = construct_line(line)
                try:
                    targets.append(TARGETS[line.target_name](self, line, args))
                except DMError as e:
                    msg = e.message
                    if not msg.startswith("line "):
                        msg = f"line {line.lineno}: {line.text}: {msg}"
                    raise DMError(e.errno, msg) from None
        except BaseException:
            for t in targets:
                t.dtr()
            raise
        finally:
            self.loading = None
        return Table(lines, targets)

    def load(self, name: str, text: str) -> MappedDevice:
        md = self.get(name)
        try:
            table = self.build_table(md, text)
        except DMError as e:
            raise DmemuError(e.errno, f"reload ioctl on {md.name} ({md.devno}) failed: {e.message}") from None
        if not table.devices() and md.live is not None:
            # As dm_table_determine_type: a table with no devices (error, zero) keeps the
            # DAX capability of the live one, so `remove --force` works under a DAX user.
            table.inherited_dax = md.live.dax_capable
        try:
            self._check_dax_change(md, table)
        except DmemuError:
            table.dtr()
            raise
        if md.inactive is not None:
            md.inactive.dtr()
        md.inactive = table
        return md

    def _check_dax_change(self, md: MappedDevice, table: Table) -> None:
        """A device in use must not change between DAX-capable and not (design.md 3)."""
        if md.live is None or md.live.dax_capable == table.dax_capable:
            return
        users = self.kernel.users(md)
        holders = [h for h in self.holders(md)]
        if not users and not holders:
            return
        who = ", ".join([h.describe() for h in users] + [f"{h.name} ({h.devno})" for h in holders])
        old = "DAX-capable" if md.live.dax_capable else "not DAX-capable"
        new = "DAX-capable" if table.dax_capable else "not DAX-capable"
        raise DmemuError(errno.EINVAL,
                         f"reload ioctl on {md.name} ({md.devno}) refused: the device is in use "
                         f"(by {who}) and is {old}, but the new table is {new} "
                         f"({self.explain_dax(table)}); a device cannot change DAX capability "
                         f"under its users: unmount or close it first, or build the new table "
                         f"from {'DAX-capable' if md.live.dax_capable else 'non-DAX'} devices")

    def explain_dax(self, table: Table) -> str:
        reasons = []
        for t in table.targets:
            if not t.direct_access:
                why = "does not support direct access"
                if t.name in ("snapshot", "snapshot-origin"):
                    why += " (snapshot_dax is off)"
                reasons.append(f"{t.name} on line {t.line.lineno} {why}")
            for d in t.devices():
                if not d.dax_capable:
                    reasons.append(f"{self.describe(d)} is not DAX-capable")
        if not reasons:
            devs = ", ".join(self.describe(d) for d in table.devices())
            return f"every target supports direct access and {devs} are DAX-capable"
        return "; ".join(dict.fromkeys(reasons))

    def clear(self, name: str) -> MappedDevice:
        md = self.get(name)
        if md.inactive is not None:
            md.inactive.dtr()
            md.inactive = None
        return md

    async def suspend(self, name: str, *, noflush: bool = False, nolockfs: bool = False) -> MappedDevice:
        md = self.get(name)
        if md.suspended:
            return md
        frozen = []
        if not nolockfs:
            frozen = await self._freeze(md)
        md.suspended = True
        md._resumed = trio.Event()
        await md.drain()
        failed = await self.kernel.revoke(lambda lease: lease.through(md), f"{md.name} suspended")
        if failed:
            md.suspended = False
            md._resumed.set()
            await self._thaw(md, frozen)
            raise DmemuError(errno.ETIMEDOUT,
                             f"suspend of {md.name} failed: "
                             + ", ".join(f"pid {c.pid} ({c.prog})" for c in failed)
                             + " did not drop its mappings in time; nothing was changed")
        if not noflush and md.live is not None:
            md.flush()
        if md.live is not None:
            for t in md.live.targets:
                t.postsuspend()
        md.frozen = frozen
        log.info("suspended %s", md.name)
        return md

    async def _freeze(self, md: MappedDevice) -> list:
        """lock_fs: ask the filesystem on top (the exclusive holder) to freeze."""
        holders = [h for h in self.kernel.users(md) if h.exclusive]
        frozen, failed = [], []

        async def one(h):
            if await h.conn.event("freeze", timeout=self.kernel.revoke_timeout(), handle=h.id):
                frozen.append(h)
            else:
                failed.append(h)
        async with trio.open_nursery() as n:
            for h in holders:
                n.start_soon(one, h)
        if failed:
            await self._thaw(md, frozen)
            raise DmemuError(errno.ETIMEDOUT,
                             f"suspend of {md.name} failed: could not freeze the filesystem on it: "
                             + ", ".join(h.describe() for h in failed)
                             + " did not answer; nothing was changed")
        return frozen

    async def _thaw(self, md, handles) -> None:
        async with trio.open_nursery() as n:
            for h in handles:
                if not h.dead:
                    n.start_soon(lambda h=h: h.conn.event("thaw", timeout=self.kernel.revoke_timeout(),
                                                          handle=h.id))

    async def resume(self, name: str) -> MappedDevice:
        md = self.get(name)
        if md.inactive is not None:
            if not md.suspended:
                await self.suspend(name)
            new, old = md.inactive, md.live
            for t in new.targets:
                await t.preresume()
            md.live, md.inactive = new, None
            if old is not None:
                old.dtr()
            for t in new.targets:
                await t.resume()
            await self._tell_users(md)
        elif md.live is None and not md.suspended:
            return md
        was = md.suspended
        md.suspended = False
        md._resumed.set()
        if was:
            await self._thaw(md, md.frozen)
            md.frozen = []
        log.info("resumed %s", md.name)
        return md

    async def _tell_users(self, md: MappedDevice) -> None:
        """The device's size, DAX capability or media changed with its table."""
        info = self.kernel.device_info(md)
        async with trio.open_nursery() as n:
            for h in self.kernel.users(md):
                n.start_soon(lambda h=h: h.conn.event("table", timeout=self.kernel.revoke_timeout(),
                                                      handle=h.id, **info))

    async def remove(self, name: str, *, force: bool = False) -> None:
        md = self.get(name)
        users, holders = self.kernel.users(md), self.holders(md)
        if users or holders:
            if not force:
                who = ", ".join([h.describe() for h in users] + [f"{h.name} ({h.devno})" for h in holders])
                raise busy(f"remove ioctl on {md.name} ({md.devno}) failed: device is in use "
                           f"(by {who}); unmount or remove those first, or use --force to "
                           f"replace its table with the error target")
            # --force: fail all I/O from now on; the device stays while it is open.
            self.load(name, f"0 {max(md.nr_sectors, 1)} error")
            await self.resume(name)
            if self.kernel.users(md) or self.holders(md):
                raise busy(f"{md.name} ({md.devno}): device is still open; its table now fails "
                           f"all I/O and it will go when closed")
        for t in (md.live, md.inactive):
            if t is not None:
                t.dtr()
        md.removed = True
        md.live = md.inactive = None
        md._resumed.set()
        md.event.set()
        del self.devices[md.name]
        log.info("removed %s", md.name)

    async def discard(self, md: MappedDevice) -> None:
        """Tear a device down whatever uses it (a reboot, or the media under it failed)."""
        await self.kernel.kill_handles(self.kernel.users(md), "device removed")
        await self.kernel.revoke(lambda lease: lease.through(md), f"{md.name} removed")
        for t in (md.live, md.inactive):
            if t is not None:
                t.dtr()
        md.removed = True
        md.live = md.inactive = None
        md.suspended = False
        md._resumed.set()
        self.devices.pop(md.name, None)

    def rename(self, name: str, new: str | None, uuid: str | None) -> MappedDevice:
        md = self.get(name)
        if uuid is not None:
            if md.uuid:
                raise invalid(f"{md.name} already has uuid {md.uuid}: a uuid can be set only once")
            if any(x.uuid == uuid for x in self.devices.values()):
                raise DmemuError(errno.EBUSY, f"a device with uuid {uuid} already exists")
            md.uuid = uuid
            return md
        self._check_name(new, "name")
        if new in self.devices or self.kernel.find_base(new):
            raise DmemuError(errno.EBUSY, f"device {new} already exists")
        del self.devices[md.name]
        md.name = new
        self.devices[new] = md
        return md

    def message(self, name: str, sector: int, words: list[str]) -> str:
        md = self.get(name)
        if md.live is None:
            raise invalid(f"{md.name}: no table loaded")
        try:
            return md.live.target_at(sector).message(words) or ""
        except DMError as e:
            raise DmemuError(e.errno, f"message ioctl on {md.name} ({md.devno}) failed: {e.message}") from None

    def table_lines(self, md: MappedDevice, inactive: bool = False, status: bool = False) -> list[str]:
        table = md.inactive if inactive else md.live
        if table is None:
            return []
        return [format_table_line(t.begin, t.len, t.name, t.status_text() if status else t.table_text())
                for t in table.targets]

    def info(self, md: MappedDevice) -> dict:
        return {"name": md.name, "uuid": md.uuid, "devno": md.devno, "minor": md.minor,
                "suspended": md.suspended, "read_only": md.read_only, "live": md.live is not None,
                "inactive": md.inactive is not None, "open_count": self.open_count(md),
                "event_nr": md.event_nr, "targets": len(md.live.targets) if md.live else 0,
                "size": md.nr_sectors, "dax": md.dax_capable,
                "deps": [d.devno for d in (md.live.devices() if md.live else [])],
                "dep_names": [d.name for d in (md.live.devices() if md.live else [])],
                "target_types": [t.name for t in md.live.targets] if md.live else []}
