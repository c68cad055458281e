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
import os
import re

import trio

from ..blockdev import SECTOR_SIZE
from ..errors import DmemuError, busy, invalid, no_device
from ..names import check_user_name
from .cow import Origins
from .errors import DMError, TableError
from .leases import LeaseManager
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


# enum dm_queue_mode: what dm_table_determine_type decides for a table.
DM_TYPE_BIO_BASED = 1
DM_TYPE_DAX_BIO_BASED = 3


def table_type(table) -> int:
    return DM_TYPE_DAX_BIO_BASED if table.dax_capable else DM_TYPE_BIO_BASED


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
        self.type: int | None = None    # md->type, fixed by the first table load
        self.suspended = False      # the ioctl state: what `dmsetup info` reports
        self.event_nr = 0
        self.event = trio.Event()      # set at the next table event (dm_wait, dmsetup wait)
        self.removed = False
        self.lock = trio.Lock()     # load, suspend, resume, remove: one at a time
        self._resumed: trio.Event | None = None    # set while new I/O is held
        self.inflight = 0
        self._drained = None
        self.frozen: list = []      # holders frozen by the suspend in force, thawed at resume

    devno = property(lambda self: f"{DM_MAJOR}:{self.minor}")
    kname = property(lambda self: f"dm-{self.minor}")
    nr_sectors = property(lambda self: self.live.size if self.live else 0)
    dax_capable = property(lambda self: bool(self.live and self.live.dax_capable))

    # -- resolution ------------------------------------------------------------------------

    def block_io(self) -> None:
        """DMF_BLOCK_IO_FOR_SUSPEND: new resolutions wait until unblock_io."""
        if self._resumed is None:
            self._resumed = trio.Event()

    def unblock_io(self) -> None:
        held, self._resumed = self._resumed, None
        if held is not None:
            held.set()

    async def region(self, sector: int, write: bool, nr: int = 1) -> Region:
        """The region around ``sector`` as its live table maps it. A write resolution
        names the ``nr`` sectors about to be written, so targets that copy on write
        (snapshot-origin) copy every chunk of them in one batch."""
        while self._resumed is not None:
            await self._resumed.wait()
        if self.removed or self.live is None:
            raise DmemuError(errno.EIO, f"{self.name}: no table loaded")
        self.inflight += 1
        try:
            t = self.live.target_at(sector)
            off = sector - t.begin
            nr = max(1, min(nr, t.len - off))
            try:
                remap = await (t.remap_range(off, nr, write) if write and nr > 1
                               else t.remap(off, write))
            except DMError as e:
                raise DmemuError(e.errno, f"{self.name}: {e.message}") from None
            r = await self._lift(remap, t.begin, sector, write, nr)
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

    async def _lift(self, remap, begin, sector, write, nr):
        if remap.kind != "remap":
            r = flat(remap, begin)
        else:
            lower_sector = remap.lower_start + (sector - begin - remap.start)
            nr = min(nr, remap.start + remap.length - (sector - begin))
            lower = await remap.lower.region(lower_sector, write, nr)
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

    def read(self, sector: int, nbytes: int, *, view: bool = False) -> bytes:
        """The daemon's own read. With ``view``, a range that one target maps onto one
        device may come back as a view of the media rather than a copy: for a caller that
        writes it elsewhere at once (a chunk copied on write)."""
        pieces = list(self._pieces(sector, nbytes))
        if len(pieces) == 1:
            # One target remapping the whole range (a chunk run copied on write): the
            # lower device's answer is returned as it is, not copied again.
            t, off, _, n = pieces[0]
            r = t.remap_sync(off, False)
            if r.kind == "remap" and (r.start + r.length - off) * SECTOR_SIZE >= n:
                lower = r.lower_start + off - r.start
                return r.lower.read(lower, n, view=True) if view else r.lower.read(lower, n)
        out = bytearray()
        for t, off, pos, n in pieces:
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
        data = memoryview(data if isinstance(data, (bytes, memoryview)) else bytes(data))
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
    def __init__(self, kernel, leases: LeaseManager):
        self.kernel = kernel
        self.leases = leases
        self.devices: dict[str, MappedDevice] = {}
        self.origins = Origins(self)
        self.params = {"snapshot_dax": True}
        self.loading: MappedDevice | None = None

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

    def standing_on(self, bases) -> list[MappedDevice]:
        """Every mapped device whose live or inactive table reaches one of ``bases``, directly
        or through other mapped devices, holders before what they hold. Worked out before
        anything is torn down: once a device below has gone, nothing leads up from it."""
        bases = list(bases)
        found: list[MappedDevice] = []

        def reaches(md, seen) -> bool:
            if md in found:
                return True
            if id(md) in seen:
                return False
            seen.add(id(md))
            for t in (md.live, md.inactive):
                for d in (t.devices() if t is not None else []):
                    if d in bases or (isinstance(d, MappedDevice) and reaches(d, seen)):
                        return True
            return False
        changed = True
        while changed:
            changed = False
            for md in self.devices.values():
                if md not in found and reaches(md, set()):
                    found.append(md)
                    changed = True
        depth = {}

        def level(md) -> int:
            if id(md) not in depth:
                depth[id(md)] = 0
                below = [d for t in (md.live, md.inactive) if t is not None for d in t.devices()
                         if isinstance(d, MappedDevice)]
                depth[id(md)] = 1 + max((level(d) for d in below), default=0)
            return depth[id(md)]
        return sorted(found, key=level, reverse=True)

    def holders(self, dev) -> list[MappedDevice]:
        """Mapped devices whose live or inactive table uses ``dev``."""
        return [md for md in self.devices.values()
                if any(t is not None and dev in t.devices() for t in (md.live, md.inactive))]

    def open_count(self, md) -> int:
        return len(self.leases.users(md)) + len(self.holders(md))

    # -- revocation helpers ----------------------------------------------------------------

    async def revoke_reaching(self, dev, start: int, end: int, why: str, writes_only: bool = False,
                              through: list | None = None):
        """Revoke every lease that reaches the media under [start, end) of ``dev`` (only
        those resolved through one of the devices ``through``, when given)."""
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
            return ((lease.write or not writes_only)
                    and (through is None or any(lease.through(md) for md in through))
                    and any(lease.reaches(b, s, e) for b, s, e in ranges))
        return await self.leases.revoke(hit, why)

    async def reattach(self, dev) -> list[str]:
        """``dev`` came back after a removal (ndctl enable-namespace): every device whose
        live table still holds the removed one loads the same table again, so it maps the
        device as it is now (the devices stacked above see it through them). One that
        cannot is left as it was, failing its I/O, and said so in the log."""
        done = []
        for md in list(self.devices.values()):
            if md.live is None or md.removed:
                continue
            if not any(d is not dev and getattr(d, "removed", False) and d.name == dev.name
                       for d in md.live.devices()):
                continue
            try:
                await self.load(md.name, "\n".join(self.table_lines(md)))
                await self.resume(md.name)
            except DmemuError as e:
                log.error("%s: not reattached to %s: %s", md.name, dev.name, e.message)
                continue
            log.info("%s: reattached to %s", md.name, dev.name)
            done.append(md.name)
        return done

    def queue_work(self, fn, *args) -> bool:
        """Run a target's background work (a merge) as the kernel's workqueues do, in the
        daemon's background nursery; False while there is none (before it serves)."""
        nursery = getattr(self.kernel, "_background", None)
        if nursery is None:
            return False
        nursery.start_soon(fn, *args)
        return True

    def table_event(self, md: MappedDevice) -> None:
        md.event_nr += 1
        md.event.set()
        md.event = trio.Event()

    async def wait_event(self, md: MappedDevice, event_nr: int) -> int:
        """DM_DEV_WAIT: until the device's event counter passes event_nr (or it goes)."""
        while md.event_nr <= event_nr and not md.removed:
            await md.event.wait()
        return md.event_nr

    def kernel_log(self, subsystem: str, message: str) -> None:
        """A DMERR/DMWARN line: 'device-mapper: <DM_MSG_PREFIX>: <message>' in the kernel log."""
        self.kernel.printk(f"device-mapper: {subsystem}: {message}")

    # -- the ioctls ------------------------------------------------------------------------

    def _check_name(self, name: str, what: str = "name") -> None:
        if not name or "/" in name or len(name) >= DM_NAME_LEN or name in (".", ".."):
            raise invalid(f"invalid device {what} '{name}': up to {DM_NAME_LEN - 1} characters, no '/'")
        if not re.match(r"^[\x21-\x7e]+$", name):
            raise invalid(f"invalid device {what} '{name}': use printable characters, no spaces")
        check_user_name(name, f"device {what}")

    def create(self, name: str, uuid: str = "", read_only: bool = False) -> MappedDevice:
        self._check_name(name)
        if uuid and len(uuid) >= DM_UUID_LEN:
            raise invalid(f"uuid is longer than {DM_UUID_LEN - 1} characters")
        if uuid:
            # Lookups match uuids too: one that reads as a device name would shadow it.
            check_user_name(uuid, "device uuid")
            if self.find(uuid) or self.kernel.find_base(uuid):
                raise DmemuError(errno.EBUSY, f"uuid {uuid} is already the name of a device")
        if self.find(name) or self.kernel.find_base(name):
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
                try:
                    args = construct_line(line)
                    targets.append(TARGETS[line.target_name](self, line, args))
                except DMError as e:
                    # dm_table_add_target's DMERR, then table_load's
                    bare = e.message.removeprefix(f"line {line.lineno}: {line.text}: ")
                    self.kernel_log("table", f"{md.devno}: {bare} "
                                             f"(-{errno.errorcode.get(e.errno, 'EINVAL')})")
                    self.kernel_log("ioctl", "error adding target to table")
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

    async def load(self, name: str, text: str) -> MappedDevice:
        md = self.get(name)
        async with md.lock:
            if md.removed:
                raise no_device(f"{name}: no such device-mapper device")
            self._load(md, text)
        return md

    def _load(self, md: MappedDevice, text: str) -> None:
        try:
            table = self.build_table(md, text)
        except DMError as e:
            if self.linux and not isinstance(e, TableError):
                # the kernel's reason went to its log; the ioctl says only the errno
                raise self.linux_ioctl_error("reload", md, e.errno) from None
            raise DmemuError(e.errno, f"reload ioctl on {md.name} ({md.devno}) failed: {e.message}") from None
        if not table.devices():
            # As dm_table_determine_type: a table with no devices (error, zero) keeps the
            # DAX capability of the device, so `remove --force` works under a DAX user.
            if self.linux:
                table.inherited_dax = md.type == DM_TYPE_DAX_BIO_BASED
            elif md.live is not None:
                table.inherited_dax = md.live.dax_capable
        try:
            if self.linux:
                self._check_type(md, table)
            else:
                self._check_dax_change(md, table)
        except DmemuError:
            table.dtr()
            raise
        if md.type is None:
            md.type = table_type(table)     # dm_set_md_type at the initial table load
        if md.inactive is not None:
            md.inactive.dtr()
        md.inactive = table

    @property
    def linux(self) -> bool:
        return self.kernel.settings.linux

    def _check_type(self, md: MappedDevice, table: Table) -> None:
        """table_load: a device's type is fixed by its first table; only bio-based may
        become DAX bio-based later (is_valid_type). Use does not matter, history does."""
        new = table_type(table)
        if md.type is None or md.type == new or (md.type, new) == (DM_TYPE_BIO_BASED,
                                                                   DM_TYPE_DAX_BIO_BASED):
            return
        self.kernel_log("ioctl", f"can't change device type (old={md.type} vs new={new}) "
                                 f"after initial table load.")
        raise self.linux_ioctl_error("reload", md, errno.EINVAL)

    @staticmethod
    def linux_ioctl_error(op: str, md: MappedDevice, err: int) -> DmemuError:
        """What libdm prints for a failed ioctl on a named device (dmsetup's view)."""
        return DmemuError(err, f"device-mapper: {op} ioctl on {md.name}  failed: {os.strerror(err)}")

    def _check_dax_change(self, md: MappedDevice, table: Table) -> None:
        """A device in use must not change between DAX-capable and not (design.md 3)."""
        if md.live is None or md.live.dax_capable == table.dax_capable:
            return
        users = self.leases.users(md)
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

    async def clear(self, name: str) -> MappedDevice:
        md = self.get(name)
        async with md.lock:
            if md.inactive is not None:
                md.inactive.dtr()
                md.inactive = None
        return md

    # Suspend and resume, in the order of __dm_suspend and do_resume/__dm_resume. Every ioctl
    # that changes a device's state takes its lock (the kernel's suspend_lock), so a resume
    # racing a suspend waits for it instead of interleaving with its freeze.

    async def suspend(self, name: str, *, noflush: bool = False, nolockfs: bool = False) -> MappedDevice:
        md = self.get(name)
        async with md.lock:
            await self._suspend(md, noflush=noflush, lockfs=not nolockfs)
        return md

    async def _suspend(self, md: MappedDevice, *, noflush: bool, lockfs: bool) -> None:
        if md.suspended or md.removed:
            return
        # The ioctl state changes first: anyone asking from now on sees a suspended device.
        md.suspended = True
        targets = md.live.targets if md.live is not None else []
        for t in targets:
            t.presuspend()
        frozen = []
        try:
            # lock_fs: a noflush suspend (a device whose I/O must not wait, e.g. a mirror
            # leg that failed) does not freeze the filesystem, as in __dm_suspend.
            if lockfs and not noflush:
                frozen = await self._freeze(md)
            # Only now is new I/O held: the filesystem wrote its dirty data through the
            # device while freezing.
            md.block_io()
            await md.drain()
            failed = await self.leases.revoke(lambda lease: lease.through(md), f"{md.name} suspended")
            if failed:
                raise DmemuError(errno.ETIMEDOUT,
                                 f"suspend of {md.name} failed: "
                                 + ", ".join(f"pid {c.pid} ({c.prog})" for c in failed)
                                 + " did not drop its mappings in time; nothing was changed")
        except BaseException:
            md.unblock_io()
            md.suspended = False
            for t in targets:
                t.presuspend_undo()
            with trio.CancelScope(shield=True):
                await self.leases.thaw(frozen)
            raise
        if not noflush and md.live is not None:
            md.flush()
        for t in targets:
            t.postsuspend()
        md.frozen = frozen
        log.info("suspended %s", md.name)

    async def _freeze(self, md: MappedDevice) -> list:
        """lock_fs: ask the filesystem on top (the exclusive holder) to freeze."""
        holders = [h for h in self.leases.users(md) if h.exclusive]
        frozen, failed = await self.leases.freeze(holders)
        if failed:
            await self.leases.thaw(frozen)
            raise DmemuError(errno.ETIMEDOUT,
                             f"suspend of {md.name} failed: could not freeze the filesystem on it: "
                             + ", ".join(h.describe() for h in failed)
                             + " did not freeze in time; nothing was changed")
        return frozen

    async def resume(self, name: str) -> MappedDevice:
        md = self.get(name)
        async with md.lock:
            await self._resume(md)
        return md

    async def _resume(self, md: MappedDevice) -> None:
        old = None
        if md.inactive is not None:
            # do_resume: a device is suspended (and its filesystem frozen) before a swap
            await self._suspend(md, noflush=False, lockfs=True)
            old, md.live, md.inactive = md.live, md.inactive, None
        elif not md.suspended:
            return
        try:
            if md.live is not None:
                # dm_table_resume_targets: every preresume first; one refusing leaves the
                # device suspended with its new table, as in the kernel.
                for t in md.live.targets:
                    await t.preresume()
                for t in md.live.targets:
                    await t.resume()
        except DMError as e:
            raise DmemuError(e.errno, f"resume ioctl on {md.name} ({md.devno}) failed: "
                                      f"{e.message}; the device stays suspended") from None
        finally:
            # The old table goes only after the new one resumed: a snapshot being reloaded
            # hands its exceptions over in resume, from the old table's target.
            if old is not None:
                old.dtr()
                await self.leases.tell_users(md, self.kernel.device_info(md))
        md.suspended = False
        md.unblock_io()
        frozen, md.frozen = md.frozen, []
        await self.leases.thaw(frozen)
        log.info("resumed %s", md.name)

    async def remove(self, name: str, *, force: bool = False) -> None:
        md = self.get(name)
        async with md.lock:
            if md.removed:
                raise no_device(f"{name}: no such device-mapper device")
            users, holders = self.leases.users(md), self.holders(md)
            if users or holders:
                if not force:
                    who = ", ".join([h.describe() for h in users] + [f"{h.name} ({h.devno})" for h in holders])
                    raise busy(f"remove ioctl on {md.name} ({md.devno}) failed: device is in use "
                               f"(by {who}); unmount or remove those first, or use --force to "
                               f"replace its table with the error target")
                # --force: fail all I/O from now on; the device stays while it is open.
                self._load(md, f"0 {max(md.nr_sectors, 1)} error")
                await self._resume(md)
                if self.leases.users(md) or self.holders(md):
                    raise busy(f"{md.name} ({md.devno}): device is still open; its table now fails "
                               f"all I/O and it will go when closed")
            self._destroy(md)
        log.info("removed %s", md.name)

    def _destroy(self, md: MappedDevice) -> None:
        for t in (md.live, md.inactive):
            if t is not None:
                t.dtr()
        md.removed = True
        md.live = md.inactive = None
        md.suspended = False
        md.unblock_io()
        md.event.set()          # a dm_wait on it returns: the device went
        if self.devices.get(md.name) is md:
            del self.devices[md.name]

    async def discard(self, md: MappedDevice) -> None:
        """Tear a device down whatever uses it (a reboot, or the media under it failed)."""
        await self.leases.kill(self.leases.users(md), "device removed")
        await self.leases.revoke(lambda lease: lease.through(md), f"{md.name} removed")
        frozen, md.frozen = md.frozen, []
        self._destroy(md)
        await self.leases.thaw(frozen)

    def rename(self, name: str, new: str | None, uuid: str | None) -> MappedDevice:
        md = self.get(name)
        if uuid is not None:
            if md.uuid:
                raise invalid(f"{md.name} already has uuid {md.uuid}: a uuid can be set only once")
            if any(x.uuid == uuid for x in self.devices.values()):
                raise DmemuError(errno.EBUSY, f"a device with uuid {uuid} already exists")
            check_user_name(uuid, "device uuid")
            if self.find(uuid) or self.kernel.find_base(uuid):
                raise DmemuError(errno.EBUSY, f"uuid {uuid} is already the name of a device")
            md.uuid = uuid
            return md
        self._check_name(new, "name")
        if self.find(new) or self.kernel.find_base(new):
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
