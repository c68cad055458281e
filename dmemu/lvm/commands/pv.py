"""pvcreate and pvremove: LVM labels on devices that nothing else holds."""
from ..activate import Kernel
from ..errors import LvmError
from ..lock import GLOBAL, locked
from ..store import Store
from ..units import SECTOR
from ..vg import new_uuid
from .common import say

MIN_PV_SECTORS = 4096           # 2 MiB: lvm2 refuses smaller PVs


async def check_unused(k, disks) -> None:
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
        await check_unused(k, disks)
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
        await check_unused(k, disks)
        for d in disks:
            await st.wipe_label(d)
            say(f'Labels on physical volume "{d.name}" successfully wiped.')
