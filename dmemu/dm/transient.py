"""The transient exception store (`N`): everything in memory, nothing survives a reload.

Chunks are handed out from chunk 0 of the COW device (there is no header), and a commit
settles at once (dm-snap-transient.c). Status reports the sectors handed out and no
metadata.
"""
import errno

from .errors import ExceptionStoreError, ExceptionStoreFull
from .exception_store import Completion, ExceptionStore, Metadata, Usage


class TransientStore(ExceptionStore):
    type_name = "N"

    def __init__(self, cow, chunk_size: int, **kwargs):
        super().__init__(cow, chunk_size, **kwargs)
        self.next_free = 0          # in sectors, as transient_c.next_free

    def read_metadata(self) -> Metadata:
        # A transient store cannot take its chunk size from anywhere: dm-snap's ctr then
        # fails with this text.
        if not self.chunk_size:
            raise ExceptionStoreError(errno.EINVAL, "Chunk size not set")
        return Metadata(True, [], [])

    def _prepare(self) -> int:
        if self._cow_size() < self.next_free + self.chunk_size:
            raise ExceptionStoreFull()
        new_chunk = self.sector_to_chunk(self.next_free)
        self.next_free += self.chunk_size
        return new_chunk

    def _commit(self, old_chunk: int, new_chunk: int, valid: bool) -> list[Completion]:
        return [Completion(old_chunk, new_chunk, valid)]

    def usage(self) -> Usage:
        return Usage(self.next_free, self._cow_size(), 0)

    def table_text(self) -> str:
        return f"N {self.chunk_size}"
