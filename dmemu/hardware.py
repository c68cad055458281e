"""The emulated hardware: pmem namespaces and plain disks, and the registry that keeps them.

Namespaces and disks are hardware: they survive a restart of dmemud (a reboot), with their
media errors. The registry is one JSON file replaced atomically, so a crash in the middle of
a create or destroy leaves either the old or the new list, never half of one.
"""
import errno
import json
import logging
import os
import re
import uuid as uuidlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .blockdev import SECTOR_SIZE
from .btt import Btt, BttError
from .errors import DmemuError, io_error
from .media import Media

log = logging.getLogger(__name__)

PMEM_MAJOR = 259    # blkext: where Linux numbers pmem block devices
DISK_MAJOR = 7      # loop: a plain disk here is a file-backed block device, like a loop device
DAX_MAJOR = 252    # a device-dax character device (the dax class's dynamic major on most systems)
DAX_MODES = ("fsdax", "devdax")
# fsdax: a DAX-capable block device (pmemN); raw: a plain block device (pmemN);
# sector: a BTT block device with atomic sector updates, never DAX (pmemNs);
# devdax: a character device (dax0.N, in region0) that can only be mapped: no bios, no filesystem.
MODES = ("fsdax", "raw", "sector", "devdax")


def device_name(mode: str, minor: int) -> str:
    """The device a namespace in ``mode`` shows up as, named as the kernel names it."""
    return {"sector": f"pmem{minor}s", "devdax": f"dax0.{minor}"}.get(mode, f"pmem{minor}")


@dataclass
class BaseSpec:
    """One base device as the registry stores it."""
    kind: str                  # "pmem" or "disk"
    blockdev: str              # pmem0, disk0: the name users type (also as /dev/NAME)
    size: int                  # bytes
    minor: int
    uuid: str
    model: str                 # eadr, adr (pmem) or disk
    dev: str = ""              # namespace0.0 for pmem
    name: str = ""             # the namespace's optional label
    mode: str = "fsdax"        # one of MODES
    align: int = 0
    enabled: bool = True
    badblocks: list = field(default_factory=list)   # [[sector, count], ...], sorted, merged
    sector_size: int = SECTOR_SIZE     # a sector namespace's BTT sector size (512 or 4096)

    @property
    def devno(self) -> str:
        if self.kind == "pmem" and self.mode == "devdax":
            return f"{DAX_MAJOR}:{self.minor}"
        major = PMEM_MAJOR if self.kind == "pmem" else DISK_MAJOR
        return f"{major}:{self.minor}"

    @property
    def chardev(self) -> bool:
        """A device-dax character device: mmap only, no read/write, no block layer."""
        return self.kind == "pmem" and self.mode == "devdax"

    @property
    def dax_capable(self) -> bool:
        return self.kind == "pmem" and self.mode in DAX_MODES


class BaseDevice:
    """A live base device in dmemud: its spec, its mapped media and its media errors.

    Also the synchronous device interface the DM targets in the daemon use (read, write with
    fua/preflush, flush), with media errors failing reads as the pmem driver does.
    """

    def __init__(self, spec: BaseSpec, image_base: str, *, create: bool = False,
                 format_btt: bool = False):
        self.spec = spec
        self.media_spec = Media.spec_for(spec.model, image_base, spec.size)
        self.media = Media(self.media_spec, create=create)
        self.removed = False
        self._unheld = None         # a trio.Event while resolutions are held (trace start/stop)
        # sector mode: the BTT on the media, formatted when the namespace is made (or
        # reconfigured) and recovered at every start; damaged metadata makes every I/O
        # fail with the reason instead of stopping dmemud
        self.btt: Btt | None = None
        self.btt_error = ""
        if spec.kind == "pmem" and spec.mode == "sector":
            try:
                self.btt = (Btt.format(self.media, spec.size, spec.sector_size) if format_btt
                            else Btt.open(self.media, spec.size))
            except BttError as e:
                if format_btt:
                    self.media.close()
                    raise
                self.btt_error = (f"{spec.blockdev}: {e.message}: reconfigure the namespace "
                                  f"to format a new BTT (ndctl create-namespace -f -e {spec.dev} "
                                  f"-m sector), which loses its data")
                log.error("%s", self.btt_error)

    def set_trace(self, path: str | None) -> None:
        """Reopen the media with (or without) a persistence trace; callers hold the device."""
        spec = dict(self.media_spec)
        spec.pop("trace", None)
        if path:
            spec["trace"] = path
        self.media.close()
        self.media_spec = spec
        self.media = Media(spec)
        if self.btt is not None:
            self.btt.media = self.media

    name = property(lambda self: self.spec.blockdev)
    devno = property(lambda self: self.spec.devno)
    @property
    def nr_sectors(self) -> int:
        if self.spec.kind == "pmem" and self.spec.mode == "sector":
            # damaged metadata: the raw size, so I/O gets as far as the reason it fails
            return self.btt.nr_sectors if self.btt is not None else self.spec.size // SECTOR_SIZE
        return self.spec.size // SECTOR_SIZE

    @property
    def logical_block_size(self) -> int:
        return self.btt.lbasize if self.btt is not None else SECTOR_SIZE

    dax_capable = property(lambda self: self.spec.dax_capable)
    chardev = property(lambda self: self.spec.chardev)

    kind = property(lambda self: self.spec.kind)

    def region_sync(self, sector: int, write: bool):
        """The whole device as segments: mapped media, split around media errors."""
        from .dm.region import Region, Seg
        if self.removed:
            raise io_error(f"{self.name}: device removed")
        end, segs, pos = self.nr_sectors, [], 0
        if self.spec.kind == "pmem" and self.spec.mode == "sector":
            # every sector moves through the BTT: dmemud carries out each bio, nobody maps
            self._btt()
            return Region(0, end, [Seg(0, end, "bio")])
        for s, c in self.spec.badblocks:
            if s > pos:
                segs.append(Seg(pos, s, "map", self, pos))
            segs.append(Seg(s, s + c, "poison", self, s))
            pos = s + c
        if pos < end:
            segs.append(Seg(pos, end, "map", self, pos))
        return Region(0, end, segs)

    async def region(self, sector: int, write: bool, nr: int = 1):
        while self._unheld is not None:
            await self._unheld.wait()
        return self.region_sync(sector, write)

    def poisoned(self, sector: int, nr: int) -> list[tuple[int, int]]:
        """The media-error runs that intersect [sector, sector+nr)."""
        end = sector + nr
        return [(s, c) for s, c in self.spec.badblocks if s < end and s + c > sector]

    def read(self, sector: int, nbytes: int, *, view: bool = False) -> bytes:
        """With ``view``, a view of the media that changes with it rather than a copy, for
        a caller that copies it on at once (a chunk copied on write into a snapshot)."""
        if self.removed:
            raise io_error(f"{self.name}: device removed").as_oserror()
        if self.spec.mode == "sector" and self.spec.kind == "pmem":
            try:
                btt = self._btt()
                blocks = btt.read_blocks(sector, nbytes)
            except DmemuError as e:
                raise e.as_oserror() from None
            for lba, block in blocks:
                if self.poisoned(*btt.data_range(block)):
                    raise io_error(f"{self.name}: media error in sector "
                                   f"{lba * btt.lbasize // SECTOR_SIZE}").as_oserror()
            return btt.read(sector, nbytes)
        if self.poisoned(sector, -(-nbytes // SECTOR_SIZE)):
            raise io_error(f"{self.name}: media error in sectors {sector}+{nbytes // SECTOR_SIZE}").as_oserror()
        if view:
            return self.media.view_mv[sector * SECTOR_SIZE:sector * SECTOR_SIZE + nbytes]
        return self.media.read(sector * SECTOR_SIZE, nbytes)

    def write(self, sector: int, data, *, fua: bool = False, preflush: bool = False) -> None:
        """Callers that may write over media errors clear them (Kernel.clear_poison)."""
        if self.removed:
            raise io_error(f"{self.name}: device removed").as_oserror()
        if preflush:
            self.media.flush()
        if self.spec.mode == "sector" and self.spec.kind == "pmem":
            try:
                btt = self._btt()
                written = btt.write(sector, data)
            except DmemuError as e:
                raise e.as_oserror() from None
            for block in written:
                # written whole: poison under the block is gone, as the pmem driver clears it
                clear_badblocks(self.spec, *btt.data_range(block))
            return
        self.media.write(sector * SECTOR_SIZE, data, fua)

    def _btt(self) -> Btt:
        if self.btt is None:
            raise io_error(self.btt_error or f"{self.name}: no BTT")
        return self.btt

    def flush(self) -> None:
        self.media.flush()

    bio_based = False

    def close(self) -> None:
        self.media.close()


def merge_badblocks(runs: list) -> list:
    out: list[list[int]] = []
    for s, c in sorted(runs):
        if out and s <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], s + c - out[-1][0])
        else:
            out.append([s, c])
    return out


def clear_badblocks(spec: BaseSpec, sector: int, count: int) -> bool:
    """Forget media errors in [sector, sector+count), as a write over them clears poison."""
    end = sector + count
    out, changed = [], False
    for s, c in spec.badblocks:
        e = s + c
        if e <= sector or s >= end:
            out.append([s, c])
            continue
        changed = True
        if s < sector:
            out.append([s, sector - s])
        if e > end:
            out.append([end, e - end])
    spec.badblocks = out
    return changed


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_BLOCKDEV = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]{0,63}$")
_FIELDS = {f.name: f for f in fields(BaseSpec)}
MAX_DEVICE_SIZE = 1 << 50       # a petabyte of emulated media is beyond any host here


def spec_from_json(d) -> BaseSpec:
    """A registry entry checked field by field: the uuid names the image files, so it must
    be a plain uuid (never a path), and every number must be in range."""
    if not isinstance(d, dict):
        raise ValueError("not an object")
    unknown = set(d) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")

    def want(key, kind, ok=lambda v: True, why=""):
        v = d.get(key)
        if isinstance(v, bool) != (kind is bool) or not isinstance(v, kind) or not ok(v):
            raise ValueError(f"{key} {v!r} is invalid{': ' + why if why else ''}")
        return v

    kind = want("kind", str, lambda v: v in ("pmem", "disk"))
    want("blockdev", str, _BLOCKDEV.match)
    want("uuid", str, _UUID.match, "not a uuid")
    want("size", int, lambda v: 0 < v <= MAX_DEVICE_SIZE and v % SECTOR_SIZE == 0)
    want("minor", int, lambda v: 0 <= v < 1 << 20)
    want("model", str, lambda v: v in (("eadr", "adr") if kind == "pmem" else ("disk",)))
    if kind == "pmem":
        want("dev", str, re.compile(r"^namespace\d+\.\d+$").match)
    for key, k in (("name", str), ("mode", str), ("align", int), ("enabled", bool), ("badblocks", list)):
        if key in d:
            want(key, k)
    if "sector_size" in d:
        want("sector_size", int, lambda v: v in (512, 4096))
    if d.get("mode", "fsdax") not in MODES:
        raise ValueError(f"mode {d['mode']!r} is invalid")
    for run in d.get("badblocks", []):
        if (not isinstance(run, list) or len(run) != 2 or
                not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in run)
                or run[0] + run[1] > d["size"] // SECTOR_SIZE):
            raise ValueError(f"badblocks entry {run!r} is invalid")
    return BaseSpec(**d)


class Registry:
    """hardware.json: the list of base devices, written by replace-and-fsync."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rejected: list = []

    def load(self) -> list[BaseSpec]:
        """The devices; an entry that does not validate is left out with an error in the
        log (and kept in the file, for a person to mend), as the kernel skips a namespace
        whose label does not validate."""
        self.rejected = []
        if not self.path.exists():
            return []
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read(16 << 20).decode())
            entries = data["devices"]
            if not isinstance(entries, list):
                raise TypeError("devices is not a list")
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
            raise DmemuError(errno.EINVAL, f"{self.path} cannot be read ({e}); mend it or move it "
                                           f"aside (the devices it listed are then forgotten)") from None
        specs = []
        for i, d in enumerate(entries):
            try:
                spec = spec_from_json(d)
                if any(spec.blockdev == x.blockdev or spec.uuid == x.uuid or
                       (spec.kind, spec.minor) == (x.kind, x.minor) for x in specs):
                    raise ValueError(f"{spec.blockdev} duplicates an earlier device")
            except ValueError as e:
                log.error("%s: device %d left out: %s", self.path, i, e)
                self.rejected.append(d)
                continue
            specs.append(spec)
        return specs

    def save(self, specs: list[BaseSpec]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"version": 1, "devices": [asdict(s) for s in specs] + self.rejected}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def new_uuid() -> str:
    return str(uuidlib.uuid4())
