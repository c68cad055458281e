"""lvconvert --merge and its poller (lvm2's lvconvert.c and lvconvert_poll.c).

A merge starts by marking the snapshot merging in the metadata (merging_store). If the
origin is active and nobody has it or the snapshot open, its device is reloaded at once
with a snapshot-merge table (the snapshot's own device goes) and dmemud copies the chunks
back while the origin stays usable; otherwise the merge waits for the origin's next
activation, which builds the snapshot-merge table from the metadata. A poller watches the
origin's status until the store is empty, then finishes: the origin goes back to a linear
table and the snapshot leaves the metadata. ``lvconvert --merge`` polls in the foreground,
``-b`` and every activation of a merging origin leave it to a background ``lvpoll``, as
lvm2 leaves it to lvmpolld.

A crash or power failure part-way is harmless: the kernel side forgets a chunk only once
it is on the origin, the metadata still says merging, and the next activation carries on.
"""
import os
import subprocess
import sys
from pathlib import Path

import trio

from ...errors import DmemuError
from ...paths import StatePaths
from .. import activate as act
from .. import merge as cowio
from ..activate import Kernel, Transaction, dm_name, linear_table
from ..errors import EINVALID_CMD_LINE, LvmError
from ..lock import locked
from ..names import parse_lv
from .common import say, scan, vg_locked

DEFAULT_INTERVAL = 15           # seconds between progress lines: lvm2's polling_interval


async def lvconvert(k, args) -> None:
    if not args.merge:
        raise LvmError("Only --merge of a snapshot is supported here.", EINVALID_CMD_LINE)
    vgname, name = parse_lv(args.lv)
    async with locked(vgname):
        st, vg = await vg_locked(k, vgname, write=True)
        kern = Kernel(k)
        await kern.refresh()
        if name not in vg.lvs:
            raise LvmError(f'Failed to find logical volume "{vg.name}/{name}"')
        if not vg.is_cow(name):
            raise LvmError(f"{vg.name}/{name} is not a mergeable logical volume.")
        snap_lv, seg = vg.snapshot_of_cow(name)
        origin, cow = vg.lvs[seg.origin], vg.lvs[name]
        busy = vg.merging_into(origin.name)
        if busy:
            raise LvmError(f"Cannot merge snapshot {vg.name}/{name} into the origin "
                           f"{vg.name}/{origin.name} with merging snapshot {vg.name}/{busy}.")
        others = [c for c in vg.snapshots_of(origin.name) if c != name]
        if others:
            raise LvmError(f"Unable to merge {vg.name}/{name}: origin {vg.name}/{origin.name} has "
                           f"other snapshots ({', '.join(others)}); remove them first.")
        top, snapdev = dm_name(vg.name, origin.name), dm_name(vg.name, name)
        if not await _valid(k, kern, vg, cow, seg, snapdev):
            raise LvmError(f"Unable to merge invalidated snapshot LV {vg.name}/{name}.")
        defer = None
        if kern.active(top):
            if kern.in_use(top):
                defer = "Delaying merge since origin is open."
            elif kern.in_use(snapdev):
                defer = "Delaying merge since snapshot is open."
        seg.merging = True
        if defer or not kern.active(top):
            await st.commit(vg)
            if defer:
                say(defer)
            say(f"Merging of snapshot {vg.name}/{name} will occur on next activation of "
                f"{vg.name}/{origin.name}.")
            return
        await st.commit(vg)
        try:
            await _start(k, kern, vg, origin, cow)
        except DmemuError as e:
            seg.merging = False
            await st.commit(vg)
            raise LvmError(f"{e.message}\n  Failed to start merging {vg.name}/{name}. "
                           f"Nothing was changed.")
        say(f"Merging of volume {vg.name}/{name} started.")
    if args.background:
        start_background_poll(vg.name, origin.name, args.interval)
    else:
        await poll_merge(k, vg.name, origin.name, args.interval, progress=True)


async def _valid(k, kern: Kernel, vg, cow, seg, snapdev: str) -> bool:
    """Not invalidated: the kernel's status when the snapshot is active, else the COW's
    header (an active store wrote valid=0 there when it invalidated)."""
    d = kern.devs.get(snapdev)
    if d and d["live"] and d["status"]:
        return d["status"][0].split()[3:4] != ["Invalid"]
    io = cowio.LvIO(k, vg, cow)
    try:
        valid, _, _ = await cowio.read_cow(io, seg.chunk_size)
    finally:
        await io.flush_and_close()
    return valid


async def _start(k, kern: Kernel, vg, origin, cow) -> None:
    """Reload the active origin with snapshot-merge: suspend it and the snapshot, load,
    resume (the merge target takes the snapshot's exceptions over from its suspended
    device, as snapshot_preresume requires), then drop the snapshot's own device; any
    refusal undoes every step."""
    top, snapdev = dm_name(vg.name, origin.name), dm_name(vg.name, cow.name)
    real = kern.devs[dm_name(vg.name, origin.name, "real")]["devno"]
    cowdev = kern.devs[dm_name(vg.name, cow.name, "cow")]["devno"]
    _, seg = vg.snapshot_of_cow(cow.name)
    tx = Transaction(k)
    try:
        await tx.suspend(top)
        await tx.suspend(snapdev)
        await tx.reload(top, f"0 {origin.extents * vg.extent_size} snapshot-merge {real} "
                             f"{cowdev} P {seg.chunk_size}")
        await tx.resume(top)
    except BaseException:
        await tx.rollback()
        raise
    tx.commit()
    # Handed over: the snapshot's device gets no more I/O and goes, as LVM removes it.
    await k.call("dm_remove", name=snapdev)


def start_background_poll(vgname: str, lvname: str, interval: int | None = None) -> None:
    """What lvmpolld does for lvm2: a detached ``lvm lvpoll`` that finishes the merge."""
    top = Path(__file__).resolve().parents[3]
    env = dict(os.environ, PYTHONPATH=str(top) + (":" + os.environ["PYTHONPATH"]
                                                   if os.environ.get("PYTHONPATH") else ""))
    paths = StatePaths()
    paths.ensure()
    with open(paths.root / "lvmpolld.log", "ab") as logf:
        subprocess.Popen(
            [sys.executable, "-P", "-c", "import sys; sys.argv[0] = 'lvm'; "
                                   "from dmemu.cli.lvm import main; sys.exit(main())",
             "lvpoll", "--polloperation", "merge",
             "-i", str(DEFAULT_INTERVAL if interval is None else interval),
             f"{vgname}/{lvname}"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env,
            start_new_session=True, close_fds=True)


async def lvpoll(k, args) -> None:
    if args.polloperation != "merge":
        raise LvmError(f"Unsupported polling operation {args.polloperation}: only merge "
                       f"is polled here.", EINVALID_CMD_LINE)
    vgname, name = parse_lv(args.lv)
    await poll_merge(k, vgname, name, args.interval, progress=True)


def _percent(status: str) -> float | None:
    """lvm2's snapshot percent of a snapshot-merge status: 0 when only metadata is left."""
    words = status.split()
    try:
        used, total = (int(x) for x in words[3].split("/"))
        meta = int(words[4])
    except (IndexError, ValueError):
        return None
    return 0.0 if used == meta else used * 100 / total


async def poll_merge(k, vgname: str, name: str, interval: int | None, *, progress: bool) -> None:
    """poll_merge_progress until the store is empty, then lvconvert_merge_finish."""
    interval = DEFAULT_INTERVAL if interval is None else interval
    display = f"{vgname}/{name}"
    top = dm_name(vgname, name)
    while True:
        st = await scan(k)
        vg = st.vgs.get(vgname)
        if vg is None or name not in vg.lvs or not vg.merging_into(name):
            say(f"Logical volume {display} is no longer merging origin, polling has finished.")
            return
        kern = Kernel(k)
        await kern.refresh()
        d = kern.devs.get(top)
        if not d or not d["live"] or not d["table"] or "snapshot-merge" not in d["table"][0]:
            # Another poller (the activation's) may have finished the merge since the scan
            # above: ask the metadata again under the VG lock, which finish_merge holds
            # from its table reload to its metadata commit.
            async with locked(vgname):
                vg = (await scan(k)).vgs.get(vgname)
            if vg is None or name not in vg.lvs or not vg.merging_into(name):
                say(f"Logical volume {display} is no longer merging origin, polling has finished.")
            else:
                say(f"{display}: Interrupted: No longer active.")
            return
        status = d["status"][0] if d["status"] else ""
        if status.split()[3:4] == ["Invalid"]:
            raise LvmError(f"{display}: Merging snapshot invalidated. Aborting merge.")
        if " ".join(status.split()[3:]) == "Merge failed":
            raise LvmError(f"{display}: Merge failed. Retry merge or inspect manually.")
        pct = _percent(status)
        if pct is None:
            raise LvmError(f"{display}: Failed query for merging percentage. Aborting merge.")
        if progress:
            say(f"{display}: Merged: {100 - pct:.2f}%")
        if pct == 0.0:
            await finish_merge(k, vgname, name)
            return
        # The target raises a table event when the store runs empty (or the merge fails).
        with trio.move_on_after(interval if interval > 0 else 0.1):
            await k.call("dm_wait", name=top, event_nr=d["event_nr"])


async def finish_merge(k, vgname: str, name: str) -> None:
    """The merge is complete: the origin back to linear, the snapshot out of the metadata.
    Under the VG lock, and only if the metadata still says merging (a second poller, or
    the activation's, may have finished first)."""
    display = f"{vgname}/{name}"
    async with locked(vgname):
        st, vg = await vg_locked(k, vgname, write=True)
        cname = vg.merging_into(name) if name in vg.lvs else None
        if cname is None:
            say(f"Logical volume {display} is no longer merging origin, polling has finished.")
            return
        say(f"Merge of snapshot into logical volume {display} has finished.")
        kern = Kernel(k)
        await kern.refresh()
        origin = vg.lvs[name]
        top = dm_name(vgname, name)
        if kern.active(top):
            tx = Transaction(k)
            try:
                await tx.suspend(top)
                await tx.reload(top, linear_table(vg, origin))
                await tx.resume(top)
            except DmemuError as e:
                await tx.rollback()
                raise LvmError(f"{e.message}\n  Could not remove snapshot {vgname}/{cname} "
                               f"merged into {display}.")
            tx.commit()
            for layer in (dm_name(vgname, cname, "cow"), dm_name(vgname, name, "real")):
                if layer in kern.devs:
                    await k.call("dm_remove", name=layer)
        hidden, _ = vg.snapshot_of_cow(cname)
        del vg.lvs[hidden.name], vg.lvs[cname]
        await st.commit(vg)
        say(f'Logical volume "{cname}" successfully removed.')


