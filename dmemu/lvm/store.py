"""Finding PVs on dmemu's devices and reading and writing their labels and metadata.

Every command scans: each base device (pmem namespaces, disks) is read for a label in
sectors 0-3, then its MDA header and the committed metadata text. A VG is the copy with
the highest seqno among its PVs; which device holds which PV is decided by the label's
uuid, never by the device name the metadata remembers. Writes go through the client's bio
path with FUA: the new text first, then the MDA header pointing at it, on every PV, so a
crash leaves each PV with either the old or the new copy.
"""
import logging
import sys
from dataclasses import dataclass

from .errors import LvmError
from .label import LABEL_SCAN_SECTORS, PV_EXT_USED, SECTOR, PVHeader, calc_crc, uuid_dashed, uuid_nodash
from .mda import MDA_HEADER_SIZE, MDA_START, PE_START_SECTORS, MdaHeader, RawLocn, place_text, text_pieces
from .metadata import dump, parse
from .vg import VG

log = logging.getLogger(__name__)


@dataclass
class Disk:
    """A base device as dmemud lists it, and what the scan found on it."""
    name: str                   # /dev/pmem0
    devno: str
    size: int                   # bytes
    dax: bool
    header: PVHeader | None = None
    mda: MdaHeader | None = None
    vg: VG | None = None        # the VG as this PV's copy of the metadata describes it

    @property
    def pv_uuid(self) -> str:
        return uuid_dashed(self.header.uuid) if self.header else ""


def warn(msg: str) -> None:
    """A warning as lvm2 prints it (log_warn): on stderr, indented, the command goes on."""
    print(f"  {msg}", file=sys.stderr, flush=True)
    log.debug("%s", msg)


def data_start(d: Disk) -> int:
    """The first sector extents may use on ``d``: past its label and every metadata area."""
    end = LABEL_SCAN_SECTORS * SECTOR
    for off, size in d.header.metadata_areas:
        end = max(end, off + size)
    return -(-end // SECTOR)


def device_key(name: str) -> str:
    for prefix in ("/dev/mapper/", "/dev/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


class Store:
    def __init__(self, k):
        self.k = k
        self.disks: dict[str, Disk] = {}
        self.vgs: dict[str, VG] = {}

    async def scan(self) -> None:
        self.disks, self.vgs = {}, {}
        listing = (await self.k.call("list"))["devices"]
        for spec in listing:
            if not spec.get("enabled", True) or spec.get("chardev"):
                continue        # gone, or a device-dax character device: not a block device
            d = Disk("/dev/" + spec["blockdev"], spec["devno"], spec["size"], spec["dax"])
            self.disks[d.name] = d
            try:
                await self._read_pv(d)
            except OSError as e:      # a media error in the label area: not a usable PV
                log.warning("%s: cannot read label: %s", d.name, e)
        for d in self.disks.values():
            if d.vg is not None:
                why = self._check_data_areas(d.vg)
                if why:
                    self._bad_copy(d, why)
                    d.vg = None
        best: dict[str, VG] = {}
        for d in self.disks.values():
            if d.vg is not None and (d.vg.name not in best or d.vg.seqno > best[d.vg.name].seqno):
                best[d.vg.name] = d.vg
        for name, vg in best.items():
            for pv in vg.pvs.values():
                disk = self.disk_of_pv(pv.id)
                if disk is not None:
                    pv.device, pv.devno, pv.dax = disk.name, disk.devno, disk.dax
                    pv.data_start, pv.dev_sectors = data_start(disk), disk.size // SECTOR
            self.vgs[name] = vg

    def _bad_copy(self, d: Disk, why: str) -> None:
        """lvm2's words for a copy it skips; the reason on the next line, as -v would."""
        warn(f"WARNING: bad metadata text on {d.name} in mda1")
        warn(f"WARNING: {why}")
        d.vg = None

    def _check_data_areas(self, vg: VG) -> str:
        """Why this copy would place extents over a PV's label or metadata area, or past the
        end of its device (for the PVs found in this scan), or ''."""
        for pv in vg.pvs.values():
            disk = self.disk_of_pv(pv.id)
            if disk is None:
                continue
            first, sectors = data_start(disk), disk.size // SECTOR
            if pv.pe_start < first:
                return (f"PV {disk.name}: data area at sector {pv.pe_start} overlaps its label "
                        f"or metadata area (which end at sector {first})")
            if pv.pe_start + pv.pe_count * vg.extent_size > sectors:
                return (f"PV {disk.name}: {pv.pe_count} extents from sector {pv.pe_start} run past "
                        f"the end of the device ({sectors} sectors)")
        return ""

    async def _read_pv(self, d: Disk) -> None:
        dev = await self.k.open_device(d.name, read_only=True)
        try:
            head = await dev.read(0, LABEL_SCAN_SECTORS * SECTOR)
            for i in range(LABEL_SCAN_SECTORS):
                hdr = PVHeader.unpack(head[i * SECTOR:(i + 1) * SECTOR], i)
                if hdr:
                    d.header = hdr
                    break
            if d.header is None or not d.header.metadata_areas:
                return
            start, size = d.header.metadata_areas[0]
            if start % SECTOR or start < LABEL_SCAN_SECTORS * SECTOR or start + MDA_HEADER_SIZE > d.size:
                warn(f"WARNING: bad metadata area location {start} in the label of {d.name}")
                return
            d.mda = MdaHeader.unpack(await dev.read(start // SECTOR, MDA_HEADER_SIZE), start)
            if d.mda is None or not d.mda.locn.offset:
                return
            locn = d.mda.locn
            if (d.mda.size < 2 * MDA_HEADER_SIZE or start + d.mda.size > d.size
                    or not MDA_HEADER_SIZE <= locn.offset < d.mda.size
                    or not 0 < locn.size <= d.mda.size - MDA_HEADER_SIZE):
                warn(f"WARNING: bad metadata header on {d.name} in mda1")
                d.mda = None
                return
            text = b""
            for off, n in text_pieces(d.mda, locn):
                first = off // SECTOR
                data = await dev.read(first, (off - first * SECTOR) + n)
                text += data[off - first * SECTOR:]
            if calc_crc(text) != locn.checksum:
                warn(f"WARNING: invalid metadata text from {d.name} at {start + locn.offset}.")
                return
            try:
                d.vg = VG.from_tree(parse(text.rstrip(b"\0").decode()))
            except UnicodeDecodeError:
                self._bad_copy(d, "the text is not UTF-8")
            except LvmError as e:
                # A copy that passes its checksum but does not validate: another PV of the
                # VG may still hold a good one, so skip this copy rather than fail the scan.
                self._bad_copy(d, e.message)
        finally:
            await dev.close()

    # -- lookups ---------------------------------------------------------------------------

    def disk_of_pv(self, pv_id: str) -> Disk | None:
        raw = uuid_nodash(pv_id)
        return next((d for d in self.disks.values() if d.header and d.header.uuid == raw), None)

    def disk(self, name: str) -> Disk:
        """A device as the user named it: /dev/pmem0 or pmem0."""
        d = self.disks.get("/dev/" + device_key(name))
        if d is None:
            raise LvmError(f"No device found for {name}.")
        return d

    def vg_of_disk(self, d: Disk) -> VG | None:
        if d.header is None:
            return None
        uuid = uuid_dashed(d.header.uuid)
        return next((vg for vg in self.vgs.values() if any(p.id == uuid for p in vg.pvs.values())), None)

    def vg(self, name: str) -> VG:
        vg = self.vgs.get(name)
        if vg is None:
            raise LvmError(f'Volume group "{name}" not found')
        return vg

    # -- writes ----------------------------------------------------------------------------

    async def _write(self, name: str, writes) -> None:
        dev = await self.k.open_device(name)
        try:
            for off, data in writes:
                # Whole sectors: read-modify-write the edges of an unaligned piece.
                first, end = off // SECTOR, -(-(off + len(data)) // SECTOR)
                if off % SECTOR or len(data) % SECTOR:
                    buf = bytearray(await dev.read(first, (end - first) * SECTOR))
                    buf[off - first * SECTOR:off - first * SECTOR + len(data)] = data
                    data = bytes(buf)
                await dev.write(first, data, fua=True)
        finally:
            await dev.close()

    async def write_label(self, d: Disk, uuid: str, in_vg: bool) -> None:
        """pvcreate: wipe the first 4 KiB, then a label and an empty MDA."""
        mda_size = PE_START_SECTORS * SECTOR - MDA_START
        hdr = PVHeader(uuid_nodash(uuid), d.size, [(PE_START_SECTORS * SECTOR, 0)],
                       [(MDA_START, mda_size)], PV_EXT_USED if in_vg else 0)
        mda = MdaHeader(MDA_START, mda_size, RawLocn())
        sector0 = bytearray(4096)
        sector0[SECTOR:2 * SECTOR] = hdr.pack()
        await self._write(d.name, [(0, bytes(sector0)), (MDA_START, mda.pack())])
        d.header, d.mda, d.vg = hdr, mda, None

    async def set_in_use(self, d: Disk, in_vg: bool) -> None:
        """Flip PV_EXT_USED in the label, as LVM does when a PV joins or leaves a VG."""
        d.header.flags = PV_EXT_USED if in_vg else 0
        await self._write(d.name, [(SECTOR, d.header.pack())])

    async def wipe_label(self, d: Disk) -> None:
        await self._write(d.name, [(0, bytes(4096)), (MDA_START, bytes(MDA_HEADER_SIZE))])
        d.header = d.mda = d.vg = None

    async def zero(self, d: Disk, sector: int, nbytes: int) -> None:
        await self._write(d.name, [(sector * SECTOR, bytes(nbytes))])

    async def commit(self, vg: VG, *, bump: bool = True) -> None:
        """Write the VG's metadata to every PV it has, text first, then each MDA header."""
        if bump:
            vg.seqno += 1
        text = dump(vg.export()).encode() + b"\0"
        for pv in vg.pvs.values():
            d = self.disk_of_pv(pv.id)
            if d is None or d.mda is None:
                raise LvmError(f"Couldn't find device with uuid {pv.id}.")
            try:
                locn, writes = place_text(d.mda, text)
            except ValueError as e:
                raise LvmError(f"VG {vg.name} metadata on {d.name} exceeds the metadata area: {e}") from None
            hdr = MdaHeader(d.mda.start, d.mda.size, locn)
            await self._write(d.name, writes + [(hdr.start, hdr.pack())])
            d.mda, d.vg = hdr, vg
        self.vgs[vg.name] = vg

    async def release_pv(self, d: Disk) -> None:
        """vgreduce: a PV leaves its VG: not in use, and its metadata area emptied (the copy
        it holds would otherwise bring the old VG back at the next scan)."""
        d.header.flags = 0
        mda = MdaHeader(d.mda.start, d.mda.size, RawLocn())
        await self._write(d.name, [(SECTOR, d.header.pack()), (mda.start, mda.pack())])
        d.mda, d.vg = mda, None

    async def forget_vg(self, vg: VG) -> None:
        """vgremove: empty every MDA of the VG and mark its PVs unused again."""
        for pv in vg.pvs.values():
            d = self.disk_of_pv(pv.id)
            if d is None:
                continue
            d.header.flags = 0
            mda = MdaHeader(d.mda.start, d.mda.size, RawLocn())
            await self._write(d.name, [(SECTOR, d.header.pack()), (mda.start, mda.pack())])
            d.mda, d.vg = mda, None
        self.vgs.pop(vg.name, None)
