"""Malformed frames against a real dmemud: it must stay alive and answer every request.

Every kind of frame a hostile or broken client could send: JSON that is not an object, bad
JSON and bad UTF-8, headers that lie about lengths, operations and acks of the wrong type,
nesting deep enough to exhaust a recursive parser, and every operation with fields replaced by
values of the wrong type, sign or size. Each trial uses a fresh connection (the daemon may
close it after a bad frame); after each, the daemon must still be running and answer a
``status`` on a connection kept open for the whole run.

Failures counted: ``death`` (the daemon process is gone), ``hang`` (no reply and no close
within the timeout, or the control connection stops answering), ``internal`` (an answer of
"internal error": an exception the validation should have prevented), ``traceback`` (one
more traceback in dmemud.log).
"""
import json
import random
import socket
import struct
import time
from pathlib import Path

from .common import Result, alive, daemon_pid, stop_daemon, tool, tracebacks

HEADER = struct.Struct("<II")
TIMEOUT = 5.0
EOF = "eof"         # the frame is incomplete: the fuzzer ends its side so the daemon sees it
SENTINEL = 1 << 40  # the id of the status request that follows each frame on its connection

# The operations dmemud serves and the fields each reads, with a plausible value: the
# fuzzer mutates these. shutdown is left out (a well-formed one stops the daemon, as it must).
OPS = {
    "hello": {"prog": "fuzz", "pid": 1},
    "status": {},
    "changes": {"since": 0},
    "create_namespace": {"size": "4M", "align": "4K", "mode": "fsdax", "name": "", "persistence": "eadr"},
    "list": {"kind": "pmem"},
    "destroy": {"device": "pmem9", "kind": "pmem"},
    "create_disk": {"size": "1M", "name": "fz"},
    "inject_error": {"device": "pmem0", "sector": 8, "count": 1},
    "clear_error": {"device": "pmem0", "sector": 8, "count": 1},
    "disable": {"device": "pmem9"},
    "enable": {"device": "pmem0"},
    "power_fail": {"devices": ["pmem9"], "tear": False, "seed": 1},
    "trace": {"device": "pmem0", "action": "stop"},
    "open": {"device": "pmem0", "exclusive": False, "read_only": True},
    "close": {"handle": 1},
    "resolve": {"handle": 1, "sector": 0, "nr": 1, "write": False},
    "bio": {"handle": 1, "bio": "read", "sector": 0, "nbytes": 4096, "fua": False, "preflush": False},
    "dm_create": {"name": "fz", "uuid": "", "read_only": False, "table": "0 8 zero"},
    "dm_load": {"name": "fz", "table": "0 8 zero"},
    "dm_clear": {"name": "fz"},
    "dm_suspend": {"name": "fz", "noflush": False, "nolockfs": False},
    "dm_resume": {"name": "fz"},
    "dm_remove": {"name": "fz", "force": False},
    "dm_rename": {"name": "fz", "new": "fy", "uuid": None},
    "dm_message": {"name": "fz", "sector": 0, "words": ["mark", "x"]},
    "dm_wait": {"name": "fz", "event_nr": 0},
    "dm_list": {},
    "dm_targets": {},
    "dm_param": {"param": "snapshot_dax", "value": True},
    "profile": {"profile": "fixed"},
    "dmesg": {"clear": False},
}
# Operations that may rightly wait for a change that never comes: silence is no hang there.
WAITING_OPS = ("changes", "dm_wait")


def deep(n: int, leaf=1):
    """JSON text nested n levels: built as text, since Python's encoder would recurse too."""
    return "[" * n + json.dumps(leaf) + "]" * n


WEIRD = [None, True, False, 0, -1, -8, -4096, 1 << 31, 1 << 63, 1 << 70, -(1 << 70), 1.5, -0.0,
         "NaN", "Infinity", "", "x" * 5000, "../../../../tmp/fz", "/dev/pmem0", "\x00", "\udcff",
         "259:0", "pmem0", [], [1], [None], ["a", 2], {}, {"a": 1}, {"op": "status"}]


def _raw_value(rng: random.Random) -> str:
    """A JSON value as text: some values json.dumps would not write (NaN, deep nesting)."""
    r = rng.random()
    if r < 0.08:
        return rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" * 5000])
    if r < 0.14:
        return deep(rng.choice([50, 1000, 100000]))
    v = rng.choice(WEIRD)
    return json.dumps(v)


def _obj_text(fields: dict[str, str]) -> str:
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}"


def _frame(body: bytes, payload: bytes = b"", jlen: int | None = None, plen: int | None = None) -> bytes:
    return HEADER.pack(len(body) if jlen is None else jlen,
                       len(payload) if plen is None else plen) + body + payload


def generate(rng: random.Random, trial: int) -> tuple[str, bytes, bool | str]:
    """(description, frame bytes, whether a reply is owed or EOF)."""
    kind = trial % 10 if trial < 200 else rng.randrange(10)
    rid = trial + 1000
    if kind == 0:       # a body that is JSON but not an object
        text = rng.choice(["[]", "[1,2]", "1", "-4096", '"op"', "null", "true", "1.5", deep(100000),
                           '[{"op":"status","id":1}]'])
        return f"body {text[:40]}", _frame(text.encode()), False
    if kind == 1:       # not JSON, or not UTF-8
        body = rng.choice([b"{", b"{\"op\":", b"\xff\xfe{}", b"{\"op\":\"status\",}", b"", b"\x00" * 16,
                           b"{\"id\":1,\"op\":\"st\xc3atus\"}", bytes(rng.randrange(256) for _ in range(64))])
        return f"bad json {body[:40]!r}", _frame(body), False
    if kind == 2:       # headers that lie
        body = json.dumps({"id": rid, "op": "status"}).encode()
        choice = rng.randrange(4)
        if choice == 0:
            return "json length too large", _frame(body, jlen=(1 << 32) - 1), False
        if choice == 1:
            return "payload length too large", _frame(body, plen=(1 << 32) - 1), False
        if choice == 2:
            return "truncated frame", _frame(body, jlen=len(body) + 100), EOF
        return "header only", HEADER.pack(10, 0)[:rng.randrange(1, 8)], EOF
    if kind == 3:       # the operation of the wrong type
        op = _raw_value(rng) if rng.random() < 0.8 else json.dumps("op_" + rng.choice(list(OPS)))
        return f"op {op[:40]}", _frame(_obj_text({"id": str(rid), "op": op}).encode()), True
    if kind == 4:       # acknowledgements of the wrong type
        ack = _raw_value(rng)
        extra = {"error": _raw_value(rng)} if rng.random() < 0.3 else {}
        return f"ack {ack[:40]}", _frame(_obj_text({"ack": ack, **extra}).encode()), False
    if kind == 5:       # deep nesting inside a request
        op = rng.choice(list(OPS))
        field = rng.choice(list(OPS[op]) or ["extra"])
        text = _obj_text({"id": str(rid), "op": json.dumps(op), field: deep(rng.choice([30, 5000, 200000]))})
        return f"{op}.{field} nested", _frame(text.encode()), True
    if kind == 6:       # the id itself is wrong
        idv = _raw_value(rng)
        text = _obj_text({"id": idv, "op": json.dumps("status")})
        return f"id {idv[:40]}", _frame(text.encode()), False
    if kind == 7:       # a payload where none belongs, or a bio with a payload that lies
        op = rng.choice(["status", "bio", "open", "dm_list"])
        fields = {"id": str(rid), "op": json.dumps(op)}
        fields.update({k: json.dumps(v) for k, v in OPS[op].items()})
        if op == "bio":
            fields["bio"] = json.dumps(rng.choice(["write", "read", "discard", "flush", "bogus"]))
        payload = bytes(rng.choice([1, 511, 4096, 4097, 1 << 20]))
        return f"{op} with {len(payload)}-byte payload", _frame(_obj_text(fields).encode(), payload), True
    if kind == 8:       # random bytes after a plausible header
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        return "random bytes", _frame(body), False
    # kind 9: a known operation with one to three fields replaced by values of the wrong kind
    op = rng.choice(list(OPS))
    fields = {"id": str(rid), "op": json.dumps(op)}
    fields.update({k: json.dumps(v) for k, v in OPS[op].items()})
    names = list(OPS[op]) + ["extra"]
    changed = rng.sample(names, min(len(names), rng.randint(1, 3)))
    for name in changed:
        fields[name] = _raw_value(rng)
    return f"{op} {', '.join(f'{n}={fields[n][:30]}' for n in changed)}", _frame(_obj_text(fields).encode()), True


class Conn:
    """A blocking connection that sends frames and reads replies."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> dict | None:
        """The next reply object; None when the daemon closed the connection."""
        while True:
            if len(self.buf) >= HEADER.size:
                jlen, plen = HEADER.unpack_from(self.buf)
                if len(self.buf) >= HEADER.size + jlen + plen:
                    obj = json.loads(self.buf[HEADER.size:HEADER.size + jlen])
                    self.buf = self.buf[HEADER.size + jlen + plen:]
                    return obj
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                return None     # closed with our later frames unread: a close all the same
            if not chunk:
                return None
            self.buf += chunk

    def call(self, op: str, rid: int, **args) -> dict | None:
        self.send(_frame(json.dumps({"id": rid, "op": op, **args}).encode()))
        while True:
            obj = self.read()
            if obj is None or obj.get("id") == rid:
                return obj

    def close(self) -> None:
        self.sock.close()


def setup(root: Path) -> None:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for cmd in (("ndctl", "create-namespace", "-s", "4M", "-a", "4K"),
                ("dmemu", "disk", "create", "-s", "1M", "-n", "disk0")):
        r = tool(root, *cmd)
        if r.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")


def run(trials: int, seed: int, workdir: Path, progress=None) -> Result:
    root = Path(workdir)
    setup(root)
    result = Result("frames", seed)
    pid = daemon_pid(root)
    sockpath = str(root / "dmemud.sock")
    rng = random.Random(seed)
    control = Conn(sockpath)
    base_tracebacks = tracebacks(root)
    try:
        for trial in range(trials):
            what, frame, owed = generate(rng, trial)
            result.trials += 1
            _one(sockpath, what, frame, owed, trial + 1000, result)
            if not alive(pid):
                result.fail("death", what)
                break
            try:
                if control.call("status", 1) is None:
                    raise OSError("closed")
            except OSError:
                deadline = time.monotonic() + 2
                while alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                result.fail("hang" if alive(pid) else "death", what)
                break
            now = tracebacks(root)
            if now > base_tracebacks:
                result.fail("traceback", what)
                base_tracebacks = now
            if progress:
                progress(trial + 1)
    finally:
        control.close()
        stop_daemon(root)
    return result


def _one(sockpath: str, what: str, frame: bytes, owed, rid: int, result: Result) -> None:
    """Send one frame, then a status request on the same connection: the daemon must answer
    both (owed replies, then the status) or close the connection; silence is a hang."""
    try:
        conn = Conn(sockpath)
    except OSError:
        result.fail("death", f"no connection before {what}")
        return
    try:
        conn.send(frame)
        if owed == EOF:
            conn.sock.shutdown(socket.SHUT_WR)
        else:
            try:
                conn.send(_frame(json.dumps({"id": SENTINEL, "op": "status"}).encode()))
            except BrokenPipeError:
                pass        # it closed already: what it said before is still to be read
        while True:
            obj = conn.read()
            if obj is None:
                return          # the daemon closed a connection it could not trust: allowed
            err = obj.get("error")
            if isinstance(err, dict) and "internal error" in str(err.get("message")):
                result.fail("internal", what)
            if obj.get("id") == SENTINEL:
                return
    except socket.timeout:
        if not any(op in what for op in WAITING_OPS):     # a well-formed wait may rightly wait
            result.fail("hang", what)
    except OSError:
        pass                    # reset by the daemon: a closed connection, allowed
    finally:
        conn.close()
