"""The wire format between dmemud and its clients.

A frame is an 8-byte header (u32 JSON length, u32 payload length, little-endian), a JSON
object, and an optional binary payload (bio data on the rare paths that carry data through
the socket; the common data path goes through shared mappings and never comes here).

Three kinds of JSON objects travel:
- request  {"id": N, "op": NAME, ...args}      client -> daemon
- reply    {"id": N, "ok": {...}} or {"id": N, "error": {"errno", "message"}}
- event    {"event": NAME, "eid": M, ...}      daemon -> client, answered by
           {"ack": M} (or {"ack": M, "error": {...}}) when the daemon waits for it.
"""
import json
import struct

import trio

HEADER = struct.Struct("<II")
MAX_JSON = 16 << 20
MAX_PAYLOAD = 64 << 20


class FrameError(ValueError):
    """A frame that cannot be trusted: its reader answers once and closes the connection,
    since after a lie about a length or a body that is not an object nothing that follows
    on the stream can be framed with confidence."""


def _no_constant(name: str):
    # NaN and Infinity are not JSON (RFC 8259), though Python's parser accepts them.
    raise ValueError(f"{name} is not a JSON number")


def encode(obj: dict, payload: bytes = b"") -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return HEADER.pack(len(body), len(payload)) + body + bytes(payload)


class FrameReader:
    """Reads frames from a trio stream, buffering partial reads."""

    def __init__(self, stream: trio.abc.ReceiveStream):
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = await self.stream.receive_some(max(65536, n - len(self.buf)))
            if not chunk:
                return False
            self.buf += chunk
        return True

    async def read(self) -> tuple[dict, bytes] | None:
        """The next (object, payload), or None at end of stream."""
        if not await self._fill(HEADER.size):
            return None
        jlen, plen = HEADER.unpack_from(self.buf)
        if jlen > MAX_JSON or plen > MAX_PAYLOAD:
            raise FrameError(f"frame too large ({jlen} + {plen} bytes; at most {MAX_JSON} + {MAX_PAYLOAD})")
        total = HEADER.size + jlen + plen
        if not await self._fill(total):
            return None
        body = bytes(self.buf[HEADER.size:HEADER.size + jlen])
        del self.buf[:HEADER.size + jlen]
        try:
            obj = json.loads(body.decode(), parse_constant=_no_constant)
        except UnicodeDecodeError:
            raise FrameError("not UTF-8") from None
        except RecursionError:
            raise FrameError("JSON nested too deeply") from None
        except ValueError as e:
            raise FrameError(f"not JSON ({e})") from None
        if not isinstance(obj, dict):
            raise FrameError(f"a JSON {type(obj).__name__} where an object belongs")
        total -= HEADER.size + jlen
        payload = bytes(self.buf[:total])
        del self.buf[:total]
        return obj, payload
