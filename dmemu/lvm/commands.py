"""What each lvm command does, given its parsed options and a connection to dmemud.

Every command that changes metadata takes its locks, scans under them, checks everything it
can before the first write (so a refusal changes nothing), then changes device-mapper state
and commits metadata in the order that keeps a crash harmless: for a new snapshot the DM
devices first (the snapshot point is the origin's suspend), metadata last; a failure on the
way is undone step by step.
"""
import logging
import sys
import time

from ..errors import DmemuError
from . import activate as act
from . import merge
from .activate import Kernel, Transaction, dm_name, dm_uuid, linear_table
from .errors import EINVALID_CMD_LINE, LvmError
from .lock import GLOBAL, locked
from .names import parse_lv, parse_vg_or_lv
from .report import columns, render
from .store import Store
from .units import SECTOR, long_size, parse_extents, parse_size, report_size
from .vg import LV, PV, VG, Segment, check_lv_name, check_name, host, new_uuid

log = logging.getLogger(__name__)

DEFAULT_EXTENT = 8192           # sectors: 4 MiB, lvm2's DEFAULT_EXTENT_SIZE
DEFAULT_CHUNK = 8               # sectors: 4 KiB, lvm2's DEFAULT_SNAPSHOT_CHUNK
MIN_PV_SECTORS = 4096           # 2 MiB: lvm2 refuses smaller PVs
ZERO_BYTES = 4096               # lvcreate wipes the start of a new LV (and must, for a COW)


def say(msg: str) -> None:
    print(f"  {msg}", flush=True)


def warn(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def _dm_failure(e: DmemuError, what: str) -> LvmError:
    return LvmError(f"{e.message}\n  Failed to {what}. Nothing was changed.")


# -- PVs ---------------------------------------------------------------------------------------

async def _check_unused(k, disks) -> None:
    """A device a DM table maps or someone has open is not ours to relabel (LVM opens it
    O_EXCL and fails the same way)."""
    kern = Kernel(k)
    await kern.refresh()
    for d in disks:
        held = [m["name"] for m in kern.devs.values() if d.devno in m["deps"]]
        opened = [o for o in kern.opens if "/dev/" + o["device"].removeprefix("/dev/") == d.name]
        if held or opened:
            raise LvmError(f"Can't open {d.name} exclusively.  Mounted filesystem?")


async def pvcreate(k, args) -> None:
    async with locked(GLOBAL):
        st = Store(k)
        await st.scan()
        disks = []
        for name in args.devices:
            d = st.disk(name)
            vg = st.vg_of_disk(d)
            if vg is not None:
                raise LvmError(f'Can\'t initialize physical volume "{d.name}" of volume group '
                               f'"{vg.name}" without -ff')
            if d.size // SECTOR < MIN_PV_SECTORS:
                raise LvmError(f"Cannot use {d.name}: device is too small (< 2.00 MiB)")
            disks.append(d)
        await _check_unused(k, disks)
        for d in disks:
            await st.write_label(d, new_uuid(), in_vg=False)
            say(f'Physical volume "{d.name}" successfully created.')


async def pvremove(k, args) -> None:
    async with locked(GLOBAL):
        st = Store(k)
        await st.scan()
        disks = []
        for name in args.devices:
            d = st.disk(name)
            if d.header is None:
                raise LvmError(f"No PV found on device {d.name}.")
            vg = st.vg_of_disk(d)
            if vg is not None:
                raise LvmError(f"PV {d.name} is used by VG {vg.name} so please use vgreduce first.")
            disks.append(d)
        await _check_unused(k, disks)
        for d in disks:
            await st.wipe_label(d)
            say(f'Labels on physical volume "{d.name}" successfully wiped.')


# -- VGs ---------------------------------------------------------------------------------------

def _extent_size(text: str | None) -> int:
    if text is None:
        return DEFAULT_EXTENT
    _, nbytes = parse_size(text, "m", option="-s")
    sectors = nbytes // SECTOR
    if nbytes % SECTOR or sectors < 2 or sectors & (sectors - 1):
        raise LvmError("Physical extent size must be a power of 2 of at least 1.00 KiB.",
                       EINVALID_CMD_LINE)
    return sectors


async def vgcreate(k, args) -> None:
    try:
        check_name(args.vg, "Volume group")
    except LvmError as e:
        raise LvmError(f'{e.message}\n  New volume group name "{args.vg}" is invalid.', e.code)
    extent = _extent_size(args.physicalextentsize)
    async with locked(GLOBAL, args.vg):
        st = Store(k)
        await st.scan()
        if args.vg in st.vgs:
            raise LvmError(f"A volume group called {args.vg} already exists.")
        disks = []
        for name in args.devices:
            d = st.disk(name)
            if d in disks:
                raise LvmError(f"Device {d.name} is named more than once.")
            other = st.vg_of_disk(d)
            if other is not None:
                raise LvmError(f"Physical volume '{d.name}' is already in volume group '{other.name}'")
            if (d.size // SECTOR - 2048) // extent < 1:
                raise LvmError(f"Cannot use {d.name}: too small for one extent of {long_size(extent * SECTOR)}")
            disks.append(d)
        await _check_unused(k, disks)
        vg = VG(args.vg, new_uuid(), extent)
        for i, d in enumerate(disks):
            if d.header is None:
                await st.write_label(d, new_uuid(), in_vg=True)
                say(f'Physical volume "{d.name}" successfully created.')
            else:
                await st.set_in_use(d, True)
            dev_size = d.size // SECTOR
            vg.pvs[f"pv{i}"] = PV(f"pv{i}", d.pv_uuid, d.name, dev_size, 2048,
                                  (dev_size - 2048) // extent, devno=d.devno, dax=d.dax)
        await st.commit(vg)
        say(f'Volume group "{vg.name}" successfully created')


async def _scan(k) -> Store:
    """Scan, warning (as LVM does, on stderr) about every PV of a VG that is missing."""
    st = Store(k)
    await st.scan()
    for vg in st.vgs.values():
        for pv in vg.missing_pvs():
            warn(f"WARNING: Couldn't find device with uuid {pv.id}.")
            warn(f"WARNING: VG {vg.name} is missing PV {pv.id} (last written to {pv.device}).")
    return st


async def _vg_locked(k, name, write: bool = False):
    st = await _scan(k)
    vg = st.vg(name)
    if write and vg.missing_pvs():
        raise LvmError(f"Cannot change VG {vg.name} while PVs are missing.")
    return st, vg


async def vgchange(k, args) -> None:
    if args.activate is None:
        raise LvmError("Need one or more command options.", EINVALID_CMD_LINE)
    on = args.activate in ("y", "ay")
    st = Store(k)
    await st.scan()
    names = args.vgs or sorted(st.vgs)
    for name in names:
        async with locked(name):
            st, vg = await _vg_locked(k, name)
            kern = Kernel(k)
            await kern.refresh()
            if on:
                for lv in vg.user_lvs():
                    try:
                        await act.activate_lv(k, kern, vg, lv)
                    except DmemuError as e:
                        raise LvmError(f"{e.message}\n  Failed to activate {vg.name}/{lv.name}.")
                    await kern.refresh()
            else:
                tops = [dm_name(vg.name, lv.name) for lv in vg.user_lvs()]
                open_ = [t for t in tops if kern.in_use(t)]
                if open_:
                    raise LvmError(f'Can\'t deactivate volume group "{vg.name}" with '
                                   f'{len(open_)} open logical volume(s)')
                for lv in vg.user_lvs():
                    if not vg.is_cow(lv.name):
                        await act.deactivate_lv(k, kern, vg, lv)
                await kern.refresh()
            n = sum(1 for lv in vg.user_lvs() if kern.active(dm_name(vg.name, lv.name)))
            say(f'{n} logical volume(s) in volume group "{vg.name}" now active')


async def vgremove(k, args) -> None:
    for name in args.vgs:
        async with locked(GLOBAL, name):
            st, vg = await _vg_locked(k, name)
            kern = Kernel(k)
            await kern.refresh()
            lvs = vg.user_lvs()
            if lvs and not args.force:
                raise LvmError(f'Volume group "{vg.name}" still contains {len(lvs)} logical '
                               f'volume(s): remove them first, or use -f to remove them too.')
            for lv in lvs:
                act.in_use_error(kern, vg, [dm_name(vg.name, lv.name)], lambda n, lv=lv: lv.name)
            for lv in lvs:
                if not vg.is_cow(lv.name):
                    await act.deactivate_lv(k, kern, vg, lv)
            # Snapshots first, as lvm2 removes them before their origin.
            for lv in sorted(lvs, key=lambda x: not vg.is_cow(x.name)):
                say(f'Logical volume "{lv.name}" successfully removed.')
            await st.forget_vg(vg)
            say(f'Volume group "{vg.name}" successfully removed')


# -- LV sizes ----------------------------------------------------------------------------------

def _wanted_extents(vg: VG, args, *, current: int = 0, origin: LV | None = None,
                    pvkeys=None, resize: bool = False) -> int:
    """Extents for -L/-l, relative to ``current`` when signed ('+'); rounding as lvm2."""
    size, extents = getattr(args, "size", None), getattr(args, "extents", None)
    if size is not None and extents is not None:
        raise LvmError("Please specify either size or extents (not both).", EINVALID_CMD_LINE)
    if size is None and extents is None:
        raise LvmError("Please specify either size or extents.", EINVALID_CMD_LINE)
    if size is not None:
        sign, nbytes = parse_size(size, "m", option="--size")
        sectors = -(-nbytes // SECTOR)
        n = -(-sectors // vg.extent_size)
        if n * vg.extent_size != sectors:
            # lvcreate and lvresize word this differently in lvm2 (lv_manip.c, lvresize).
            if resize:
                say(f"Rounding size to boundary between physical extents: "
                    f"{long_size(n * vg.extent_bytes())}.")
            else:
                say(f"Rounding up size to full physical extent {long_size(n * vg.extent_bytes())}")
    else:
        sign, num, pct = parse_extents(extents, option="--extents")
        if pct is None:
            n = num
        else:
            base = {"FREE": vg.free_extents(pvkeys), "VG": vg.total_extents(),
                    "PVS": sum(vg.pvs[p].pe_count for p in (pvkeys or vg.pvs)),
                    "ORIGIN": origin.extents if origin else 0}[pct]
            n = base * num // 100
    if sign == "+":
        n += current
    elif sign == "-":
        raise LvmError("Negative sizes are not accepted here.", EINVALID_CMD_LINE)
    if n <= 0 and not current:
        raise LvmError("Unable to create new logical volume with no extents.")
    return n


def _pv_keys(st: Store, vg: VG, devices: list[str]) -> list[str] | None:
    if not devices:
        return None
    keys = []
    for name in devices:
        d = st.disk(name)
        key = next((p.key for p in vg.pvs.values() if p.id == d.pv_uuid), None)
        if key is None:
            raise LvmError(f'Physical Volume "{d.name}" not found in Volume Group "{vg.name}".')
        keys.append(key)
    return keys


def _describe_pvs(vg: VG, keys) -> str:
    return ", ".join(vg.pvs[k].device for k in keys)


def _check_snapshot_dax(vg: VG, origin: LV, snap: str, cow_keys: list[str], need: int,
                        extend: bool = False) -> None:
    """device-mapper cannot put DAX and non-DAX devices under one snapshot: say so, with
    the devices, before anything is written or created."""
    okeys = vg.lv_pvs(origin)
    odax = {vg.pvs[k].dax for k in okeys}
    cdax = {vg.pvs[k].dax for k in cow_keys}
    if len(odax | cdax) == 1:
        return
    dax = [vg.pvs[k].device for k in dict.fromkeys(okeys + cow_keys) if vg.pvs[k].dax]
    non = [vg.pvs[k].device for k in dict.fromkeys(okeys + cow_keys) if not vg.pvs[k].dax]
    origin_dax = all(odax)
    want = "DAX-capable" if origin_dax else "non-DAX"
    same = [p.key for p in vg.pvs.values() if p.dax == origin_dax]
    if same and vg.free_extents(same) >= need:
        example = (f"lvextend ... {vg.name}/{snap}" if extend else f"lvcreate -s ... {vg.name}/{origin.name}")
        hint = (f"put the COW on {want} PVs like its origin (e.g. {example} "
                f"{' '.join(vg.pvs[k].device for k in same)})")
    else:
        hint = (f"the {want} PVs of {vg.name} have {vg.free_extents(same)} free extents, "
                f"{need} needed: free some there or add a {want} PV to {vg.name}")
    raise LvmError(
        f"Cannot {'extend' if extend else 'create'} snapshot {vg.name}/{snap} of "
        f"{vg.name}/{origin.name}: the origin is on "
        f"{_describe_pvs(vg, okeys)} and the COW would be on {_describe_pvs(vg, cow_keys)}; "
        f"DAX-capable: {', '.join(dax) or 'none'}; not DAX-capable: {', '.join(non) or 'none'}. "
        f"A snapshot cannot mix DAX-capable and non-DAX devices: {hint}. Nothing was changed.")


# -- lvcreate ----------------------------------------------------------------------------------

def _chunk(text: str | None) -> int:
    if text is None:
        return DEFAULT_CHUNK
    _, nbytes = parse_size(text, "k", option="--chunksize")
    sectors = nbytes // SECTOR
    if nbytes % SECTOR or sectors < 8 or sectors > 1024 or sectors & (sectors - 1):
        raise LvmError("Chunk size must be a power of 2 in the range 4K to 512K.",
                       EINVALID_CMD_LINE)
    return sectors


async def lvcreate(k, args) -> None:
    if not args.target:
        raise LvmError("Please specify a volume group name.", EINVALID_CMD_LINE)
    target, pvargs = args.target[0], args.target[1:]
    if args.snapshot:
        vgname, oname = parse_lv(target)
    else:
        vgname, oname = target.rstrip("/"), None
        if "/" in vgname:
            vgname, _, lvn = vgname.partition("/")
            args.name = args.name or lvn
    chunk = _chunk(args.chunksize) if args.snapshot else 0
    if args.name is not None:
        check_lv_name(args.name)
    async with locked(vgname):
        st, vg = await _vg_locked(k, vgname, write=True)
        kern = Kernel(k)
        await kern.refresh()
        origin = None
        if args.snapshot:
            origin = vg.lvs.get(oname)
            if origin is None or not origin.visible:
                raise LvmError(f'Failed to find logical volume "{vg.name}/{oname}"')
            if vg.is_cow(oname):
                raise LvmError("Snapshots of snapshots are not supported.")
        name = args.name or vg.next_lv_name()
        if name in vg.lvs:
            raise LvmError(f'Logical Volume "{name}" already exists in volume group "{vg.name}"')
        pvkeys = _pv_keys(st, vg, pvargs)
        if origin is not None and pvkeys is None:
            # Prefer PVs of the origin's kind, so a mixed VG does not pick a COW that the
            # origin cannot be snapshotted with while room remains on the right kind.
            odax = all(vg.pvs[p].dax for p in vg.lv_pvs(origin))
            same = [p for p in vg.pvs if vg.pvs[p].dax == odax]
            n = _wanted_extents(vg, args, origin=origin, pvkeys=same)
            # Not enough room there: allocate anywhere and let the DAX check explain.
            pvkeys = same if vg.free_extents(same) >= n else None
        else:
            n = _wanted_extents(vg, args, origin=origin, pvkeys=pvkeys)
        keys = pvkeys or list(vg.pvs)
        areas = vg.allocate(n, keys)
        lv = LV(name, new_uuid(), creation_time=int(time.time()), creation_host=host())
        vg.add_areas(lv, areas)
        if origin is not None:
            # The new LV's extents are not in vg.lvs yet, so "free" still counts them.
            _check_snapshot_dax(vg, origin, name, vg.lv_pvs(lv), n)
        # Wipe the start (-Z y, the default). A COW is always wiped: that is what makes the
        # kernel see a new, empty exception store instead of whatever the extents held.
        if origin is not None or args.zero == "y":
            pv, pe, _ = areas[0]
            p = vg.pvs[pv]
            await st.zero(st.disk(p.device), p.pe_start + pe * vg.extent_size, ZERO_BYTES)
        vg.lvs[name] = lv
        if origin is None:
            await st.commit(vg)
            try:
                await act.activate_lv(k, kern, vg, lv)
            except DmemuError as e:
                del vg.lvs[name]
                await st.commit(vg)
                raise _dm_failure(e, f"activate new LV {vg.name}/{name}")
        else:
            snap = LV(vg.next_snapshot_name(), new_uuid(), ["READ", "WRITE"],
                      [Segment(0, origin.extents, "snapshot", chunk_size=chunk, origin=origin.name,
                               cow_store=name)],
                      int(time.time()), host())
            top = dm_name(vg.name, origin.name)
            if kern.active(top):
                await _snapshot_live(k, kern, vg, origin, lv, chunk)
                vg.lvs[snap.name] = snap
                try:
                    await st.commit(vg)
                except BaseException:
                    # The metadata never named this snapshot: take its devices down again.
                    await kern.refresh()
                    await _remove_snapshot_dm(k, kern, vg, lv)
                    raise
            else:
                vg.lvs[snap.name] = snap
                await st.commit(vg)
                try:
                    await act.activate_lv(k, kern, vg, origin)
                except DmemuError as e:
                    raise LvmError(f"{e.message}\n  Failed to activate {vg.name}/{origin.name}.")
        say(f'Logical volume "{name}" created.')


async def _snapshot_live(k, kern: Kernel, vg: VG, origin: LV, cow: LV, chunk: int) -> None:
    """Add a snapshot under an active origin: suspend it (dmemud freezes the filesystem
    on it and revokes DAX mappings), build -real/-cow/snapshot, reload the origin as
    snapshot-origin, resume. Any refusal undoes every step."""
    top = dm_name(vg.name, origin.name)
    real = dm_name(vg.name, origin.name, "real")
    tx = Transaction(k)
    try:
        await tx.suspend(top)
        if real in kern.devs:
            real_devno = kern.devs[real]["devno"]
            first = False
        else:
            info = await tx.create(real, dm_uuid(vg, origin, "real"), linear_table(vg, origin))
            real_devno, first = info["devno"], True
        await act.add_snapshot(tx, vg, origin, cow, chunk, real_devno)
        if first:
            await tx.reload(top, f"0 {origin.extents * vg.extent_size} snapshot-origin {real_devno}")
        await tx.resume(top)
    except DmemuError as e:
        await tx.rollback()
        raise LvmError(f"{e.message}\n  Failed to create snapshot {vg.name}/{cow.name} of "
                       f"{vg.name}/{origin.name}. Nothing was changed.")
    tx.commit()


# -- lvremove ----------------------------------------------------------------------------------

async def _remove_snapshot_dm(k, kern: Kernel, vg: VG, cow: LV) -> None:
    _, seg = vg.snapshot_of_cow(cow.name)
    origin = vg.lvs[seg.origin]
    top, snapdev = dm_name(vg.name, origin.name), dm_name(vg.name, cow.name)
    if snapdev not in kern.devs:
        return
    act.in_use_error(kern, vg, [snapdev], lambda n: cow.name)
    last = len(vg.snapshots_of(origin.name)) == 1
    tx = Transaction(k)
    try:
        await tx.suspend(top)
        await k.call("dm_remove", name=snapdev)
        await k.call("dm_remove", name=dm_name(vg.name, cow.name, "cow"))
        if last:
            await tx.reload(top, linear_table(vg, origin))
        await tx.resume(top)
    except DmemuError as e:
        await tx.rollback()
        raise LvmError(f"{e.message}\n  Failed to remove snapshot {vg.name}/{cow.name}.")
    if last:
        await k.call("dm_remove", name=dm_name(vg.name, origin.name, "real"))


async def lvremove(k, args) -> None:
    for text in args.lvs:
        vgname, lvname = parse_vg_or_lv(text)
        async with locked(vgname):
            st, vg = await _vg_locked(k, vgname, write=True)
            kern = Kernel(k)
            await kern.refresh()
            targets = [l.name for l in vg.user_lvs()] if lvname is None else [lvname]
            for name in targets:
                lv = vg.lvs.get(name)
                if lv is None:
                    if lvname is None:
                        continue      # removed with its origin
                    raise LvmError(f'Failed to find logical volume "{vg.name}/{name}"')
                if not lv.visible:
                    raise LvmError(f"Can't remove internal logical volume {vg.name}/{name}")
                snaps = vg.snapshots_of(name)
                if snaps and not args.force:
                    raise LvmError(f'Can\'t remove logical volume "{name}" with {len(snaps)} '
                                   f'snapshot(s): remove them first, or use -f to remove them too.')
                if vg.is_cow(name):
                    await _remove_snapshot_dm(k, kern, vg, lv)
                    snap_lv, _ = vg.snapshot_of_cow(name)
                    del vg.lvs[snap_lv.name]
                    del vg.lvs[name]
                    await st.commit(vg)
                else:
                    await act.deactivate_lv(k, kern, vg, lv)
                    for c in snaps:
                        snap_lv, _ = vg.snapshot_of_cow(c)
                        del vg.lvs[snap_lv.name]
                        del vg.lvs[c]
                        say(f'Logical volume "{c}" successfully removed.')
                    del vg.lvs[name]
                    await st.commit(vg)
                await kern.refresh()
                say(f'Logical volume "{name}" successfully removed.')


# -- lvrename, lvextend, lvconvert -------------------------------------------------------------

async def lvrename(k, args) -> None:
    a = args.names
    if len(a) == 3:
        vgname, old, new = a
    elif len(a) == 2:
        vgname, old = parse_lv(a[0])
        new = a[1]
        if "/" in new:
            nvg, new = parse_lv(new)
            if nvg != vgname:
                raise LvmError("Logical volume names must have the same volume group (\"%s\" or \"%s\")."
                               % (vgname, nvg), EINVALID_CMD_LINE)
    else:
        raise LvmError("Old and new logical volume names required", EINVALID_CMD_LINE)
    check_lv_name(new)
    async with locked(vgname):
        st, vg = await _vg_locked(k, vgname, write=True)
        kern = Kernel(k)
        await kern.refresh()
        lv = vg.lvs.get(old)
        if lv is None or not lv.visible:
            raise LvmError(f'Existing logical volume "{old}" not found in volume group "{vg.name}"')
        if new in vg.lvs:
            raise LvmError(f'Logical Volume "{new}" already exists in volume group "{vg.name}"')
        renames = [(dm_name(vg.name, old), dm_name(vg.name, new))]
        renames += [(dm_name(vg.name, old, x), dm_name(vg.name, new, x)) for x in ("real", "cow")]
        done = []
        try:
            for a_, b_ in renames:
                if a_ in kern.devs:
                    await k.call("dm_rename", name=a_, new=b_)
                    done.append((a_, b_))
        except DmemuError as e:
            for a_, b_ in reversed(done):
                await k.call("dm_rename", name=b_, new=a_)
            raise LvmError(f"{e.message}\n  Failed to rename {vg.name}/{old}.")
        lv.name = new
        vg.lvs = {(new if n == old else n): l for n, l in vg.lvs.items()}
        for _, s in vg.snapshot_segments():
            if s.origin == old:
                s.origin = new
            if s.cow_store == old:
                s.cow_store = new
        await st.commit(vg)
        say(f'Renamed "{old}" to "{new}" in volume group "{vg.name}"')


async def lvextend(k, args) -> None:
    vgname, name = parse_lv(args.lv)
    async with locked(vgname):
        st, vg = await _vg_locked(k, vgname, write=True)
        kern = Kernel(k)
        await kern.refresh()
        lv = vg.lvs.get(name)
        if lv is None or not lv.visible:
            raise LvmError(f'Logical volume {name} not found in volume group {vg.name}.')
        top = dm_name(vg.name, name)
        if vg.is_origin(name) and kern.active(top):
            raise LvmError("Snapshot origin volumes can be resized only while inactive: try lvchange -an.")
        pvkeys = _pv_keys(st, vg, args.pvs)
        origin = vg.lvs[vg.snapshot_of_cow(name)[1].origin] if vg.is_cow(name) else None
        if origin is not None and pvkeys is None:
            # More COW space goes where the snapshot may have it: PVs of the origin's kind.
            odax = all(vg.pvs[p].dax for p in vg.lv_pvs(origin))
            pvkeys = [p for p in vg.pvs if vg.pvs[p].dax == odax]
        old = lv.extents
        n = _wanted_extents(vg, args, current=old, pvkeys=pvkeys, resize=True)
        if n <= old:
            raise LvmError(f"New size given ({n} extents) not larger than existing size "
                           f"({old} extents)")
        last = lv.segments[-1].stripes[0] if lv.segments else None
        after = (last[0], last[1] + lv.segments[-1].extent_count) if last else None
        areas = vg.allocate(n - old, pvkeys or list(vg.pvs), after=after)
        vg.add_areas(lv, areas)
        if origin is not None:
            _check_snapshot_dax(vg, origin, name, vg.lv_pvs(lv), n - old, extend=True)
        if vg.is_origin(name):
            for c in vg.snapshots_of(name):
                vg.snapshot_of_cow(c)[1].extent_count = lv.extents
        if origin is not None and kern.active(top):
            await _extend_cow_live(k, vg, origin, lv)
        elif kern.active(top):
            tx = Transaction(k)
            try:
                await tx.suspend(top)
                await tx.reload(top, linear_table(vg, lv))
                await tx.resume(top)
            except DmemuError as e:
                await tx.rollback()
                raise LvmError(f"{e.message}\n  Failed to resize {vg.name}/{name}. Nothing was changed.")
        await st.commit(vg)
        eb = vg.extent_bytes()
        say(f"Size of logical volume {vg.name}/{name} changed from {long_size(old * eb)} "
            f"({old} extents) to {long_size(n * eb)} ({n} extents).")
        say(f"Logical volume {vg.name}/{name} successfully resized.")


async def _extend_cow_live(k, vg: VG, origin: LV, cow: LV) -> None:
    """Grow an active snapshot's COW: hold the origin (no copy-on-write in flight) and the
    snapshot, reload the -cow device over the new extents, resume bottom-up. The exception
    store reads the COW size from its device, so it sees the room at once."""
    top, snap = dm_name(vg.name, origin.name), dm_name(vg.name, cow.name)
    cowdev = dm_name(vg.name, cow.name, "cow")
    tx = Transaction(k)
    try:
        await tx.suspend(top)
        await tx.suspend(snap)
        await tx.reload(cowdev, linear_table(vg, cow))
        await tx.resume(cowdev)
        await tx.resume(snap)
        await tx.resume(top)
    except DmemuError as e:
        await tx.rollback()
        raise LvmError(f"{e.message}\n  Failed to resize {vg.name}/{cow.name}. Nothing was changed.")
    tx.commit()


async def lvchange(k, args) -> None:
    """lvchange -ay|-an: an origin and its snapshots activate and deactivate together."""
    if args.activate is None:
        raise LvmError("Need one or more command options.", EINVALID_CMD_LINE)
    for text in args.lvs:
        vgname, name = parse_lv(text)
        async with locked(vgname):
            st, vg = await _vg_locked(k, vgname)
            kern = Kernel(k)
            await kern.refresh()
            lv = vg.lvs.get(name)
            if lv is None or not lv.visible:
                raise LvmError(f'Failed to find logical volume "{vg.name}/{name}"')
            try:
                if args.activate in ("y", "ay"):
                    await act.activate_lv(k, kern, vg, lv)
                else:
                    await act.deactivate_lv(k, kern, vg, lv)
            except DmemuError as e:
                raise LvmError(f"{e.message}\n  Failed to change activation of {vg.name}/{name}.")


async def lvconvert(k, args) -> None:
    """lvconvert --merge: copy the snapshot's chunks back over its origin (merge.py)."""
    if not args.merge:
        raise LvmError("Only --merge of a snapshot is supported here.", EINVALID_CMD_LINE)
    vgname, name = parse_lv(args.lv)
    async with locked(vgname):
        st, vg = await _vg_locked(k, vgname, write=True)
        kern = Kernel(k)
        await kern.refresh()
        if name not in vg.lvs:
            raise LvmError(f'Failed to find logical volume "{vg.name}/{name}"')
        if not vg.is_cow(name):
            raise LvmError(f"{vg.name}/{name} is not a mergeable logical volume.")
        snap_lv, seg = vg.snapshot_of_cow(name)
        origin, cow = vg.lvs[seg.origin], vg.lvs[name]
        others = [c for c in vg.snapshots_of(origin.name) if c != name]
        if others:
            raise LvmError(f"Unable to merge {vg.name}/{name}: origin {vg.name}/{origin.name} has "
                           f"other snapshots ({', '.join(others)}); remove them first.")
        tops = [dm_name(vg.name, origin.name), dm_name(vg.name, name)]
        if any(kern.in_use(t) for t in tops):
            raise LvmError("Can't merge over open origin volume.")
        reader = merge.LvIO(k, vg, cow)
        # Refuse an invalid snapshot before touching anything (the header says so on disk;
        # an active store writes valid=0 there when it invalidates).
        try:
            valid, _, _ = await merge.read_cow(reader, seg.chunk_size)
        finally:
            await reader.flush_and_close()
        if not valid:
            raise LvmError(f'Unable to merge invalidated snapshot LV "{name}".')
        was_active = kern.active(tops[0])
        if was_active:
            await act.deactivate_lv(k, kern, vg, origin)
        try:
            valid, chunk, exceptions = await merge.read_cow(reader, seg.chunk_size)
            if not valid:
                raise LvmError(f'Unable to merge invalidated snapshot LV "{name}".')
            say(f"Merging of volume {vg.name}/{name} started.")
            writer = merge.LvIO(k, vg, origin)
            try:
                for old, new in exceptions:
                    await writer.write(old * chunk, await reader.read(new * chunk, chunk))
            finally:
                await writer.flush_and_close()
        except BaseException:
            await reader.flush_and_close()
            if was_active:
                await act.activate_lv(k, kern, vg, origin)
            raise
        await reader.flush_and_close()
        # Only now, with the origin durable, may the snapshot go from the metadata.
        del vg.lvs[snap_lv.name], vg.lvs[name]
        await st.commit(vg)
        if was_active:
            await kern.refresh()
            await act.activate_lv(k, kern, vg, origin)
        say(f"{vg.name}/{origin.name}: Merged: 100.00%")


# -- reports -----------------------------------------------------------------------------------

def _percent(status: str | None) -> str:
    """Data% of a snapshot from its kernel status, as lvm2's dm_snapshot parsing."""
    if status is None:
        return ""
    words = status.split()
    text = " ".join(words[3:])
    if text.startswith("Invalid") or text.startswith("Overflow"):
        return "100.00"
    try:
        used, total = (int(x) for x in words[3].split("/"))
        meta = int(words[4])
    except (IndexError, ValueError):
        return ""
    if used == meta:
        return "0.00"          # only the store's own metadata: nothing copied yet
    return f"{used * 100 / total:.2f}"


def _lv_row(vg: VG, lv: LV, kern: Kernel, units: str) -> dict:
    top = dm_name(vg.name, lv.name)
    d = kern.devs.get(top)
    is_origin, is_cow = vg.is_origin(lv.name), vg.is_cow(lv.name)
    status = d["status"][0] if d and d["live"] and d["status"] else None
    invalid = bool(is_cow and status and status.split()[3:4] == ["Invalid"])
    if not d or not d["live"]:
        state = "-"
    elif invalid:
        state = "S" if d["suspended"] else "I"
    else:
        state = "s" if d["suspended"] else "a"
    attr = (("o" if is_origin else "s" if is_cow else "-") + ("w" if "WRITE" in lv.status else "r")
            + "i" + "-" + state + ("o" if kern.in_use(top) else "-")
            + ("s" if is_origin or is_cow else "-") + "---")
    origin = vg.snapshot_of_cow(lv.name)[1].origin if is_cow else ""
    chunk = vg.snapshot_of_cow(lv.name)[1].chunk_size * SECTOR if is_cow else 0
    devices = ",".join(f"{vg.pvs[s.stripes[0][0]].device}({s.stripes[0][1]})" for s in lv.segments)
    return {"lv_name": lv.name, "vg_name": vg.name, "lv_attr": attr,
            "lv_size": report_size(lv.extents * vg.extent_bytes(), units),
            "origin": origin, "data_percent": _percent(status) if is_cow else "",
            "lv_uuid": lv.id, "lv_path": f"/dev/{vg.name}/{lv.name}",
            "lv_dm_path": f"/dev/mapper/{top}", "devices": devices, "seg_count": len(lv.segments),
            "chunk_size": report_size(chunk, units) if chunk else report_size(0, units),
            "lv_active": "active" if d and d["live"] else "",
            "lv_dax": ("yes" if d["dax"] else "no") if d and d["live"] else ""}


async def lvs(k, args) -> None:
    fields = columns("lv", args.options)
    st = await _scan(k)
    kern = Kernel(k)
    await kern.refresh()
    wanted = [parse_vg_or_lv(a) for a in args.names]
    rows = []
    for vgname in sorted(st.vgs):
        vg = st.vgs[vgname]
        for lv in sorted(vg.user_lvs(), key=lambda x: x.name):
            if wanted and not any(w[0] == vgname and w[1] in (None, lv.name) for w in wanted):
                continue
            rows.append({**_vg_row(vg, args.units), **_lv_row(vg, lv, kern, args.units)})
    missing = _missing(st, wanted)
    _print_report("lv", fields, rows, args)
    if missing:
        raise LvmError(missing)


def _missing(st: Store, wanted) -> str | None:
    for vgname, lvname in wanted:
        if vgname not in st.vgs:
            return f'Volume group "{vgname}" not found'
        if lvname is not None and lvname not in st.vgs[vgname].lvs:
            return f'Failed to find logical volume "{vgname}/{lvname}"'
    return None


def _print_report(kind, fields, rows, args) -> None:
    fmt = "json" if args.reportformat == "json" else "basic"
    text = render(kind, fields, rows, headings=not args.noheadings, fmt=fmt)
    sys.stdout.write(text)


def _vg_row(vg: VG, units: str) -> dict:
    eb = vg.extent_bytes()
    return {"vg_name": vg.name, "pv_count": len(vg.pvs), "lv_count": len(vg.user_lvs()),
            "snap_count": sum(1 for _ in vg.snapshot_segments()),
            "vg_attr": "wz-" + ("p" if vg.missing_pvs() else "-") + "n-",
            "vg_size": report_size(vg.total_extents() * eb, units),
            "vg_free": report_size(vg.free_extents() * eb, units), "vg_uuid": vg.id,
            "vg_extent_size": report_size(eb, units), "vg_extent_count": vg.total_extents(),
            "vg_free_count": vg.free_extents(), "vg_seqno": vg.seqno}


async def vgs(k, args) -> None:
    fields = columns("vg", args.options)
    st = await _scan(k)
    rows = []
    for name in sorted(st.vgs):
        if args.names and name not in args.names:
            continue
        rows.append(_vg_row(st.vgs[name], args.units))
    _print_report("vg", fields, rows, args)
    for name in args.names:
        if name not in st.vgs:
            raise LvmError(f'Volume group "{name}" not found')


async def pvs(k, args) -> None:
    fields = columns("pv", args.options)
    st = await _scan(k)
    rows = []
    for d in sorted(st.disks.values(), key=lambda x: x.name):
        if d.header is None:
            continue
        if args.devices and d.name not in {"/dev/" + x.removeprefix("/dev/") for x in args.devices}:
            continue
        vg = st.vg_of_disk(d)
        row = {"pv_name": d.name, "pv_fmt": "lvm2", "pv_uuid": d.pv_uuid,
               "dev_size": report_size(d.size, args.units),
               "pe_start": report_size(1 << 20, args.units)}
        if vg is not None:
            pv = next(p for p in vg.pvs.values() if p.id == d.pv_uuid)
            eb = vg.extent_bytes()
            free = vg.free_extents([pv.key])
            row.update(vg_name=vg.name, pv_attr="a--",
                       pv_size=report_size(pv.pe_count * eb, args.units),
                       pv_free=report_size(free * eb, args.units),
                       pv_pe_count=pv.pe_count, pv_pe_alloc_count=pv.pe_count - free)
        else:
            row.update(vg_name="", pv_attr="---", pv_size=report_size(d.size, args.units),
                       pv_free=report_size(d.size, args.units), pv_pe_count=0, pv_pe_alloc_count=0)
        rows.append(row)
    for vg in st.vgs.values():
        for pv in vg.missing_pvs():
            if not args.devices:
                eb = vg.extent_bytes()
                rows.append({"pv_name": "[unknown]", "vg_name": vg.name, "pv_fmt": "lvm2",
                             "pv_attr": "a-m", "pv_uuid": pv.id,
                             "pv_size": report_size(pv.pe_count * eb, args.units),
                             "pv_free": report_size(vg.free_extents([pv.key]) * eb, args.units)})
    _print_report("pv", fields, rows, args)
    for name in args.devices:
        d = st.disk(name)
        if d.header is None:
            raise LvmError(f"Failed to find physical volume \"{d.name}\".")
