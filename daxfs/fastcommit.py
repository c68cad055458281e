"""Fast commits: fsync as one small flushed record of what changed, as ext4's fast commits.

A full commit (transaction.py, journal.py) writes every dirty metadata block to the journal
and then home: its cost follows the size of the running transaction, not of what one fsync
needs. An fsync of a file whose changes since the last full commit are its own data, size,
times, mode, owner and extents (the common case: writes to an existing file) instead writes
one record into the fast-commit area: the file's inode as it is now and the mapping of the
file blocks whose mapping changed since its previous record (``Inode.fc_ranges``; ext4's
add-range and del-range tags do the same). One write with PREFLUSH|FUA makes the data
written before it and the record durable together: one flush, nothing else on the fsync
path, and a 4 KiB write into a file of 100,000 extents costs a record of one range.
Everything else the running transaction holds waits for the next full commit, which runs
in the background (the periodic commit, a full fast-commit area, syncfs, freeze, unmount)
and makes every record before it stale.

Changes a record cannot express make the inode ineligible until the next full commit
(ext4's "fc ineligible"): a new inode, a link count or parent change (names), xattrs, the
orphan list, more changed ranges than a record holds. fsync of such an inode, of a
directory, or when the area is full, does a full commit as before.

Records carry as lsn the sequence number the next full commit will have and are numbered
from 1 within it; replay takes, after the journal's, every record from the start of the
area whose lsn is the journal's next sequence and whose number is the next one, and stops
at the first that is not (stale, torn or damaged records are never applied). Each entry
builds on the inode's previous one: its fields replace the inode's, its ranges are punched
out of the extents and mapped again, and the block bitmap follows (a range that would take
a block another inode holds is refused as damage). The extent chains are derived data: the
replay lays out anew the chain of every inode it touched, once all entries are applied, in
blocks no entry maps.
"""
import logging

from . import format as fmt
from .alloc import Bitmap
from .errors import CorruptError
from .inode import Inode, merge_ranges
from .journal import write_blocks

log = logging.getLogger(__name__)


def encode_entry(inode: Inode, uuid: bytes) -> bytes:
    """The inode as it is now and the mapping of its blocks remapped since its last record
    (format.FC_FMT)."""
    pieces = [p for s, e in merge_ranges(inode.fc_ranges or ())
              for p in inode.mapping(s, e)]
    out = bytearray(fmt.FC_ENTRY_FMT.pack(inode.ino, len(pieces), 0))
    out += inode.pack(uuid)
    for p in pieces:
        out += fmt.EXTENT_FMT.pack(*p)
    return bytes(out)


def _extents(buf, off: int, end: int, n: int) -> list:
    """n extents (EXTENT_FMT) at off, which must end by end."""
    size = fmt.EXTENT_FMT.size
    if off + size * n > end:
        raise CorruptError("fast commit: entry runs past the record")
    return [fmt.EXTENT_FMT.unpack_from(buf, off + size * i) for i in range(n)]


def decode_entries(buf, count: int, used: int, whole: bool = False):
    """Yield (ino, raw inode, ranges) of a record's entries. ``whole``: a record written
    before ranges (format.FC_WHOLE), whose entries become one hole over the whole file
    followed by every extent the inode has."""
    if used > fmt.FC_SPACE:
        raise CorruptError("fast commit: used size runs past the block")
    off, end = fmt.FC_START, fmt.FC_START + used
    size = fmt.EXTENT_FMT.size
    for _ in range(count):
        if off + fmt.FC_ENTRY_FMT.size + fmt.INODE_SIZE > end:
            raise CorruptError("fast commit: entry runs past the record")
        ino, n, word = fmt.FC_ENTRY_FMT.unpack_from(buf, off)
        off += fmt.FC_ENTRY_FMT.size
        raw = bytes(buf[off:off + fmt.INODE_SIZE])
        off += fmt.INODE_SIZE
        if not whole:
            if word:
                raise CorruptError(f"fast commit: inode {ino}: unknown entry flags {word:#x}")
            ranges = _extents(buf, off, end, n)
            off += size * n
            yield ino, raw, ranges
            continue
        # n chain blocks (the replay lays the chain out anew), then word extents if the
        # inode does not hold them inline
        off += 8 * n
        if (Inode.nextents_on_disk(raw) > fmt.INLINE_EXTENTS) != bool(word):
            raise CorruptError(f"fast commit: inode {ino}: extent count mismatch")
        exts = _extents(buf, off, end, word) if word else list(Inode.unpack(ino, raw).extents())
        off += size * word
        yield ino, raw, [(0, fmt.MAX_FILE_BLOCKS, 0)] + exts
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
        kind = fmt.block_type(buf)
        if kind not in ("fast commit", fmt.FC_WHOLE):
            break
        try:
            if fmt.verify(buf, kind, blk, sb.uuid) != lsn:
                break
            seq, count, used = fmt.FC_FMT.unpack_from(buf, fmt.HDR_SIZE)
            if seq != i + 1:
                break
            entries.extend(decode_entries(buf, count, used, whole=kind == fmt.FC_WHOLE))
        except CorruptError:
            break
    return entries


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
    last = sb.total_blocks - 1          # the second backup superblock
    inodes: dict[int, Inode] = {}       # as the entries so far leave them
    old_chains: dict[int, list[int]] = {}
    for ino, raw_inode, ranges in entries:
        if not 0 < ino < sb.total_inodes or not imap.test(ino):
            raise CorruptError(f"fast commit: inode {ino} is not in use")
        new = Inode.unpack(ino, raw_inode, uuid)
        old = inodes.get(ino)
        if old is None:
            old = await _load(read, sb, ino)
            old_chains[ino] = list(old.chain)
            for b in old.chain:             # laid out anew at the end
                bmap.set_run(b, 1, False)
        if old.xattr_block != new.xattr_block or old.nlink != new.nlink or \
                old.parent != new.parent or old.orphan_next != new.orphan_next:
            raise CorruptError(f"fast commit: inode {ino}: changes a record cannot carry")
        new.ext_lblk, new.ext_len, new.ext_pblk = \
            list(old.ext_lblk), list(old.ext_len), list(old.ext_pblk)
        new.chain = []
        # every range is unmapped first, then the mapped ones are mapped: so an entry of
        # a whole inode (one hole over the file, then its extents) applies the same way
        mapped = []
        for lblk, ln, pblk in ranges:
            if ln < 1 or lblk + ln > fmt.MAX_FILE_BLOCKS or \
                    pblk and (pblk < sb.data_start or pblk + ln > last):
                raise CorruptError(f"fast commit: inode {ino}: bad range ({lblk}, {ln}, {pblk})")
            for b, n in new.punch_extents(lblk, ln):
                bmap.set_run(b, n, False)
            if pblk:
                mapped.append((lblk, ln, pblk))
        mapped.sort()
        prev_end = 0
        for lblk, ln, pblk in mapped:
            if lblk < prev_end:
                raise CorruptError(f"fast commit: inode {ino}: ranges overlap at block {lblk}")
            prev_end = lblk + ln
            if bmap.run_length(pblk, pblk + ln) != ln:
                raise CorruptError(f"fast commit: inode {ino}: a block of {pblk}..{pblk + ln - 1}"
                                   " is in use")
            bmap.set_run(pblk, ln, True)
            new.add_extent(lblk, ln, pblk)
        if new.ext_lblk and new.ext_lblk[-1] + new.ext_len[-1] > -(-new.size // fmt.BLOCK_SIZE):
            raise CorruptError(f"fast commit: inode {ino}: blocks mapped beyond its size")
        inodes[ino] = new
    images: dict[int, bytes] = {}
    itable: dict[int, bytearray] = {}
    per = fmt.EXTENTS_PER_BLOCK
    for ino, inode in inodes.items():
        n = len(inode.ext_lblk)
        need = 0 if n <= fmt.INLINE_EXTENTS else -(-n // per)
        inode.chain = _chain_blocks(bmap, sb, old_chains[ino], need)
        exts = list(inode.extents())
        for k, blk in enumerate(inode.chain):
            nxt = inode.chain[k + 1] if k + 1 < need else 0
            images[blk] = fmt.seal(fmt.pack_extent_block(exts[k * per:(k + 1) * per], nxt, ino),
                                   blk, uuid, lsn)
        bi, off = fmt.inode_location(ino)
        home = sb.itable_start + bi
        if home not in itable:
            itable[home] = bytearray(await read(home))
        itable[home][off:off + fmt.INODE_SIZE] = inode.pack(uuid)
    for home, buf in itable.items():
        images[home] = bytes(buf)           # inodes are sealed one by one
    for i in bmap.dirty_blocks:
        blk = sb.bbitmap_start + i
        images[blk] = fmt.seal(fmt.pack_bitmap_block(bmap.data, i, "block bitmap"), blk,
                               uuid, lsn)
    cur = fmt.Superblock.unpack(await read(0))
    cur.free_blocks = bmap.count_free()
    images[0] = cur.pack(0, lsn)
    return images


async def _load(read, sb: fmt.Superblock, ino: int) -> Inode:
    """An inode with its extents as the journal left it."""
    bi, off = fmt.inode_location(ino)
    slot = bytes(await read(sb.itable_start + bi))[off:off + fmt.INODE_SIZE]
    inode = Inode.unpack(ino, slot, sb.uuid)
    n = inode.nextents_on_disk(slot)
    if n > fmt.INLINE_EXTENTS:
        await inode.load_chain(n, sb, read)
    return inode


def _chain_blocks(bmap: Bitmap, sb: fmt.Superblock, before: list[int], need: int) -> list[int]:
    """need free blocks for an extent chain, marked in use: the chain's old blocks first
    (no entry maps them, as a rule), then the first free ones of the data area."""
    out = [b for b in before if not bmap.test(b)][:need]
    at = sb.data_start
    while len(out) < need:
        b = bmap.find_free(at, sb.total_blocks - 1)
        if b < 0:
            raise CorruptError("fast commit: no free block left for an extent chain")
        if b not in out:
            out.append(b)
        at = b + 1
    for b in out:
        bmap.set_run(b, 1, True)
    return out
