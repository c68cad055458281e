"""The metadata journal: physical block logging with ordered data, as jbd2 does it.

A transaction is the set of metadata blocks (their full new images) that changed since the
last commit. Committing writes, at the journal's head, descriptor blocks naming the home
locations followed by the images, and then a commit block carrying a crc32 of all of them,
with PREFLUSH|FUA: the preflush makes durable everything completed before it (file data
written for this transaction and the journal blocks), the FUA makes the commit itself
durable before the call returns (the ordering the 2015 DAX fsync thread insists on). Only
then are the images written to their home locations (checkpoint), without waiting.

When the journal is full the filesystem flushes the device (every checkpoint is then
durable) and rewrites the header to start after the last transaction. Mount replays every
complete transaction from the header on, in sequence order, and stops at the first block
that is not the expected next descriptor or whose commit is missing or does not match.
"""
import logging

from . import format as fmt
from .errors import CorruptError, FsError

log = logging.getLogger(__name__)


async def read_blocks(dev, blk: int, n: int = 1) -> bytes:
    return await dev.read(blk * fmt.BLOCK_SECTORS, n * fmt.BLOCK_SIZE)


async def write_blocks(dev, blk: int, data, *, fua: bool = False, preflush: bool = False):
    await dev.write(blk * fmt.BLOCK_SECTORS, data, fua=fua, preflush=preflush)


def blocks_needed(nimages: int) -> int:
    """Journal blocks a transaction of nimages images takes (descriptors + commit)."""
    ndesc = (nimages + fmt.JDESC_MAX - 1) // fmt.JDESC_MAX
    return nimages + ndesc + 1


class Journal:
    def __init__(self, dev, start: int, nblocks: int, uuid: bytes):
        self.dev = dev
        self.uuid = uuid
        self.start = start
        self.nblocks = nblocks
        self.seq = 1            # sequence number of the next transaction
        self.head = 1           # offset (from start) where the next transaction goes
        self.commits = 0
        # A deliberately broken mode for testing the crash checker (x-crashcheck-skip-flush):
        # commit without flushing what the commit references first.
        self.skip_preflush = False

    @property
    def capacity(self) -> int:
        """Journal blocks available to transactions (all but the header)."""
        return self.nblocks - 1

    def fits(self, nimages: int) -> bool:
        return self.head + blocks_needed(nimages) <= self.nblocks

    # -- mount ---------------------------------------------------------------------------
    async def scan(self, read=None) -> list[tuple[int, bytes]]:
        """Read the header and every complete transaction after it; return the images to
        replay, oldest first, and leave seq/head just after the last good transaction."""
        read = read or (lambda b, n=1: read_blocks(self.dev, b, n))
        hdr = await read(self.start)
        seq, off = fmt.unpack_fields("journal header", fmt.JOURNAL_HDR_FMT, hdr, self.start,
                                     self.uuid)
        if not 1 <= off < self.nblocks:
            raise CorruptError(f"journal: header start offset {off} out of range")
        images: list[tuple[int, bytes]] = []
        ntx = 0
        while True:
            tx = await self._read_transaction(read, seq, off)
            if tx is None:
                break
            tx_images, used = tx
            images.extend(tx_images)
            seq += 1
            off += used
            ntx += 1
        self.seq, self.head = seq, off
        if ntx:
            log.info("journal: %d transaction(s) to replay, %d block image(s)", ntx, len(images))
        return images

    def _verified(self, blk: bytes, kind: str, where: int):
        try:
            return fmt.verify(blk, kind, where, self.uuid)
        except CorruptError:
            return None

    async def _read_transaction(self, read, seq: int, off: int):
        """A transaction's blocks are trusted only when every one verifies and the commit's
        crc covers them all: anything else is the end of the log (a torn or stale tail)."""
        pos = off
        crc = 0
        homes_images = []
        while pos < self.nblocks:
            where = self.start + pos
            blk = bytes(await read(where))
            kind = fmt.block_type(blk)
            if kind == "journal commit":
                if self._verified(blk, kind, where) != seq:
                    return None
                nblocks, ccrc, cseq = fmt.JCOMMIT_FMT.unpack_from(blk, fmt.HDR_SIZE)
                if cseq != seq or nblocks != pos - off or ccrc != crc or not homes_images:
                    return None
                return homes_images, pos + 1 - off
            if kind != "journal descriptor" or self._verified(blk, kind, where) != seq:
                return None
            count, _pad, dseq = fmt.JDESC_FMT.unpack_from(blk, fmt.HDR_SIZE)
            if dseq != seq or not 0 < count <= fmt.JDESC_MAX or pos + 1 + count >= self.nblocks:
                return None
            crc = fmt.crc32c(blk, crc)
            h0 = fmt.JDESC_HOMES
            homes = [int.from_bytes(blk[h0 + 8 * i:h0 + 8 * i + 8], "little")
                     for i in range(count)]
            data = bytes(await read(self.start + pos + 1, count))
            crc = fmt.crc32c(data, crc)
            for i, home in enumerate(homes):
                img = data[i * fmt.BLOCK_SIZE:(i + 1) * fmt.BLOCK_SIZE]
                homes_images.append((home, img))
            pos += 1 + count
        return None

    # -- running -------------------------------------------------------------------------
    async def commit(self, images: dict[int, bytes]) -> None:
        """Write one transaction of sealed images; durable (with everything written before)
        on return."""
        if not images:
            return
        need = blocks_needed(len(images))
        if need > self.capacity:
            raise FsError(5, f"journal: transaction of {len(images)} blocks exceeds the journal")
        if not self.fits(len(images)):
            raise RuntimeError("journal: caller must reset the journal first")
        homes = sorted(images)
        buf = bytearray()
        h0 = fmt.JDESC_HOMES
        pos = self.head
        for i in range(0, len(homes), fmt.JDESC_MAX):
            part = homes[i:i + fmt.JDESC_MAX]
            desc = fmt.pack_fields("journal descriptor", fmt.JDESC_FMT, len(part), 0, self.seq)
            for k, h in enumerate(part):
                desc[h0 + 8 * k:h0 + 8 * k + 8] = h.to_bytes(8, "little")
            buf += fmt.seal(desc, self.start + pos, self.uuid, self.seq)
            pos += 1
            for h in part:
                buf += images[h]
                pos += 1
        crc = fmt.crc32c(bytes(buf))
        await write_blocks(self.dev, self.start + self.head, buf)
        commit = fmt.pack_fields("journal commit", fmt.JCOMMIT_FMT,
                                 len(buf) // fmt.BLOCK_SIZE, crc, self.seq)
        await write_blocks(self.dev, self.start + pos,
                           fmt.seal(commit, self.start + pos, self.uuid, self.seq),
                           preflush=not self.skip_preflush, fua=True)
        self.head += need
        self.seq += 1
        self.commits += 1

    async def reset(self) -> None:
        """Make every checkpoint durable, then start the journal over after them."""
        await self.dev.flush()
        await write_blocks(self.dev, self.start,
                           header_block(self.seq, 1, self.start, self.uuid), fua=True)
        self.head = 1


def header_block(seq: int, off: int, blkno: int, uuid: bytes) -> bytes:
    return fmt.seal(fmt.pack_fields("journal header", fmt.JOURNAL_HDR_FMT, seq, off), blkno,
                    uuid)
