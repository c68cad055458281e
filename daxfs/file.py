"""File data I/O: open and release, read and write, block mapping and truncation.

Data goes straight to the device (daxfs keeps no data cache): effective-DAX files load and
store the pmem through direct_access mappings (dax.py), others use bios. A write allocates
the blocks it needs, writes the data, then records the inode as dirty, so no commit can make
a block reachable before its data is on the device.
"""
import bisect
import errno
import os
import time

from . import format as fmt
from .errors import FsError
from .freeze import FastLock
from .inode import Inode

BS = fmt.BLOCK_SIZE
RELATIME_NS = 24 * 3600 * 10**9


class Handle:
    __slots__ = ("inode", "flags")

    def __init__(self, inode: Inode, flags: int):
        self.inode = inode
        self.flags = flags


class FileIO:
    def effective_dax(self, inode: Inode) -> bool:
        """S_DAX: decided when the inode comes into use, kept until its last close, so a
        flag change on an open file takes effect only afterwards (dax.rst, generic/608)."""
        if inode.s_dax is not None:
            return inode.s_dax
        return self.dax.decide(inode.is_reg, bool(inode.flags & fmt.IFLAG_DAX))

    def _open_handle(self, inode: Inode, flags: int) -> int:
        if inode.is_reg and not self.opens.get(inode.ino):
            # S_DAX is decided as the inode comes into use and kept until the last close
            inode.s_dax = self.dax.decide(True, bool(inode.flags & fmt.IFLAG_DAX))
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = Handle(inode, flags)
        self.opens[inode.ino] = self.opens.get(inode.ino, 0) + 1
        return fh

    def handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise FsError(errno.EBADF, "bad file handle")
        return h

    def open_for_writing(self) -> list[tuple[int, int]]:
        """(ino, generation) of each regular file open for writing: the files whose pages
        the kernel may hold dirty (a shared writable mapping keeps its file open)."""
        found = {}
        for h in self.handles.values():
            if h.inode.is_reg and h.flags & os.O_ACCMODE != os.O_RDONLY:
                found[h.inode.ino] = h.inode.generation
        return list(found.items())

    async def open(self, ino: int, flags: int, kill: bool = False) -> int:
        """kill: an O_TRUNC open by a caller without CAP_FSETID, whose truncation kills
        set-id bits (FUSE_OPEN_KILL_SUIDGID, killpriv.py)."""
        inode = await self.iget(ino)
        if inode.is_dir and flags & os.O_ACCMODE != os.O_RDONLY:
            raise FsError(errno.EISDIR, "is a directory")
        if flags & os.O_ACCMODE != os.O_RDONLY:
            self._writable()
        self._alive()
        fh = self._open_handle(inode, flags)
        if flags & os.O_TRUNC and inode.is_reg and (inode.size or kill):
            await self.setattr(ino, size=0, kill=kill)
        return fh

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        ino = h.inode.ino
        left = self.opens.get(ino, 0) - 1
        if left > 0:
            self.opens[ino] = left
            return
        self.opens.pop(ino, None)
        h.inode.s_dax = None        # not in use any more: the next open decides afresh
        if h.inode.nlink == 0 and not self.read_only and not self.dead:
            async with self.lock:
                await self._release_if_unused(h.inode)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        """Reads take no lock, so a read never waits for a commit or another file's write."""
        inode = self.handle(fh).inode
        if inode.is_dir:
            raise FsError(errno.EISDIR, "is a directory")
        for _ in range(3):
            epoch = self.balloc.reuse_epoch
            data = await self._read_data(inode, off, size)
            if self.balloc.reuse_epoch == epoch:
                break
            # while this read waited on the device, blocks it mapped may have been freed
            # and become reusable: read again (without the lock, unless that keeps happening)
        else:
            async with self.lock:
                data = await self._read_data(inode, off, size)
        if self.relatime and (self.strictatime or inode.atime_ns <= inode.mtime_ns
                              or inode.atime_ns <= inode.ctime_ns
                              or time.time_ns() - inode.atime_ns > RELATIME_NS):
            self._touch_atime(inode)
        return data

    def _touch_atime(self, inode: Inode) -> None:
        """relatime, as Linux's default: update atime on the first read after a change or
        once a day. Done without waiting, with no await between the check and the change.
        While another task is inside the lock (a commit, a write), the task makes the
        change, with this read's time, as it lets go: a read that came during a commit
        used to leave the old atime for good. While the filesystem is frozen it is
        skipped, as Linux's touch_atime skips it."""
        if not inode.mode or self.read_only or self.lock.frozen:
            return
        now = time.time_ns()
        if self.lock.busy:
            self.lock.defer(("atime", inode.ino), lambda: self._set_atime(inode, now))
        else:
            self._set_atime(inode, now)

    def _set_atime(self, inode: Inode, now: int) -> None:
        # the inode may have been freed, or forgotten and evicted, since the read
        if (not inode.mode or self.read_only or self.dead
                or self.inodes.get(inode.ino) is not inode):
            return
        inode.atime_ns = now
        self._dirty_times(inode)
        # the kernel caches attributes: tell it the atime changed
        if self.on_invalidate is not None:
            self.on_invalidate(inode.ino)

    async def _read_data(self, inode: Inode, off: int, size: int) -> bytes:
        """One device read per extent the range touches, of just the sectors needed (the
        usual page-aligned read is returned as read, without a copy); holes read as zeros.
        A DAX file's read is usually a view of the pmem itself, handed to the kernel as
        the reply with no copy in this process (no await comes between). A read over
        several extents joins its views after the later parts' awaits: read() reads again
        if a block was freed and reused meanwhile (the reuse epoch)."""
        if off < 0:
            raise FsError(errno.EINVAL, "negative offset")
        self._alive()
        # Effective-DAX files load from the pmem through direct_access mappings; others
        # read with bios. Both go straight to the device: daxfs keeps no data cache.
        dax = self.daxio is not None and self.effective_dax(inode)
        end = min(off + size, inode.size)
        if off >= end:
            return b""
        parts = []
        pos = off
        while pos < end:
            lblk = pos // BS
            pblk, run = inode.map(lblk)
            stop = end if run == 0 else min(end, (lblk + run) * BS)
            if pblk and dax:
                # byte-addressable: exactly the bytes asked for, usually a view of the pmem
                parts.append(await self.daxio.load(pblk * BS + (pos - lblk * BS), stop - pos))
            elif pblk:
                byte = pblk * BS + (pos - lblk * BS)
                first = byte >> 9
                last = (byte + (stop - pos) + 511) >> 9
                data = await self.dev.read(first, (last - first) << 9)
                skip = byte - (first << 9)
                if skip or len(data) != stop - pos:
                    data = data[skip:skip + stop - pos]
                parts.append(data)
            else:
                parts.append(bytes(stop - pos))
            pos = stop
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def write(self, fh: int, off: int, data, kill: bool = False) -> int:
        """kill: the writer lacks CAP_FSETID and the kernel left killing the file's set-id
        bits to us (FUSE_WRITE_KILL_SUIDGID, killpriv.py); done before the data is
        written, as file_remove_privs does."""
        h = self.handle(fh)
        inode = h.inode
        if not inode.is_reg:
            raise FsError(errno.EINVAL if not inode.is_dir else errno.EISDIR, "not a file")
        # with the kernel's writeback cache, dirty pages come back through any open handle
        # and the kernel has already placed O_APPEND writes
        if not self.writeback_cache and h.flags & os.O_ACCMODE == os.O_RDONLY:
            raise FsError(errno.EBADF, "file not open for writing")
        if not data:
            return 0
        if off < 0:
            raise FsError(errno.EINVAL, "negative offset")
        async with self._inode_lock(inode):
            if not self.writeback_cache and h.flags & os.O_APPEND:
                off = inode.size
            if off + len(data) > fmt.MAX_FILE_SIZE:
                raise FsError(errno.EFBIG, "file too large")
            # 1. under the filesystem lock: space, and the blocks the holes need, reserved
            async with self.lock:
                self._writable()
                self._alive()
                if kill:
                    await self._kill_privs(inode)
                n = await self._fit_to_space(inode, off, len(data))
                if n < len(data):       # a short write when the device fills up, as Linux
                    data = memoryview(data)[:n]
                new, margin = await self._prepare_write(inode, off, len(data))
            # 2. the data, under the inode's lock only: other files' operations, commits
            # and reads go on meanwhile
            try:
                await self._store(inode, off, data, new)
            except BaseException:
                self._unprepare(new, margin)
                raise
            # 3. under the filesystem lock again: the new blocks become the file's
            async with self.lock:
                self._claim(inode, new, margin)
                now = time.time_ns()
                inode.mtime_ns = inode.ctime_ns = now
                if off + len(data) > inode.size:
                    inode.size = off + len(data)
                    self._dirty(inode)
                elif new:
                    self._dirty(inode)
                else:
                    self._dirty_times(inode)
                if h.flags & os.O_SYNC == os.O_SYNC:     # O_SYNC includes the O_DSYNC bit
                    await self._sync_inode(inode, datasync=False)
                elif h.flags & os.O_DSYNC or inode.sync_mode:
                    # The synchronous mode keeps MAP_SYNC's promise: the metadata that
                    # reaches the data just written is durable when the write returns.
                    await self._sync_inode(inode, datasync=True)
                else:
                    await self._maybe_commit()
        return len(data)

    @staticmethod
    def _inode_lock(inode: Inode) -> FastLock:
        """Serialises what changes one file's data and size (writes, truncation)."""
        if inode.ilock is None:
            inode.ilock = FastLock()
        return inode.ilock

    async def _fit_to_space(self, inode: Inode, off: int, length: int) -> int:
        """How many bytes from off can be written with the free blocks left (ENOSPC if
        none): holes in the range need new blocks, mapped blocks do not."""
        first, last = off // BS, (off + length - 1) // BS
        need = 0
        lblk = first
        while lblk <= last:
            pblk, run = inode.map(lblk)
            n = last + 1 - lblk if run == 0 else min(run, last + 1 - lblk)
            if not pblk:
                need += n
            lblk += n
        margin = 2 + need // fmt.EXTENTS_PER_BLOCK
        if need + margin <= self.balloc.available:
            return length
        if self.balloc.pending_count:
            await self._commit()
            await self.journal.reset()
            self.balloc.release_pending()
            if need + margin <= self.balloc.available:
                return length
        budget = self.balloc.available - 2 - self.balloc.available // fmt.EXTENTS_PER_BLOCK
        if budget <= 0:
            raise FsError(errno.ENOSPC, "no space left on device")
        lblk = first
        while lblk <= last:
            pblk, run = inode.map(lblk)
            n = last + 1 - lblk if run == 0 else min(run, last + 1 - lblk)
            if not pblk:
                if n > budget:
                    lblk += budget
                    break
                budget -= n
            lblk += n
        return max(0, min(length, lblk * BS - off))

    async def _write_data(self, inode: Inode, off: int, data) -> bool:
        """Allocate what the range needs and write it, all under the filesystem lock (a
        symlink's target). Returns whether blocks were allocated."""
        new, margin = await self._prepare_write(inode, off, len(data))
        try:
            await self._store(inode, off, data, new)
        except BaseException:
            self._unprepare(new, margin)
            raise
        self._claim(inode, new, margin)
        return bool(new)

    async def _prepare_write(self, inode: Inode, off: int, length: int):
        """Reserve device blocks for the holes of the range (filesystem lock held); they
        stay out of the on-device bitmap and out of the file's extents until ``_claim``,
        so no commit can make them reachable before their data is written."""
        first, last = off // BS, (off + length - 1) // BS
        holes = []
        lblk = first
        while lblk <= last:
            pblk, run = inode.map(lblk)
            n = last + 1 - lblk if run == 0 else min(run, last + 1 - lblk)
            if not pblk:
                holes.append((lblk, n))
            lblk += n
        if not holes:
            return [], 0
        need = sum(n for _, n in holes)
        margin = 2 + need // fmt.EXTENTS_PER_BLOCK      # extent-chain blocks, at claim
        await self._reserve(need + margin)
        new = []
        for lblk, n in holes:
            for pblk, cnt in self.balloc.reserve(n, self._goal(inode, lblk)):
                new.append((lblk, cnt, pblk))
                lblk += cnt
        self.balloc.hold(margin)
        return new, margin

    def _unprepare(self, new, margin: int) -> None:
        for _, n, pblk in new:
            self.balloc.unreserve(pblk, n)
        if new:
            self.balloc.unhold(margin)

    def _claim(self, inode: Inode, new, margin: int) -> None:
        """The data of the reserved blocks is written: they become the file's (filesystem
        lock held)."""
        if not new:
            return
        self.balloc.unhold(margin)
        for lblk, n, pblk in new:
            self.balloc.claim(pblk, n)
            inode.add_extent(lblk, n, pblk)
        self._fit_chain(inode)

    async def _store(self, inode: Inode, off: int, data, new) -> None:
        """Write the range with one device write per run of contiguous device blocks,
        through the file's blocks and the reserved ``new`` runs. A block the range covers
        in part (at either edge) is read, changed and written whole on its own, so the
        whole blocks between go out straight from the request's buffer: an unaligned
        1 MiB write is not copied into a second 1 MiB buffer first. The inode's lock is
        held, so its size and blocks do not change meanwhile."""
        data = memoryview(data)
        # Effective-DAX files store into the pmem and flush each store to the persistence
        # domain before the write returns; others write bios.
        io = self.daxio if self.daxio is not None and self.effective_dax(inode) else self.dev
        end = off + len(data)
        first, last = off // BS, (end - 1) // BS
        starts = [r[0] for r in new]

        def pmap(lblk: int) -> tuple[int, int]:
            i = bisect.bisect_right(starts, lblk) - 1
            if i >= 0 and lblk < new[i][0] + new[i][1]:
                s, n, p = new[i]
                return p + lblk - s, s + n - lblk
            pblk, run = inode.map(lblk)
            if i + 1 < len(new):
                run = min(run or (1 << 62), new[i + 1][0] - lblk)
            return pblk, run

        async def partial(lblk: int, at: int, piece) -> None:
            # a newly allocated block holds someone else's old data: zeros around the piece
            sector = pmap(lblk)[0] * fmt.BLOCK_SECTORS
            fresh = any(s <= lblk < s + n for s, n, _ in new)
            buf = bytearray(BS) if fresh else bytearray(await io.read(sector, BS))
            buf[at:at + len(piece)] = piece
            await io.write(sector, buf)
        if end > inode.size:
            await self._zero_tail(inode)
        head, tail = off % BS, end % BS
        lblk, pos = first, 0
        if head or (tail and first == last):
            pos = min(len(data), BS - head)
            await partial(first, head, data[:pos])
            lblk += 1
        whole_end = last if tail else last + 1     # blocks [lblk, whole_end) are whole
        while lblk < whole_end:
            pblk, run = pmap(lblk)
            n = min(run, whole_end - lblk)
            await io.write(pblk * fmt.BLOCK_SECTORS, data[pos:pos + n * BS])
            pos += n * BS
            lblk += n
        if tail and lblk == last:
            await partial(last, 0, data[pos:])

    @staticmethod
    def _goal(inode: Inode, lblk: int) -> int:
        """Where the file's blocks near lblk are, so new blocks can follow them."""
        if not inode.ext_lblk:
            return 0
        i = max(0, min(len(inode.ext_lblk) - 1, bisect.bisect_right(inode.ext_lblk, lblk) - 1))
        return inode.ext_pblk[i] + (lblk - inode.ext_lblk[i])

    def _alloc_blocks(self, inode: Inode, lblk: int, n: int) -> None:
        """Map file blocks lblk..lblk+n-1 (a hole) to newly allocated device blocks."""
        for pblk, cnt in self.balloc.alloc(n, self._goal(inode, lblk)):
            inode.add_extent(lblk, cnt, pblk)
            lblk += cnt

    def _fit_chain(self, inode: Inode) -> None:
        """Give the extent chain exactly as many blocks as the extents need."""
        n = len(inode.ext_lblk)
        need = 0 if n <= fmt.INLINE_EXTENTS else -(-n // fmt.EXTENTS_PER_BLOCK)
        if len(inode.chain) == need == 0:
            inode.extents_dirty = True
            self._dirty(inode)
            return
        if not isinstance(inode.chain, list):
            inode.chain = []
        while len(inode.chain) > need:
            self.balloc.free_run(inode.chain.pop(), 1)
        if len(inode.chain) < need:
            for pblk, cnt in self.balloc.alloc(need - len(inode.chain)):
                inode.chain.extend(range(pblk, pblk + cnt))
        inode.extents_dirty = True
        self._dirty(inode)

    async def _truncate(self, inode: Inode, size: int) -> None:
        if size > inode.size:
            await self._zero_tail(inode)
        elif size < inode.size:
            freed = inode.truncate_extents(-(-size // BS))
            for pblk, n in freed:
                self.balloc.free_run(pblk, n)
            if freed:
                self._fit_chain(inode)
        inode.size = size
        self._touch(inode, mtime=True)

    async def _zero_tail(self, inode: Inode) -> None:
        """Bytes between EOF and the end of its block may hold data of an earlier, longer
        file size; zero them before the size grows over them."""
        tail = inode.size % BS
        if not tail:
            return
        pblk, _ = inode.map(inode.size // BS)
        if pblk:
            first = tail // 512 * 512
            sector = pblk * fmt.BLOCK_SECTORS + first // 512
            head = await self.dev.read(sector, 512) if tail % 512 else b""
            buf = bytearray(BS - first)
            if head:
                buf[:tail - first] = head[:tail - first]
            await self.dev.write(sector, buf)
