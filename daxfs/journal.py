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
    def __init__(self, dev, start: int, nblocks: int):
        self.dev = dev
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
        if bytes(hdr[:8]) != fmt.JOURNAL_MAGIC:
            raise CorruptError("journal: bad header magic")
        _, seq, off = fmt.unpack_struct_block(fmt.JOURNAL_HDR_FMT, hdr, "journal header")
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

    async def _read_transaction(self, read, seq: int, off: int):
        pos = off
        crc = 0
        homes_images = []
        while pos < self.nblocks:
            blk = bytes(await read(self.start + pos))
            magic = blk[:4]
            if magic == fmt.JCOMMIT_MAGIC:
                try:
                    _, nblocks, cseq, ccrc = fmt.unpack_struct_block(fmt.JCOMMIT_FMT, blk,
                                                                     "journal commit")
                except CorruptError:
                    return None
                if cseq != seq or nblocks != pos - off or ccrc != crc or not homes_images:
                    return None
                return homes_images, pos + 1 - off
            if magic != fmt.JDESC_MAGIC:
                return None
            _, count, dseq = fmt.JDESC_FMT.unpack_from(blk, 0)
            if dseq != seq or not 0 < count <= fmt.JDESC_MAX or pos + 1 + count >= self.nblocks:
                return None
            crc = fmt.zlib.crc32(blk, crc)
            homes = [int.from_bytes(blk[fmt.JDESC_FMT.size + 8 * i:fmt.JDESC_FMT.size + 8 * i + 8],
                                    "little") for i in range(count)]
            data = bytes(await read(self.start + pos + 1, count))
            crc = fmt.zlib.crc32(data, crc)
            for i, home in enumerate(homes):
                homes_images.append((home, data[i * fmt.BLOCK_SIZE:(i + 1) * fmt.BLOCK_SIZE]))
            pos += 1 + count
        return None

    # -- running -------------------------------------------------------------------------
    async def commit(self, images: dict[int, bytes]) -> None:
        """Write one transaction; durable (with everything written before) on return."""
        if not images:
            return
        need = blocks_needed(len(images))
        if need > self.capacity:
            raise FsError(5, f"journal: transaction of {len(images)} blocks exceeds the journal")
        if not self.fits(len(images)):
            raise RuntimeError("journal: caller must reset the journal first")
        homes = sorted(images)
        buf = bytearray()
        for i in range(0, len(homes), fmt.JDESC_MAX):
            part = homes[i:i + fmt.JDESC_MAX]
            desc = bytearray(fmt.BLOCK_SIZE)
            fmt.JDESC_FMT.pack_into(desc, 0, fmt.JDESC_MAGIC, len(part), self.seq)
            for k, h in enumerate(part):
                desc[fmt.JDESC_FMT.size + 8 * k:fmt.JDESC_FMT.size + 8 * k + 8] = h.to_bytes(8, "little")
            buf += desc
            for h in part:
                buf += images[h]
        crc = fmt.zlib.crc32(buf) & 0xFFFFFFFF
        await write_blocks(self.dev, self.start + self.head, buf)
        commit = fmt.pack_struct_block(fmt.JCOMMIT_FMT, fmt.JCOMMIT_MAGIC,
                                       len(buf) // fmt.BLOCK_SIZE, self.seq, crc)
        await write_blocks(self.dev, self.start + self.head + len(buf) // fmt.BLOCK_SIZE,
                           commit, preflush=not self.skip_preflush, fua=True)
        self.head += need
        self.seq += 1
        self.commits += 1

    async def reset(self) -> None:
        """Make every checkpoint durable, then start the journal over after them."""
        await self.dev.flush()
        await write_blocks(self.dev, self.start, header_block(self.seq, 1), fua=True)
        self.head = 1


def header_block(seq: int, off: int) -> bytes:
    return fmt.pack_struct_block(fmt.JOURNAL_HDR_FMT, fmt.JOURNAL_MAGIC, seq, off)
