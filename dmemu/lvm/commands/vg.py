"""vgcreate, vgchange and vgremove: volume groups as a whole."""
from ...errors import DmemuError
from .. import activate as act
from ..activate import Kernel, dm_name
from ..errors import EINVALID_CMD_LINE, LvmError
from ..lock import GLOBAL, locked
from ..store import Store
from ..units import SECTOR, long_size
from ..vg import PV, VG, check_name, new_uuid
from .args import extent_size
from .common import say, vg_locked
from .pv import check_unused


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
                act.in_use_error(kern, vg, [dm_name(vg.name, lv.name)], lambda n, lv=lv: lv.name)
            for lv in lvs:
                if not vg.is_cow(lv.name):
                    await act.deactivate_lv(k, kern, vg, lv)
            # Snapshots first, as lvm2 removes them before their origin.
            for lv in sorted(lvs, key=lambda x: not vg.is_cow(x.name)):
                say(f'Logical volume "{lv.name}" successfully removed.')
            await st.forget_vg(vg)
            say(f'Volume group "{vg.name}" successfully removed')
