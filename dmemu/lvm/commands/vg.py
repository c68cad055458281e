"""vgcreate, vgextend, vgreduce, vgck, vgchange and vgremove: volume groups as a whole."""
import sys

from ...errors import DmemuError
from .. import activate as act
from ..activate import Kernel, dm_name
from ..errors import EINVALID_CMD_LINE, LvmError
from ..lock import GLOBAL, locked
from ..store import Store
from ..units import SECTOR, long_size
from ..vg import PV, VG, check_name, new_uuid
from .args import extent_size
from .common import say, scan, vg_locked, warn
from .merge import start_background_poll
from .pv import check_unused, signatures_to_wipe, wipe_signature


async def vgcreate(k, args) -> None:
    try:
        check_name(args.vg, "Volume group")
    except LvmError as e:
        raise LvmError(f'{e.message}\n  New volume group name "{args.vg}" is invalid.', e.code)
    extent = extent_size(args.physicalextentsize)
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
        await check_unused(k, disks)
        wipes = await signatures_to_wipe(st, disks, args)
        vg = VG(args.vg, new_uuid(), extent)
        await _add_pvs(st, vg, disks, wipes)
        await st.commit(vg)
        say(f'Volume group "{vg.name}" successfully created')


async def vgchange(k, args) -> None:
    if args.activate is None:
        raise LvmError("Need one or more command options.", EINVALID_CMD_LINE)
    on = args.activate in ("y", "ay")
    st = Store(k)
    await st.scan()
    names = args.vgs or sorted(st.vgs)
    for name in names:
        async with locked(name):
            st, vg = await vg_locked(k, name)
            kern = Kernel(k)
            await kern.refresh()
            if on:
                for lv in vg.user_lvs():
                    try:
                        await act.activate_lv(k, kern, vg, lv)
                    except DmemuError as e:
                        raise LvmError(f"{e.message}\n  Failed to activate {vg.name}/{lv.name}.")
                    await kern.refresh()
                    if vg.merging_into(lv.name):
                        start_background_poll(vg.name, lv.name)
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
            st, vg = await vg_locked(k, name)
            kern = Kernel(k)
            await kern.refresh()
            lvs = vg.user_lvs()
            if lvs and not args.force:
                raise LvmError(f'Volume group "{vg.name}" still contains {len(lvs)} logical '
                               f'volume(s): remove them first, or use -f to remove them too.')
            for lv in lvs:
                await act.in_use_error(kern, vg, [dm_name(vg.name, lv.name)], lambda n, lv=lv: lv.name)
            for lv in lvs:
                if not vg.is_cow(lv.name):
                    await act.deactivate_lv(k, kern, vg, lv)
            # Snapshots first, as lvm2 removes them before their origin.
            for lv in sorted(lvs, key=lambda x: not vg.is_cow(x.name)):
                say(f'Logical volume "{lv.name}" successfully removed.')
            await st.forget_vg(vg)
            say(f'Volume group "{vg.name}" successfully removed')


async def _add_pvs(st, vg: VG, disks, wipes: dict) -> None:
    """Label the devices that are not PVs yet (wiping what the user agreed to wipe), mark
    the others in use, and add each to ``vg`` with its data area after the label's 1 MiB."""
    for d in disks:
        if d.header is None:
            if d.name in wipes:
                await wipe_signature(st, d, wipes[d.name])
            await st.write_label(d, new_uuid(), in_vg=True)
            say(f'Physical volume "{d.name}" successfully created.')
        else:
            await st.set_in_use(d, True)
        dev_size = d.size // SECTOR
        key = _pv_key(vg)
        vg.pvs[key] = PV(key, d.pv_uuid, d.name, dev_size, 2048,
                         (dev_size - 2048) // vg.extent_size, devno=d.devno, dax=d.dax)


def _pv_key(vg: VG) -> str:
    i = 0
    while f"pv{i}" in vg.pvs:
        i += 1
    return f"pv{i}"


async def vgextend(k, args) -> None:
    """Add PVs (labelling devices that are not PVs yet) to a VG."""
    async with locked(GLOBAL, args.vg):
        st, vg = await vg_locked(k, args.vg, write=True)
        disks = []
        for name in args.devices:
            d = st.disk(name)
            if d in disks:
                raise LvmError(f"Duplicate device name found on input: {name}.")
            other = st.vg_of_disk(d)
            if other is not None:
                raise LvmError(f"Physical volume '{d.name}' is already in volume group "
                               f"'{other.name}'\n  Unable to add physical volume '{d.name}' "
                               f"to volume group '{vg.name}'")
            if (d.size // SECTOR - 2048) // vg.extent_size < 1:
                raise LvmError(f"Cannot use {d.name}: too small for one extent of "
                               f"{long_size(vg.extent_bytes())}")
            disks.append(d)
        await check_unused(k, disks)
        wipes = await signatures_to_wipe(st, disks, args)
        await _add_pvs(st, vg, disks, wipes)
        await st.commit(vg)
        say(f'Volume group "{vg.name}" successfully extended')


def _pv_in_use(vg: VG, key: str) -> bool:
    return any(s.type == "striped" and s.stripes[0][0] == key
               for lv in vg.lvs.values() for s in lv.segments)


async def vgreduce(k, args) -> None:
    """vgreduce VG PV..., vgreduce -a VG, vgreduce --removemissing [-f] VG (lvm2's
    vgreduce.c): only PVs no LV uses leave; the last PV never does."""
    if args.vg is None:
        raise LvmError("Please give volume group name." if args.removemissing else
                       "Please give volume group name and physical volume paths.",
                       EINVALID_CMD_LINE)
    if args.removemissing:
        if args.devices:
            raise LvmError("Please only specify the volume group.", EINVALID_CMD_LINE)
        return await _removemissing(k, args)
    if not args.devices and not args.all:
        raise LvmError("Please enter physical volume paths or option -a.", EINVALID_CMD_LINE)
    if args.devices and args.all:
        raise LvmError("Option -a and physical volume paths mutually exclusive.",
                       EINVALID_CMD_LINE)
    async with locked(GLOBAL, args.vg):
        st, vg = await vg_locked(k, args.vg, write=True)
        if args.all:
            keys = [p for p in vg.pvs if not _pv_in_use(vg, p)]
        else:
            keys = []
            for name in args.devices:
                d = st.disk(name)
                pv = next((p for p in vg.pvs.values() if d.header and p.id == d.pv_uuid), None)
                if pv is None:
                    raise LvmError(f"Physical Volume \"{d.name}\" not found in Volume Group "
                                   f"\"{vg.name}\".")
                if _pv_in_use(vg, pv.key):
                    raise LvmError(f'Physical volume "{d.name}" still in use')
                keys.append(pv.key)
        done = []
        for key in keys:
            pv = vg.pvs[key]
            if len(vg.pvs) == 1:
                if args.all:
                    break           # -a keeps the last one quietly, as lvm2 does
                raise LvmError(f'Can\'t remove final physical volume "{pv.device}" from '
                               f'volume group "{vg.name}"')
            del vg.pvs[key]
            done.append(pv)
        await st.commit(vg)
        for pv in done:
            # An orphan again: its label loses the in-use flag, its metadata area its copy.
            await st.release_pv(st.disk_of_pv(pv.id))
            say(f'Removed "{pv.device}" from volume group "{vg.name}"')


async def _removemissing(k, args) -> None:
    async with locked(GLOBAL, args.vg):
        st, vg = await vg_locked(k, args.vg)
        missing = {p.key for p in vg.missing_pvs()}
        if not missing:
            say(f'Volume group "{vg.name}" is already consistent.')
            return
        partial = [lv for lv in vg.lvs.values()
                   if any(s.type == "striped" and s.stripes[0][0] in missing for s in lv.segments)]
        if partial and not args.force:
            for lv in partial:
                if lv.visible:
                    warn(f"WARNING: Partial LV {lv.name} needs to be repaired or removed. ")
            raise LvmError(f"There are still partial LVs in VG {vg.name}.\n"
                           "  To remove them unconditionally use: vgreduce --removemissing --force.")
        kern = Kernel(k)
        await kern.refresh()
        gone = set()
        for lv in partial:
            if not lv.visible or lv.name in gone:
                continue
            warn(f"WARNING: Removing partial LV {vg.name}/{lv.name}.")
            # An origin goes with its snapshots and a snapshot with its hidden LV, as
            # lv_remove_with_dependencies.
            group = [lv.name] + vg.snapshots_of(lv.name)
            await act.in_use_error(kern, vg, [dm_name(vg.name, n) for n in group], lambda n: n)
            try:
                if not vg.is_cow(lv.name):
                    await act.deactivate_lv(k, kern, vg, lv)
            except DmemuError as e:
                raise LvmError(f"{e.message}\n  Failed to deactivate {vg.name}/{lv.name}.")
            for n in group:
                if vg.is_cow(n):
                    hidden, _ = vg.snapshot_of_cow(n)
                    del vg.lvs[hidden.name]
                del vg.lvs[n]
                gone.add(n)
        for key in missing:
            del vg.pvs[key]
        await st.commit(vg)
        say(f"Wrote out consistent volume group {vg.name}.")


async def vgck(k, args) -> None:
    """vgck: each VG's metadata checked as lvm2's vg_validate (areas inside their PVs, no
    extent used twice, snapshots naming LVs that exist) and its PVs all present; every PV
    whose copy is older is reported. --updatemetadata rewrites every copy."""
    st = await scan(k)
    names = args.vgs or sorted(st.vgs)
    errors = []
    for name in names:
        async with locked(name):
            st = await scan(k) if args.updatemetadata else st
            vg = st.vgs.get(name)
            if vg is None:
                errors.append(f'Volume group "{name}" not found')
                continue
            stale = [d for d in st.disks.values()
                     if d.vg is not None and d.vg.id == vg.id and d.vg.seqno < vg.seqno]
            for d in stale:
                warn(f"WARNING: ignoring metadata seqno {d.vg.seqno} on {d.name} for "
                     f"seqno {vg.seqno} on {_newest(st, vg)} for VG {vg.name}.")
            if stale:
                warn(f"WARNING: Inconsistent metadata found for VG {vg.name}.")
            problems = validate(vg)
            errors += problems
            if vg.missing_pvs():
                errors.append(f"The volume group is missing {len(vg.missing_pvs())} "
                              f"physical volumes.")
            elif args.updatemetadata and not problems:
                await st.commit(vg)
    if errors:
        raise LvmError("\n  ".join(errors))


def _newest(st, vg: VG) -> str:
    return next(d.name for d in sorted(st.disks.values(), key=lambda x: x.name)
                if d.vg is not None and d.vg.id == vg.id and d.vg.seqno == vg.seqno)


def validate(vg: VG) -> list[str]:
    """What lvm2's vg_validate would refuse in this VG, one message each."""
    out = []
    owner: dict[tuple[str, int], str] = {}
    for lv in vg.lvs.values():
        pos = 0
        for s in lv.segments:
            if s.start_extent != pos:
                out.append(f"LV {lv.name}: segment starting at extent {s.start_extent} "
                           f"does not follow the one before (extent {pos}).")
            pos = s.start_extent + s.extent_count
            if s.type == "snapshot":
                for what, ref in (("origin", s.origin), ("cow", s.cow_store)):
                    if ref not in vg.lvs:
                        out.append(f"LV {lv.name}: snapshot {what} {ref} not found.")
                continue
            for key, pe in s.stripes:
                pv = vg.pvs.get(key)
                if pv is None:
                    out.append(f"LV {lv.name}: segment on unknown PV {key}.")
                    continue
                if pe + s.extent_count > pv.pe_count:
                    out.append(f"LV {lv.name}: segment extends beyond the end of PV {pv.device} "
                               f"(extents {pe}-{pe + s.extent_count - 1} of {pv.pe_count}).")
                for e in range(pe, min(pe + s.extent_count, pv.pe_count)):
                    if (key, e) in owner:
                        out.append(f"LV {lv.name}: PV {pv.device} extent {e} is already used "
                                   f"by LV {owner[(key, e)]}.")
                        break
                    owner[(key, e)] = lv.name
    return out
