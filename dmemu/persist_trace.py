"""A trace of what became durable on an adr namespace, fence by fence.

While tracing is on, every process that flushes lines of the namespace (DaxMapping.flush:
clwb then sfence) or writes it with a bio (durable at completion) appends one record to the
trace: the bytes that just reached the persistence domain. Each record ends at a fence, so
the media as a power failure at fence k would leave it is the base image (copied when the
trace started) with records 0..k applied. Stores that were not yet flushed at fence k are
the lines a later record flushes: a sample of them may have reached the media anyway (the
CPU evicts lines when it likes), whole or torn at 8-byte words.

Record: ``u32 magic 'PTRC', u32 length, u64 offset`` then ``length`` bytes. Appends use a
single write() on an O_APPEND descriptor, so records of several processes never interleave.
"""
import os
import random
import struct

MAGIC = 0x43525450
RECORD = struct.Struct("<IIQ")
CACHELINE = 64
WORD = 8
_COPY = 1 << 20


class TraceWriter:
    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def durable(self, offset: int, data) -> None:
        os.write(self.fd, RECORD.pack(MAGIC, len(data), offset) + bytes(data))

    def close(self) -> None:
        os.close(self.fd)


def read_trace(path: str) -> list[tuple[int, bytes]]:
    out = []
    with open(path, "rb") as f:
        buf = f.read()
    pos = 0
    while pos + RECORD.size <= len(buf):
        magic, length, offset = RECORD.unpack_from(buf, pos)
        if magic != MAGIC or pos + RECORD.size + length > len(buf):
            break     # a record torn by a crash of the tracing process itself
        pos += RECORD.size
        out.append((offset, buf[pos:pos + length]))
        pos += length
    return out


def copy_sparse(src: str, dst: str) -> None:
    """Copy an image, leaving holes where the source reads as zeros."""
    size = os.path.getsize(src)
    zero = bytes(_COPY)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        fo.truncate(size)
        for off in range(0, size, _COPY):
            chunk = fi.read(_COPY)
            if chunk != zero[:len(chunk)]:
                fo.seek(off)
                fo.write(chunk)


def materialize(base: str, records: list, fence: int, out: str, *,
                unflushed: float = 0.0, tear: bool = False, seed: int | None = None,
                in_flight: int | None = None) -> int:
    """Write to ``out`` the media after a power failure right after fence ``fence``
    (0 = before the first record). With ``unflushed`` > 0, each line that a later record
    flushes survives with that probability (torn at 8-byte words if ``tear``). With
    ``in_flight`` N, only the next N records may have been stored yet: a bio write is
    stored and flushed as one record, so a power failure can catch the one in flight
    (``in_flight=1``) but none issued after it. Returns the number of such lines that
    survived."""
    copy_sparse(base, out)
    rng = random.Random(seed)
    survived = 0
    with open(out, "r+b") as f:
        for offset, data in records[:fence]:
            f.seek(offset)
            f.write(data)
        if unflushed <= 0:
            return 0
        seen = set()
        later = records[fence:] if in_flight is None else records[fence:fence + in_flight]
        for offset, data in later:
            first = offset - offset % CACHELINE
            for line in range(first, offset + len(data), CACHELINE):
                if line in seen or rng.random() >= unflushed:
                    seen.add(line)
                    continue
                seen.add(line)
                a, b = max(line, offset), min(line + CACHELINE, offset + len(data))
                new = data[a - offset:b - offset]
                if tear:
                    f.seek(a)
                    old = bytearray(f.read(len(new)))
                    for w in range(0, len(new), WORD):
                        if rng.random() < 0.5:
                            old[w:w + WORD] = new[w:w + WORD]
                    new = bytes(old)
                f.seek(a)
                f.write(new)
                survived += 1
    return survived
