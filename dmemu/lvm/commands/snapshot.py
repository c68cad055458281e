"""Snapshots: the DAX check before one is made, and the device-mapper steps that add, grow
and remove one under an active origin (merging one back is merge.py)."""
import errno
import os

import trio

from ...errors import DmemuError
from .. import activate as act
from ..activate import Kernel, Transaction, dm_name, dm_uuid, linear_table
from ..errors import LvmError
from ..vg import LV, VG


def _describe_pvs(vg: VG, keys) -> str:
    return ", ".join(vg.pvs[k].device for k in keys)


def check_snapshot_dax(vg: VG, origin: LV, snap: str, cow_keys: list[str], need: int,
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


class LinuxRefusal(Exception):
    """Under the linux profile: the kernel refused a reload the way Linux does, and LVM
    2.03.16's lines for it are in ``lines``."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def ioctl_failed(op: str, devno: str, errno_: int) -> str:
    """libdm's line for a failed ioctl on a device it addressed by uuid (no name)."""
    return f"device-mapper: {op} ioctl on  ({devno}) failed: {os.strerror(errno_)}"


async def snapshot_live(k, kern: Kernel, vg: VG, origin: LV, cow: LV, chunk: int,
                        linux: bool = False) -> None:
    """Add a snapshot under an active origin: suspend it (dmemud freezes the filesystem
    on it and revokes DAX mappings), build -real/-cow/snapshot, reload the origin as
    snapshot-origin, resume. Any refusal undoes every step.

    Under the linux profile a refused reload of the origin is what LVM 2.03.16 meets on a
    DAX origin (the device type cannot change after its first table): it preloads and
    reverts twice, then gives up on the suspend; LinuxRefusal carries its lines."""
    top = dm_name(vg.name, origin.name)
    attempts = []
    for _ in range(2 if linux else 1):
        try:
            await _snapshot_live_once(k, kern, vg, origin, cow, chunk)
            return
        except _ReloadRefused as r:
            if not linux or r.error.errno != errno.EINVAL:
                raise LvmError(f"{r.error.message}\n  Failed to create snapshot {vg.name}/{cow.name} "
                               f"of {vg.name}/{origin.name}. Nothing was changed.") from None
            attempts += [ioctl_failed("reload", r.devno, errno.EINVAL),
                         ioctl_failed("remove", r.snap_devno, errno.ENXIO)]
        except DmemuError as e:
            raise LvmError(f"{e.message}\n  Failed to create snapshot {vg.name}/{cow.name} of "
                           f"{vg.name}/{origin.name}. Nothing was changed.") from None
    raise LinuxRefusal(attempts + [f"Failed to suspend logical volume {vg.name}/{origin.name}.",
                                   "Aborting. Manual intervention required."])


class _ReloadRefused(Exception):
    def __init__(self, error: DmemuError, devno: str, snap_devno: str):
        self.error, self.devno, self.snap_devno = error, devno, snap_devno


async def _snapshot_live_once(k, kern: Kernel, vg: VG, origin: LV, cow: LV, chunk: int) -> None:
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
        snap_info = await act.add_snapshot(tx, vg, origin, cow, chunk, real_devno)
        if first:
            try:
                await tx.reload(top, f"0 {origin.extents * vg.extent_size} snapshot-origin {real_devno}")
            except DmemuError as e:
                raise _ReloadRefused(e, kern.devs[top]["devno"], snap_info["devno"]) from None
        await tx.resume(top)
    except BaseException:
        with trio.CancelScope(shield=True):
            await tx.rollback()
        raise
    tx.commit()


async def remove_snapshot_dm(k, kern: Kernel, vg: VG, cow: LV) -> None:
    _, seg = vg.snapshot_of_cow(cow.name)
    origin = vg.lvs[seg.origin]
    top, snapdev = dm_name(vg.name, origin.name), dm_name(vg.name, cow.name)
    if snapdev not in kern.devs:
        return
    await act.in_use_error(kern, vg, [snapdev], lambda n: cow.name)
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


async def extend_cow_live(k, vg: VG, origin: LV, cow: LV) -> None:
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
