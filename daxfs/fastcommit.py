"""Fast commits: fsync as one small flushed record of what changed, as ext4's fast commits.

A full commit (transaction.py, journal.py) writes every dirty metadata block to the journal
and then home: its cost follows the size of the running transaction, not of what one fsync
needs. An fsync of a file whose changes since the last full commit are its own data, size,
times, mode, owner and extents (the common case: writes to an existing file) instead writes
one record into the fast-commit area: the file's inode as it is now, its extent list and
the blocks of its extent chain (format.FC_FMT). One write with PREFLUSH|FUA makes the data
written before it and the record durable together: one flush, nothing else on the fsync
path. Everything else the running transaction holds waits for the next full commit, which
runs in the background (the periodic commit, a full fast-commit area, syncfs, freeze,
unmount) and makes every record before it stale.

Changes a record cannot express make the inode ineligible until the next full commit
(ext4's "fc ineligible"): a new inode, a link count or parent change (names), xattrs, the
orphan list. fsync of such an inode, of a directory, or when the area is full, does a full
commit as before.

Records carry as lsn the sequence number the next full commit will have and are numbered
from 1 within it; replay takes, after the journal's, every record from the start of the
area whose lsn is the journal's next sequence and whose number is the next one, and stops
at the first that is not (stale, torn or damaged records are never applied). Applying an
entry puts the inode in its slot, rebuilds its extent chain from the extents, and moves
the block bitmap from the blocks the inode held to the ones it holds now; a record that
would take a block another inode holds is refused as damage.
"""
import logging

from . import format as fmt
from .alloc import Bitmap
from .errors import CorruptError
from .inode import Inode
from .journal import write_blocks

log = logging.getLogger(__name__)

BS = fmt.BLOCK_SIZE


def encode_entry(inode: Inode, uuid: bytes) -> bytes:
    """An inode's whole state for a record (format.FC_FMT)."""
    n = len(inode.ext_lblk)
    chain = list(inode.chain)
    out = bytearray(fmt.FC_ENTRY_FMT.pack(inode.ino, len(chain),
                                          n if n > fmt.INLINE_EXTENTS else 0))
    out += inode.pack(uuid)
    for b in chain:
        out += b.to_bytes(8, "little")
    if n > fmt.INLINE_EXTENTS:
        for e in inode.extents():
            out += fmt.EXTENT_FMT.pack(*e)
    return bytes(out)


def decode_entries(buf, count: int, used: int):
    """Yield (ino, raw inode, chain, extents or None) of a record's entries."""
    off = fmt.FC_START
    end = off + used
    for _ in range(count):
        if off + fmt.FC_ENTRY_FMT.size + fmt.INODE_SIZE > end:
            raise CorruptError("fast commit: entry runs past the record")
        ino, nchain, next_ = fmt.FC_ENTRY_FMT.unpack_from(buf, off)
        off += fmt.FC_ENTRY_FMT.size
        raw = bytes(buf[off:off + fmt.INODE_SIZE])
        off += fmt.INODE_SIZE
        if off + 8 * nchain + fmt.EXTENT_FMT.size * next_ > end:
            raise CorruptError("fast commit: entry runs past the record")
        chain = [int.from_bytes(buf[off + 8 * i:off + 8 * i + 8], "little")
                 for i in range(nchain)]
        off += 8 * nchain
        exts = None
        if next_:
            exts = [fmt.EXTENT_FMT.unpack_from(buf, off + fmt.EXTENT_FMT.size * i)
                    for i in range(next_)]
            off += fmt.EXTENT_FMT.size * next_
        yield ino, raw, chain, exts
    if off != end:
        raise CorruptError("fast commit: used size does not match the entries")


class FastCommitLog:
    """The fast-commit area of a mounted filesystem: where the next record goes."""

    def __init__(self, dev, sb: fmt.Superblock):
        self.dev = dev
        self.sb = sb
        self.head = 0               # index in the area of the next record
        self.records = 0            # written since mount (statistics)
        self.kick = None            # callable: ask the background committer for a commit
        # the crash checker's broken mode (x-crashcheck-skip-flush) covers records too
        self.skip_preflush = False

    def reset(self) -> None:
        """A full commit made every record stale: start the area over."""
        self.head = 0

    async def append(self, inode: Inode, lsn: int) -> bool:
        """Write a record of inode; durable with the data written before it on return.
        False when it cannot (area full, entry too large): the caller commits in full."""
        if self.head >= self.sb.fc_blocks:
            return False
        entry = encode_entry(inode, self.sb.uuid)
        if len(entry) > fmt.FC_SPACE:
            return False
        buf = fmt.pack_fields("fast commit", fmt.FC_FMT, self.head + 1, 1, len(entry))
        buf[fmt.FC_START:fmt.FC_START + len(entry)] = entry
        blk = self.sb.fc_start + self.head
        await write_blocks(self.dev, blk, fmt.seal(buf, blk, self.sb.uuid, lsn),
                           preflush=not self.skip_preflush, fua=True)
        self.head += 1
        self.records += 1
        if self.head * 2 >= self.sb.fc_blocks and self.kick is not None:
            self.kick()             # half full: a full commit in the background frees it
        return True

    async def scan(self, read, lsn: int) -> list:
        """The entries of every valid record for lsn, in order (see the module docstring)."""
        return await scan(read, self.sb, lsn)

    async def replay(self, fs, read_only: bool) -> int:
        """At mount, after the journal: apply the records; a read-write mount commits the
        result as one journal transaction (atomic, so a crash in replay replays again)."""
        lsn = fs.journal.seq
        entries = await scan(fs._read_meta, fs.sb, lsn)
        if not entries:
            return 0
        images = await replay_images(fs._read_meta, fs.sb, entries, lsn)
        log.info("fast commit: replaying %d inode record(s)", len(entries))
        if read_only:
            fs.overlay.update(images)
        else:
            await fs.journal.reset()
            await fs.journal.commit(images)
            for home, img in sorted(images.items()):
                await write_blocks(fs.dev, home, img)
        fs.sb = fmt.Superblock.unpack(images[0])
        self.sb = fs.sb
        return len(entries)


async def scan(read, sb: fmt.Superblock, lsn: int) -> list:
    entries = []
    for i in range(sb.fc_blocks):
        blk = sb.fc_start + i
        buf = bytes(await read(blk))
        if fmt.block_type(buf) != "fast commit":
            break
        try:
            if fmt.verify(buf, "fast commit", blk, sb.uuid) != lsn:
                break
            seq, count, used = fmt.FC_FMT.unpack_from(buf, fmt.HDR_SIZE)
            if seq != i + 1 or used > fmt.FC_SPACE:
                break
            entries.extend(decode_entries(buf, count, used))
        except CorruptError:
            break
    return entries


def _runs(inode: Inode):
    runs = [(pblk, ln) for _, ln, pblk in inode.extents()]
    runs += [(b, 1) for b in inode.chain]
    if inode.xattr_block:
        runs.append((inode.xattr_block, 1))
    return runs


def _blocks(runs) -> set:
    out = set()
    for pblk, ln in runs:
        out.update(range(pblk, pblk + ln))
    return out


async def replay_images(read, sb: fmt.Superblock, entries, lsn: int) -> dict[int, bytes]:
    """The sealed block images that result from applying entries on top of what ``read``
    returns: inode-table blocks, extent-chain blocks, bitmap blocks and the superblock."""
    uuid = sb.uuid
    raw = await read(sb.bbitmap_start, sb.bbitmap_blocks)
    bmap = Bitmap(fmt.unpack_bitmap(raw, sb.bbitmap_start, sb.bbitmap_blocks, "block bitmap",
                                    uuid), sb.total_blocks)
    raw = await read(sb.ibitmap_start, sb.ibitmap_blocks)
    imap = Bitmap(fmt.unpack_bitmap(raw, sb.ibitmap_start, sb.ibitmap_blocks, "inode bitmap",
                                    uuid), sb.total_inodes)
    images: dict[int, bytes] = {}
    itable: dict[int, bytearray] = {}

    async def read_img(blk: int, n: int = 1) -> bytes:
        if n == 1 and blk in images:
            return images[blk]
        return await read(blk, n)

    last = sb.total_blocks - 1
    for ino, raw_inode, chain, exts in entries:
        if not 0 < ino < sb.total_inodes or not imap.test(ino):
            raise CorruptError(f"fast commit: inode {ino} is not in use")
        new = Inode.unpack(ino, raw_inode, uuid)
        n = new.nextents_on_disk(raw_inode)
        if n > fmt.INLINE_EXTENTS:
            if exts is None or len(exts) != n:
                raise CorruptError(f"fast commit: inode {ino}: extent count mismatch")
            new.ext_lblk = [e[0] for e in exts]
            new.ext_len = [e[1] for e in exts]
            new.ext_pblk = [e[2] for e in exts]
        new.chain = list(chain)
        if (new.chain[0] if new.chain else 0) != new.extent_block or \
                len(new.chain) != (0 if n <= fmt.INLINE_EXTENTS else
                                   -(-n // fmt.EXTENTS_PER_BLOCK)):
            raise CorruptError(f"fast commit: inode {ino}: extent chain does not fit")
        prev_end = 0
        for lblk, ln, pblk in new.extents():
            if ln < 1 or lblk < prev_end or pblk < sb.data_start or pblk + ln > last:
                raise CorruptError(f"fast commit: inode {ino}: bad extent ({lblk}, {ln}, {pblk})")
            prev_end = lblk + ln
        for b in new.chain:
            if not sb.data_start <= b < last:
                raise CorruptError(f"fast commit: inode {ino}: bad chain block {b}")
        bi, off = fmt.inode_location(ino)
        home = sb.itable_start + bi
        if home not in itable:
            itable[home] = bytearray(await read_img(home))
        slot = itable[home][off:off + fmt.INODE_SIZE]
        old = Inode.unpack(ino, slot, uuid)
        on = old.nextents_on_disk(slot)
        if on > fmt.INLINE_EXTENTS:
            await old.load_chain(on, sb, read_img)
        if old.xattr_block != new.xattr_block or old.nlink != new.nlink or \
                old.parent != new.parent or old.orphan_next != new.orphan_next:
            raise CorruptError(f"fast commit: inode {ino}: changes a record cannot carry")
        before, after = _blocks(_runs(old)), _blocks(_runs(new))
        for b in after - before:
            if bmap.test(b):
                raise CorruptError(f"fast commit: inode {ino}: block {b} is in use")
            bmap.set_run(b, 1, True)
        for b in before - after:
            bmap.set_run(b, 1, False)
        itable[home][off:off + fmt.INODE_SIZE] = raw_inode
        images[home] = bytes(itable[home])      # inodes are sealed one by one
        per = fmt.EXTENTS_PER_BLOCK
        exts_all = list(new.extents())
        for k, blk in enumerate(new.chain):
            nxt = new.chain[k + 1] if k + 1 < len(new.chain) else 0
            images[blk] = fmt.seal(fmt.pack_extent_block(exts_all[k * per:(k + 1) * per], nxt,
                                                         ino), blk, uuid, lsn)
    for i in bmap.dirty_blocks:
        blk = sb.bbitmap_start + i
        images[blk] = fmt.seal(fmt.pack_bitmap_block(bmap.data, i, "block bitmap"), blk,
                               uuid, lsn)
    cur = fmt.Superblock.unpack(await read(0))
    cur.free_blocks = bmap.count_free()
    images[0] = cur.pack(0, lsn)
    return images
