"""lvcreate, lvremove, lvrename, lvextend and lvchange: logical volumes, plain or with
snapshots (the snapshot-specific device-mapper steps are in snapshot.py)."""
import time

import trio

from ...errors import DmemuError
from .. import activate as act
from .. import fsprobe, merge
from . import fsresize
from ..activate import Kernel, Transaction, dm_name, linear_table
from ..errors import EINVALID_CMD_LINE, LvmError
from ..lock import locked
from ..names import parse_lv, parse_vg_or_lv
from ..units import long_size
from ..vg import LV, Segment, check_lv_name, host, new_uuid
from .args import chunk_size, pe_ranges, wanted_extents
from .common import dm_failure, say, vg_locked, warn, yes_no_prompt
from .merge import start_background_poll
from .snapshot import (LinuxRefusal, check_snapshot_dax, extend_cow_live, ioctl_failed,
                       remove_snapshot_dm, snapshot_live)

ZERO_BYTES = 4096               # lvcreate wipes the start of a new LV (and must, for a COW)


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
    chunk = chunk_size(args.chunksize) if args.snapshot else 0
    if args.name is not None:
        check_lv_name(args.name)
    async with locked(vgname):
        st, vg = await vg_locked(k, vgname, write=True)
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
        ranges = pe_ranges(st, vg, pvargs)
        pvkeys = None if ranges is None else list(ranges)
        if origin is not None and pvkeys is None and not kern.linux:
            # Prefer PVs of the origin's kind, so a mixed VG does not pick a COW that the
            # origin cannot be snapshotted with while room remains on the right kind.
            odax = all(vg.pvs[p].dax for p in vg.lv_pvs(origin))
            same = [p for p in vg.pvs if vg.pvs[p].dax == odax]
            n = wanted_extents(vg, args, origin=origin, pvkeys=same)
            # Not enough room there: allocate anywhere and let the DAX check explain.
            pvkeys = same if vg.free_extents(same) >= n else None
        else:
            n = wanted_extents(vg, args, origin=origin, pvkeys=pvkeys, ranges=ranges)
        keys = pvkeys or list(vg.pvs)
        areas = vg.allocate(n, keys, ranges=ranges)
        lv = LV(name, new_uuid(), creation_time=int(time.time()), creation_host=host())
        vg.add_areas(lv, areas)
        if origin is not None and not kern.linux:
            # The new LV's extents are not in vg.lvs yet, so "free" still counts them.
            # (Linux snapshots are never DAX, so it has nothing to check.)
            check_snapshot_dax(vg, origin, name, vg.lv_pvs(lv), n)
        if origin is None and args.wipesignatures == "y":
            await _wipe_signatures(k, vg, lv, args)
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
                raise dm_failure(e, f"activate new LV {vg.name}/{name}")
        else:
            snap = LV(vg.next_snapshot_name(), new_uuid(), ["READ", "WRITE"],
                      [Segment(0, origin.extents, "snapshot", chunk_size=chunk, origin=origin.name,
                               cow_store=name)],
                      int(time.time()), host())
            top = dm_name(vg.name, origin.name)
            if kern.active(top):
                try:
                    await snapshot_live(k, kern, vg, origin, lv, chunk, linux=kern.linux)
                except LinuxRefusal as r:
                    # LVM 2.03.16 wrote the COW as an ordinary LV before it tried the
                    # snapshot, and leaves it behind, inactive, when the suspend fails.
                    await st.commit(vg)
                    raise LvmError("\n  ".join(r.lines)) from None
                vg.lvs[snap.name] = snap
                try:
                    await st.commit(vg)
                except BaseException:
                    # The metadata never named this snapshot: take its devices down again.
                    await kern.refresh()
                    await remove_snapshot_dm(k, kern, vg, lv)
                    raise
            else:
                vg.lvs[snap.name] = snap
                await st.commit(vg)
                try:
                    await act.activate_lv(k, kern, vg, origin)
                except DmemuError as e:
                    raise LvmError(f"{e.message}\n  Failed to activate {vg.name}/{origin.name}.")
        say(f'Logical volume "{name}" created.')


async def lvremove(k, args) -> None:
    for text in args.lvs:
        vgname, lvname = parse_vg_or_lv(text)
        async with locked(vgname):
            st, vg = await vg_locked(k, vgname, write=True)
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
                if vg.is_merging_cow(name):
                    raise LvmError(f"Can't remove merging snapshot logical volume "
                                   f"{vg.name}/{name}.")
                snaps = vg.snapshots_of(name)
                if snaps and not args.force:
                    raise LvmError(f'Can\'t remove logical volume "{name}" with {len(snaps)} '
                                   f'snapshot(s): remove them first, or use -f to remove them too.')
                if vg.is_cow(name):
                    await remove_snapshot_dm(k, kern, vg, lv)
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
        st, vg = await vg_locked(k, vgname, write=True)
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
    """lvextend, lvreduce and lvresize (args.resize says which: 'extend', 'reduce' or 'any')."""
    mode = getattr(args, "resize", "extend")
    resize_fs = _check_fs_options(args, mode)
    vgname, name = parse_lv(args.lv)
    async with locked(vgname):
        st, vg = await vg_locked(k, vgname, write=True)
        kern = Kernel(k)
        await kern.refresh()
        lv = vg.lvs.get(name)
        if lv is None or not lv.visible:
            raise LvmError(f'Logical volume {name} not found in volume group {vg.name}.')
        top = dm_name(vg.name, name)
        if vg.is_merging_cow(name):
            raise LvmError(f"Cannot resize merging snapshot {vg.name}/{name}.")
        ranges = pe_ranges(st, vg, args.pvs)
        pvkeys = None if ranges is None else list(ranges)
        origin = vg.lvs[vg.snapshot_of_cow(name)[1].origin] if vg.is_cow(name) else None
        if origin is not None and pvkeys is None:
            # More COW space goes where the snapshot may have it: PVs of the origin's kind.
            odax = all(vg.pvs[p].dax for p in vg.lv_pvs(origin))
            pvkeys = [p for p in vg.pvs if vg.pvs[p].dax == odax]
        old = lv.extents
        n = wanted_extents(vg, args, current=old, pvkeys=pvkeys, resize=True, ranges=ranges,
                           signs={"extend": "+", "reduce": "-", "any": "+-"}[mode])
        if n <= 0 and (args.size or args.extents or "").startswith("-"):
            raise LvmError(f"Unable to reduce {vg.name}/{name} below 1 extent.")
        if n == 0:
            raise LvmError("New size of 0 not permitted.")
        if n == old:
            say(f"New size ({n} extents) matches existing size ({old} extents).")
            raise LvmError("No size change.")
        if n < old and mode == "extend":
            raise LvmError(f"New size given ({n} extents) not larger than existing size "
                           f"({old} extents)")
        if n > old and mode == "reduce":
            raise LvmError(f"New size given ({n} extents) not less than existing size "
                           f"({old} extents)")
        if vg.is_origin(name) and n < old:
            raise LvmError("Snapshot origin volumes cannot be reduced in size yet.")
        if vg.is_origin(name) and kern.active(top):
            raise LvmError("Snapshot origin volumes can be resized only while inactive: try lvchange -an.")
        # the filesystem of a COW store is the origin's: -r resizes filesystems of plain LVs
        resize_fs = resize_fs and origin is None
        if resize_fs:
            fsresize.require_active(kern.active(top), vg.name, name)
        if n < old:
            await _reduce(k, st, vg, kern, lv, origin, n, args, resize_fs)
            return
        last = lv.segments[-1].stripes[0] if lv.segments else None
        after = (last[0], last[1] + lv.segments[-1].extent_count) if last else None
        areas = vg.allocate(n - old, pvkeys or list(vg.pvs), after=after, ranges=ranges)
        vg.add_areas(lv, areas)
        if origin is not None and not kern.linux:
            check_snapshot_dax(vg, origin, name, vg.lv_pvs(lv), n - old, extend=True)
        if vg.is_origin(name):
            for c in vg.snapshots_of(name):
                vg.snapshot_of_cow(c)[1].extent_count = lv.extents
        if origin is not None and kern.active(top):
            await extend_cow_live(k, vg, origin, lv)
        elif kern.active(top) and kern.linux:
            # lvm2 reports the new size before it reloads; a refused reload reverts the
            # metadata (vg_revert), so nothing is committed.
            eb = vg.extent_bytes()
            say(f"Size of logical volume {vg.name}/{name} changed from {long_size(old * eb)} "
                f"({old} extents) to {long_size(n * eb)} ({n} extents).")
            await _reload_linear_linux(k, kern, vg, lv, top)
            await st.commit(vg)
            if resize_fs:
                await _extend_fs(k, vg, lv, top, kern)
            say(f"Logical volume {vg.name}/{name} successfully resized.")
            return
        elif kern.active(top):
            await _reload_linear(k, vg, lv, top)
        await st.commit(vg)
        if resize_fs:
            _say_size_changed(vg, name, old, n)
            await _extend_fs(k, vg, lv, top, kern)
            say(f"Logical volume {vg.name}/{name} successfully resized.")
            return
        _say_resized(vg, name, old, n)


async def _extend_fs(k, vg, lv, top, kern) -> None:
    """lvm2's fs step after the LV grew (its metadata is committed: a filesystem that
    cannot grow leaves a larger LV, as lvm2 does)."""
    info = await _probe_lv(k, vg, lv)
    await kern.refresh()
    await fsresize.extend(info, vg.name, lv.name, top, lv.extents * vg.extent_bytes(),
                          kern.in_use(top) == "fs")


def _check_fs_options(args, mode: str) -> bool:
    """-r/--resizefs and --fs as lvm2 reads them: True when the filesystem is to be
    resized with the LV (daxfs-resize, as fsadm runs resize2fs)."""
    fs = getattr(args, "fs", None)
    if getattr(args, "resizefs", False) and fs is not None:
        raise LvmError("Options --fs and --resizefs cannot be used together.\n"
                       "  --resizefs is equivalent to --fs resize.", EINVALID_CMD_LINE)
    return bool(getattr(args, "resizefs", False) or fs in ("resize", "resize_fsadm"))


async def _reload_linear(k, vg, lv, top) -> None:
    tx = Transaction(k)
    try:
        await tx.suspend(top)
        await tx.reload(top, linear_table(vg, lv))
        await tx.resume(top)
    except DmemuError as e:
        await tx.rollback()
        raise LvmError(f"{e.message}\n  Failed to resize {vg.name}/{lv.name}. Nothing was changed.")
    tx.commit()


async def _reload_linear_linux(k, kern, vg, lv, top) -> None:
    """_lv_update_and_reload as LVM 2.03.16 does it: a refused reload is 'Failed to lock'."""
    tx = Transaction(k)
    try:
        await tx.suspend(top)
        try:
            await tx.reload(top, linear_table(vg, lv))
        except DmemuError as e:
            raise LvmError(f"{ioctl_failed('reload', kern.devs[top]['devno'], e.errno)}\n"
                           f"  Failed to lock logical volume {vg.name}/{lv.name}.") from None
        await tx.resume(top)
    except BaseException:
        await tx.rollback()
        raise
    tx.commit()


def _say_size_changed(vg, name: str, old: int, n: int) -> None:
    eb = vg.extent_bytes()
    say(f"Size of logical volume {vg.name}/{name} changed from {long_size(old * eb)} "
        f"({old} extents) to {long_size(n * eb)} ({n} extents).")


def _say_resized(vg, name: str, old: int, n: int) -> None:
    _say_size_changed(vg, name, old, n)
    say(f"Logical volume {vg.name}/{name} successfully resized.")


async def _released(k, top: str) -> bool:
    """The filesystem unmounted for a reduce has let go of the device (its daemon is
    gone): up to 30 s, as umount returns before a FUSE server has finished."""
    with trio.move_on_after(30):
        while True:
            kern = Kernel(k)
            await kern.refresh()
            if kern.in_use(top) is None:
                return True
            await trio.sleep(0.1)
    return False


async def _reduce(k, st, vg, kern, lv, origin, n: int, args, resize_fs: bool = False) -> None:
    """Shrink an LV to n extents, after lvm2's --fs checksize (the default): a filesystem
    that reaches past the new end refuses the reduce; with --fs ignore the user is warned
    and asked, as lvm2's _lv_reduce_confirmation, unless -f or -y."""
    name, top = lv.name, dm_name(vg.name, lv.name)
    active = kern.active(top)
    if origin is not None and active:
        # The exception store's chunks may sit past the new end: shrink a COW inactive.
        raise LvmError(f"Snapshot {vg.name}/{name} can be reduced only while inactive: "
                       f"try lvchange -an {vg.name}/{origin.name}.")
    eb = vg.extent_bytes()
    fsopt = "" if origin is not None else "resize" if resize_fs else (args.fs or "checksize")
    if fsopt == "resize":
        # the filesystem shrinks first; a refusal leaves the LV untouched
        await fsresize.reduce(await _probe_lv(k, vg, lv), vg.name, name, top, n * eb,
                              kern.in_use(top) == "fs", yes=bool(args.yes),
                              released=lambda: _released(k, top))
    elif fsopt == "checksize":
        if not active:
            if args.fs is None:
                raise LvmError("The LV must be active to safely reduce (see --fs options.)")
        info = await _probe_lv(k, vg, lv)
        path = f"/dev/{vg.name}/{name}"
        if info is None:
            say(f"No file system found on {path}.")
        else:
            where = fsprobe.mounted_at(fsprobe.lv_sources(vg.name, name, top))
            if where is None and kern.in_use(top) == "fs":
                where = "(mount point unknown)"
            say(f"File system {info.fstype} found on {vg.name}/{name}"
                + (f" mounted at {where}." if where else "."))
            if not info.last_byte:
                raise LvmError("File system device usage is not available from libblkid.")
            cmp = ("equal to" if info.last_byte == n * eb else
                   "smaller than" if info.last_byte < n * eb else "larger than")
            say(f"File system size ({long_size(info.last_byte)}) is {cmp} the requested size "
                f"({long_size(n * eb)}).")
            if info.last_byte > n * eb:
                if info.fstype == "daxfs":       # daxfs-resize can: lvm2 points at -r
                    raise LvmError("File system reduce is required (see --resizefs or cmd "
                                   "line options.)")
                raise LvmError(f"File system reduce is required and not supported ({info.fstype}).")
            say("File system reduce is not needed, skipping.")
    elif fsopt == "ignore" and active:
        info = await _probe_lv(k, vg, lv)
        if info is not None:
            warn(f"WARNING: Reducing active{' and open' if kern.in_use(top) else ''} logical "
                 f"volume to {long_size(n * eb)}.")
            warn("THIS MAY DESTROY YOUR DATA (filesystem etc.)")
            if not (args.force or args.yes) and not yes_no_prompt(
                    f"Do you really want to reduce {vg.name}/{name}? [y/n]: "):
                raise LvmError(f"Logical volume {vg.name}/{name} NOT reduced.")
    old = lv.extents
    cut_extents(lv, n)
    if origin is not None:
        pass    # inactive: the next activation loads the -cow device at its new size
    elif active:
        await _reload_linear(k, vg, lv, top)
    await st.commit(vg)
    _say_resized(vg, name, old, n)


async def _wipe_signatures(k, vg, lv, args) -> None:
    """lvcreate -W y (the default): a filesystem signature left in the new LV's extents is
    erased, after asking unless -y, as lvm2's wipe_lv; a "no" leaves nothing made."""
    info = await _probe_lv(k, vg, lv)
    if info is None:
        return
    path = f"/dev/{vg.name}/{lv.name}"
    if not args.yes and not yes_no_prompt(f"WARNING: {info.fstype} signature detected on "
                                          f"{path} at offset {info.offset}. Wipe it? [y/n]: "):
        raise LvmError(f"Aborted wiping of {info.fstype}.\n"
                       "  Aborting. Failed to wipe start of new LV.")
    io = merge.LvIO(k, vg, lv)
    try:
        await io.write(info.offset // 512, bytes(512))
    finally:
        await io.flush_and_close()
    say(f"Wiping {info.fstype} signature on {path}.")


def cut_extents(lv, n: int) -> None:
    """Keep the first n extents of an LV: later segments go, the last kept one shrinks."""
    kept = []
    for s in lv.segments:
        if s.start_extent >= n:
            break
        s.extent_count = min(s.extent_count, n - s.start_extent)
        kept.append(s)
    lv.segments = kept


async def _probe_lv(k, vg, lv):
    io = merge.LvIO(k, vg, lv)
    try:
        return await fsprobe.probe(lambda sector, nbytes: io.read(sector, nbytes // 512),
                                   lv.extents * vg.extent_size)
    finally:
        await io.flush_and_close()


async def lvchange(k, args) -> None:
    """lvchange -ay|-an: an origin and its snapshots activate and deactivate together."""
    if args.activate is None:
        raise LvmError("Need one or more command options.", EINVALID_CMD_LINE)
    for text in args.lvs:
        vgname, name = parse_lv(text)
        async with locked(vgname):
            st, vg = await vg_locked(k, vgname)
            kern = Kernel(k)
            await kern.refresh()
            lv = vg.lvs.get(name)
            if lv is None or not lv.visible:
                raise LvmError(f'Failed to find logical volume "{vg.name}/{name}"')
            try:
                if args.activate in ("y", "ay"):
                    await act.activate_lv(k, kern, vg, lv)
                    origin = vg.snapshot_of_cow(name)[1].origin if vg.is_cow(name) else name
                    if vg.merging_into(origin):
                        start_background_poll(vg.name, origin)
                else:
                    await act.deactivate_lv(k, kern, vg, lv)
            except DmemuError as e:
                raise LvmError(f"{e.message}\n  Failed to change activation of {vg.name}/{name}.")
