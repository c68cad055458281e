"""pvcreate and pvremove: LVM labels on devices that nothing else holds."""
from ..activate import Kernel
from ..errors import LvmError
from ..lock import GLOBAL, locked
from ..store import Store
from ..units import SECTOR
from ..vg import new_uuid
from .. import fsprobe
from .common import say, warn, yes_no_prompt

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


async def signatures_to_wipe(st: Store, disks, args) -> dict:
    """For devices about to become PVs: the filesystem signature each carries, confirmed
    for wiping as lvm2's wipe_known_signatures does (-f or -y wipe without asking, else
    the user is asked); a "no" refuses the whole command before anything is written."""
    found = {}
    for d in disks:
        if d.header is not None:
            continue
        dev = await st.k.open_device(d.name, read_only=True)
        try:
            info = await fsprobe.probe(dev.read, dev.nr_sectors)
        finally:
            await dev.close()
        if info is None:
            continue
        if not (args.force or args.yes) and not yes_no_prompt(
                f"WARNING: {info.fstype} signature detected on {d.name} at offset "
                f"{info.offset}. Wipe it? [y/n]: "):
            raise LvmError(f"Aborted wiping of {info.fstype}.\n  {d.name} not wiped: aborting.")
        found[d.name] = info
    return found


async def wipe_signature(st: Store, d, info) -> None:
    """Erase the magic (what blkid's wipe does); the label write clears the first 4 KiB."""
    await st.zero(d, info.offset // SECTOR, SECTOR)
    say(f"Wiping {info.fstype} signature on {d.name}.")


async def pvcreate(k, args) -> None:
    """pvcreate: a PV of a VG needs -ff and a yes (-y or the prompt), as lvm2's
    _check_pvcreate_prompt; an existing orphan PV is simply labelled anew."""
    async with locked(GLOBAL):
        st = Store(k)
        await st.scan()
        disks = []
        for name in args.devices:
            d = st.disk(name)
            if d in disks:
                raise LvmError(f"Duplicate device name found on input: {name}.")
            vg = st.vg_of_disk(d)
            if vg is not None:
                if args.force < 2:
                    raise LvmError(f'Can\'t initialize physical volume "{d.name}" of volume '
                                   f'group "{vg.name}" without -ff\n'
                                   f"  {d.name}: physical volume not initialized.")
                if not args.yes:
                    if not yes_no_prompt(f'Really INITIALIZE physical volume "{d.name}" of '
                                         f'volume group "{vg.name}" [y/n]? '):
                        raise LvmError(f"{d.name}: physical volume not initialized.")
                    warn(f'WARNING: Forcing physical volume creation on {d.name} of volume '
                         f'group "{vg.name}"')
            if d.size // SECTOR < MIN_PV_SECTORS:
                raise LvmError(f"Cannot use {d.name}: device is too small (< 2.00 MiB)")
            disks.append(d)
        await check_unused(k, disks)
        wipes = await signatures_to_wipe(st, disks, args)
        for d in disks:
            if d.name in wipes:
                await wipe_signature(st, d, wipes[d.name])
            await st.write_label(d, new_uuid(), in_vg=False)
            say(f'Physical volume "{d.name}" successfully created.')


async def pvremove(k, args) -> None:
    """pvremove: a PV of a VG needs -ff and a yes, then is wiped with lvm2's warnings."""
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
                if args.force < 2:
                    raise LvmError(f"PV {d.name} is used by VG {vg.name} so please use vgreduce first.\n"
                                   "  (If you are certain you need pvremove, then confirm by using --force twice.)\n"
                                   f"  {d.name}: physical volume label not removed.")
                warn(f"WARNING: PV {d.name} is used by VG {vg.name}.")
                if not args.yes and not yes_no_prompt(
                        f'Really WIPE LABELS from physical volume "{d.name}" of volume group '
                        f'"{vg.name}" [y/n]? '):
                    raise LvmError(f"{d.name}: physical volume label not removed.")
                warn(f'WARNING: Wiping physical volume label from {d.name} of volume group '
                     f'"{vg.name}".')
            disks.append(d)
        await check_unused(k, disks)
        for d in disks:
            await st.wipe_label(d)
            say(f'Labels on physical volume "{d.name}" successfully wiped.')
