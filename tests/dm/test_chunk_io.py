"""Snapshot data-path arithmetic: splitting at chunk boundaries and COW remapping."""
import pytest
from hypothesis import given, strategies as st

from dmemu.dm.chunk_io import Piece, covers_chunk, cow_sector, split_at_chunks


def test_split_examples():
    assert split_at_chunks(6, 12, 8) == [Piece(0, 6, 2), Piece(1, 8, 8), Piece(2, 16, 2)]
    assert split_at_chunks(16, 8, 8) == [Piece(2, 16, 8)]
    assert split_at_chunks(3, 0, 8) == []


@given(sector=st.integers(0, 1 << 40), n=st.integers(0, 5000), shift=st.integers(0, 12))
def test_split_covers_the_bio_exactly_without_crossing_chunks(sector, n, shift):
    cs = 1 << shift
    pieces = split_at_chunks(sector, n, cs)
    assert sum(p.nr_sectors for p in pieces) == n
    pos = sector
    for p in pieces:
        assert p.sector == pos and p.nr_sectors > 0
        assert p.chunk == p.sector // cs == (p.sector + p.nr_sectors - 1) // cs
        pos += p.nr_sectors


def test_cow_remap_and_whole_chunk_writes():
    assert cow_sector(8 * 100 + 5, new_chunk=2, chunk_size=8) == 21
    assert covers_chunk(Piece(1, 8, 8), 8) and not covers_chunk(Piece(0, 6, 2), 8)
    with pytest.raises(ValueError):
        split_at_chunks(0, 8, 12)
