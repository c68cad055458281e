"""Chunk arithmetic of the snapshot data path (dm-snap.c), kept pure for the daemon.

A bio to a snapshot or origin is split so that no piece crosses a chunk boundary
(``ti->max_io_len = chunk_size``; the origin uses the smallest chunk size of its
snapshots). A piece whose chunk has an exception goes to the COW device at
``new_chunk * chunk_size + (sector & chunk_mask)``; otherwise reads go to the origin at
the same sector, and a write first needs the origin chunk copied, unless it covers the
whole chunk (then dm-snap skips the copy and writes straight into the new COW chunk).
"""
from typing import NamedTuple


class Piece(NamedTuple):
    """Part of a bio inside one chunk: ``sector`` and ``nr_sectors`` on the mapped device."""
    chunk: int
    sector: int
    nr_sectors: int


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size <= 0 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk size {chunk_size} is not a power of two")


def split_at_chunks(sector: int, nr_sectors: int, chunk_size: int) -> list[Piece]:
    """Split ``[sector, sector + nr_sectors)`` at chunk boundaries, in order."""
    _check_chunk_size(chunk_size)
    shift = chunk_size.bit_length() - 1
    pieces = []
    end = sector + nr_sectors
    while sector < end:
        boundary = ((sector >> shift) + 1) << shift
        n = min(end, boundary) - sector
        pieces.append(Piece(sector >> shift, sector, n))
        sector += n
    return pieces


def cow_sector(sector: int, new_chunk: int, chunk_size: int) -> int:
    """Where ``sector`` of a chunk with exception ``new_chunk`` lives on the COW device."""
    _check_chunk_size(chunk_size)
    return new_chunk * chunk_size + (sector & (chunk_size - 1))


def covers_chunk(piece: Piece, chunk_size: int) -> bool:
    """A write of a whole chunk needs no copy of the origin chunk first."""
    return piece.nr_sectors == chunk_size
