"""Activation: LVs as device-mapper devices in dmemud, with LVM's names, uuids and layers.

A linear LV is one device ``vg-lv`` with a ``linear <pv devno> <pe_start + pe * extent_size>``
line per segment. An origin with snapshots is four kinds of device (lvm2 activate/dev_manager.c):

    vg-lv-real   linear: the origin's own extents          uuid LVM-<vg><lv>-real
    vg-snap-cow  linear: a snapshot's COW extents          uuid LVM-<vg><snap>-cow
    vg-snap      snapshot <real> <cow> P <chunk>           uuid LVM-<vg><snap>
    vg-lv        snapshot-origin <real>                    uuid LVM-<vg><lv>

Every '-' inside a VG or LV name is doubled in the DM name, so the split is unambiguous.
Each multi-step change runs in a Transaction that undoes what it did if a later step fails,
so a refusal from dmemud leaves no half-made stack.
"""
import logging

import trio

from ..errors import DmemuError
from .errors import LvmError
from .label import uuid_nodash
from .vg import LV, VG

log = logging.getLogger(__name__)


def dm_name(vg: str, lv: str, layer: str | None = None) -> str:
    name = vg.replace("-", "--") + "-" + lv.replace("-", "--")
    return name + (f"-{layer}" if layer else "")


def split_dm_name(name: str) -> tuple[str, str, str] | None:
    """'vg0-lv0-real' -> ('vg0', 'lv0', 'real'); '-' doubled inside names."""
    parts, cur, i = [], "", 0
    while i < len(name):
        if name[i] == "-":
            if name[i + 1:i + 2] == "-":
                cur += "-"
                i += 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += name[i]
        i += 1
    parts.append(cur)
    if len(parts) < 2 or not all(parts):
        return None
    return parts[0], parts[1], parts[2] if len(parts) > 2 else ""


def dm_uuid(vg: VG, lv: LV, layer: str | None = None) -> str:
    return "LVM-" + uuid_nodash(vg.id) + uuid_nodash(lv.id) + (f"-{layer}" if layer else "")


def linear_table(vg: VG, lv: LV) -> str:
    lines = []
    for s in lv.segments:
        pvkey, pe = s.stripes[0]
        pv = vg.pvs[pvkey]
        if pv.devno is None:
            raise LvmError(f"Couldn't find device with uuid {pv.id}: cannot activate "
                           f"{vg.name}/{lv.name}.")
        first = pv.pe_start + pe * vg.extent_size
        length = s.extent_count * vg.extent_size
        if first < pv.data_start or (pv.dev_sectors and first + length > pv.dev_sectors):
            # The scan refuses such metadata; this is the last guard before a table maps it.
            raise LvmError(f"Refusing to activate {vg.name}/{lv.name}: its sectors {first}-"
                           f"{first + length - 1} on {pv.device} are not in the PV's data area.")
        lines.append(f"{s.start_extent * vg.extent_size} {s.extent_count * vg.extent_size} linear "
                     f"{pv.devno} {pv.pe_start + pe * vg.extent_size}")
    return "\n".join(lines)


class Kernel:
    """dmemud's device-mapper state as seen by one command."""

    def __init__(self, k):
        self.k = k
        self.devs: dict[str, dict] = {}
        self.opens: list[dict] = []
        self.profile = "fixed"

    async def refresh(self) -> None:
        self.devs = {d["name"]: d for d in (await self.k.call("dm_list"))["devices"]}
        status = await self.k.call("status")
        self.opens, self.profile = status["opens"], status.get("profile", "fixed")

    @property
    def linux(self) -> bool:
        """dmemud behaves as Linux 6.1 does, so the commands speak as LVM 2.03.16 does."""
        return self.profile == "linux"

    def active(self, name: str) -> bool:
        d = self.devs.get(name)
        return bool(d and d["live"])

    def in_use(self, name: str) -> str | None:
        """'fs' when claimed exclusively (mounted), 'open' when open otherwise, else None."""
        d = self.devs.get(name)
        if d is None:
            return None
        mine = [o for o in self.opens if o["device"] == name]
        if any(o.get("mounted", o["exclusive"]) for o in mine):
            return "fs"
        if mine or d["open_count"]:
            return "open"
        return None


class Transaction:
    """DM changes with their undo steps, run in reverse if the whole does not complete."""

    def __init__(self, k):
        self.k = k
        self.undo: list = []

    async def create(self, name: str, uuid: str, table: str) -> dict:
        info = await self.k.call("dm_create", name=name, uuid=uuid, table=table)
        self.undo.append(("remove", name))
        return info

    async def suspend(self, name: str) -> None:
        await self.k.call("dm_suspend", name=name)
        self.undo.append(("resume", name))

    async def reload(self, name: str, table: str) -> None:
        await self.k.call("dm_load", name=name, table=table)
        self.undo.append(("clear", name))

    async def resume(self, name: str) -> None:
        await self.k.call("dm_resume", name=name)
        # Once resumed with the new table there is no inactive table left to clear.
        self.undo = [u for u in self.undo if u != ("clear", name) and u != ("resume", name)]

    async def rollback(self) -> None:
        for op, name in reversed(self.undo):
            try:
                if op == "remove":
                    await self.k.call("dm_remove", name=name)
                elif op == "clear":
                    await self.k.call("dm_clear", name=name)
                elif op == "resume":
                    await self.k.call("dm_resume", name=name)
            except DmemuError as e:
                log.error("undo %s %s failed: %s", op, name, e)
        self.undo = []

    def commit(self) -> None:
        self.undo = []


def cow_table(vg: VG, cow: LV) -> str:
    return linear_table(vg, cow)


async def add_snapshot(tx: Transaction, vg: VG, origin: LV, cow: LV, chunk: int, real_devno: str):
    cow_info = await tx.create(dm_name(vg.name, cow.name, "cow"), dm_uuid(vg, cow, "cow"),
                               cow_table(vg, cow))
    size = origin.extents * vg.extent_size
    return await tx.create(dm_name(vg.name, cow.name), dm_uuid(vg, cow),
                           f"0 {size} snapshot {real_devno} {cow_info['devno']} P {chunk}")


async def merge_table(tx: Transaction, vg: VG, origin: LV, cow: LV, real_devno: str) -> str:
    """The origin's table while ``cow`` merges into it (creating the -cow device)."""
    _, seg = vg.snapshot_of_cow(cow.name)
    cow_info = await tx.create(dm_name(vg.name, cow.name, "cow"), dm_uuid(vg, cow, "cow"),
                               cow_table(vg, cow))
    return (f"0 {origin.extents * vg.extent_size} snapshot-merge {real_devno} "
            f"{cow_info['devno']} P {seg.chunk_size}")


async def activate_lv(k, kern: Kernel, vg: VG, lv: LV) -> None:
    """Activate a user-visible LV (for a snapshot: its origin with all its snapshots)."""
    if vg.is_cow(lv.name):
        _, seg = vg.snapshot_of_cow(lv.name)
        lv = vg.lvs[seg.origin]
    top = dm_name(vg.name, lv.name)
    if kern.active(top):
        return
    tx = Transaction(k)
    try:
        snaps = vg.snapshots_of(lv.name)
        merging = vg.merging_into(lv.name)
        if not snaps:
            await tx.create(top, dm_uuid(vg, lv), linear_table(vg, lv))
        elif merging:
            # A merge started earlier (or deferred): the origin's device carries on with it.
            real = await tx.create(dm_name(vg.name, lv.name, "real"), dm_uuid(vg, lv, "real"),
                                   linear_table(vg, lv))
            await tx.create(top, dm_uuid(vg, lv),
                            await merge_table(tx, vg, lv, vg.lvs[merging], real["devno"]))
        else:
            real = await tx.create(dm_name(vg.name, lv.name, "real"), dm_uuid(vg, lv, "real"),
                                   linear_table(vg, lv))
            for cname in snaps:
                _, seg = vg.snapshot_of_cow(cname)
                await add_snapshot(tx, vg, lv, vg.lvs[cname], seg.chunk_size, real["devno"])
            await tx.create(top, dm_uuid(vg, lv), f"0 {lv.extents * vg.extent_size} "
                                                  f"snapshot-origin {real['devno']}")
    except BaseException:
        await tx.rollback()
        raise
    tx.commit()


def lv_devices(vg: VG, lv: LV) -> list[str]:
    """The DM devices of an origin group or a plain LV, in the order to remove them."""
    if vg.is_cow(lv.name):
        _, seg = vg.snapshot_of_cow(lv.name)
        lv = vg.lvs[seg.origin]
    names = [dm_name(vg.name, lv.name)]
    snaps = vg.snapshots_of(lv.name)
    for c in snaps:
        # A merging snapshot has no device of its own, unless its merge was deferred.
        names += [dm_name(vg.name, c), dm_name(vg.name, c, "cow")]
    if snaps:
        names.append(dm_name(vg.name, lv.name, "real"))
    return names


# lvm2's activation/retry_deactivation: an LV that is open (but not mounted) is checked
# again this many times, this far apart, before "in use": an unmounted filesystem or a
# quick udev rule may still hold it for a moment (lv_check_not_in_use).
OPEN_COUNT_CHECK_RETRIES = 25
OPEN_COUNT_CHECK_DELAY = 0.2


async def in_use_error(kern: Kernel, vg: VG, names: list[str], lvname_of) -> None:
    for attempt in range(OPEN_COUNT_CHECK_RETRIES):
        uses = [(n, kern.in_use(n)) for n in names]
        for n, use in uses:
            if use == "fs":
                raise LvmError(f"Logical volume {vg.name}/{lvname_of(n)} contains a filesystem in use.")
        still_open = [n for n, use in uses if use == "open"]
        if not still_open:
            return
        if attempt + 1 < OPEN_COUNT_CHECK_RETRIES:
            await trio.sleep(OPEN_COUNT_CHECK_DELAY)
            await kern.refresh()
    raise LvmError(f"Logical volume {vg.name}/{lvname_of(still_open[0])} in use.")


def _lv_of_dm(n: str) -> str:
    parts = split_dm_name(n)
    return parts[1] if parts else n


async def deactivate_lv(k, kern: Kernel, vg: VG, lv: LV) -> None:
    """Remove an LV's devices (an origin group whole); refused while any is open."""
    names = [n for n in lv_devices(vg, lv) if n in kern.devs]
    # Only the user-facing devices count: -real and -cow are held by the stack itself.
    await in_use_error(kern, vg, [n for n in names if not n.endswith(("-real", "-cow"))], _lv_of_dm)
    for n in names:
        await k.call("dm_remove", name=n)
        kern.devs.pop(n, None)
