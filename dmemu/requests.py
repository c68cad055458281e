"""What a request to dmemud may contain, checked before any operation acts on it.

The kernel copies an ioctl's argument in and checks every field before it looks at a device
(dm-ioctl.c's validate_params and check_version); dmemud does the same for every frame: the
operation's name, and each field's type, sign, range and size. A request that fails gets an
EINVAL reply naming the field; nothing has been touched. Fields an operation does not know
are ignored (newer clients may send more), but they count toward the nesting limit.

The schema is the list of operations the server has (``Server.op_*``): an operation missing
here is refused as unknown, so a new operation cannot skip validation by accident.
"""
from .errors import invalid
from .protocol import MAX_PAYLOAD

SECTOR_SIZE = 512
MAX_SECTOR = 1 << 62          # far beyond any device; keeps sector arithmetic in range
MAX_STRING = 4096             # PATH_MAX: the longest name or path a request needs
MAX_TABLE = 1 << 20           # a table of thousands of lines still fits
MAX_LIST = 1024
MAX_DEPTH = 4                 # request -> list -> string is the deepest a request needs
MAX_OP = 64


class _Field:
    """One field's rule: ``check(name, value)`` returns the value or raises EINVAL."""
    optional = True

    def __init__(self, *, required: bool = False):
        self.optional = not required

    def check(self, name: str, value):
        raise NotImplementedError


class Str(_Field):
    def __init__(self, limit: int = MAX_STRING, **kw):
        super().__init__(**kw)
        self.limit = limit

    def check(self, name, value):
        if not isinstance(value, str):
            raise invalid(f"{name} must be a string")
        if len(value) > self.limit:
            raise invalid(f"{name} is too long ({len(value)} characters, at most {self.limit})")
        if "\x00" in value:
            raise invalid(f"{name} must not contain a NUL character")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise invalid(f"{name} is not valid UTF-8") from None
        return value


class Int(_Field):
    def __init__(self, low: int = 0, high: int = MAX_SECTOR, multiple: int = 1, **kw):
        super().__init__(**kw)
        self.low, self.high, self.multiple = low, high, multiple

    def check(self, name, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(f"{name} must be an integer")
        if not self.low <= value <= self.high:
            raise invalid(f"{name} {value} is out of range ({self.low}..{self.high})")
        if value % self.multiple:
            raise invalid(f"{name} {value} is not a multiple of {self.multiple}")
        return value


class Bool(_Field):
    def check(self, name, value):
        if not isinstance(value, bool):
            raise invalid(f"{name} must be true or false")
        return value


class Size(_Field):
    """A size as users type it ('64M') or as a byte count; parse_size reads it later."""

    def check(self, name, value):
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise invalid(f"{name} must be a size such as 64M, or a number of bytes")
        if isinstance(value, int) and not 0 <= value <= MAX_SECTOR * SECTOR_SIZE:
            raise invalid(f"{name} {value} is out of range")
        if isinstance(value, str):
            Str(64).check(name, value)
        return value


class StrList(_Field):
    def check(self, name, value):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise invalid(f"{name} must be a list of strings")
        if len(value) > MAX_LIST:
            raise invalid(f"{name} has too many entries ({len(value)}, at most {MAX_LIST})")
        for v in value:
            Str().check(name, v)
        return value


DEVICE = Str()
NAME = Str(128)               # DM_NAME_LEN is 128
SECTOR = Int()
HANDLE = Int(1, 1 << 62, required=True)

# a BTT's sector (512 or 4096: the kernel refuses the rest, naming the mode)
SECTOR_SIZE_FIELD = Int(1, 1 << 16)

SCHEMA: dict[str, dict[str, _Field]] = {
    "hello": {"prog": Str(), "pid": Int(0, 1 << 31)},
    "status": {},
    "shutdown": {"force": Bool()},
    "changes": {"since": Int(0, 1 << 63), "wait": Bool()},
    "create_namespace": {"size": Size(required=True), "align": Size(), "mode": Str(16), "name": NAME,
                         "persistence": Str(16), "sector_size": SECTOR_SIZE_FIELD},
    "reconfigure_namespace": {"namespace": DEVICE, "mode": Str(16), "force": Bool(), "name": NAME,
                              "sector_size": SECTOR_SIZE_FIELD},
    "list": {"kind": Str(16)},
    "destroy": {"device": DEVICE, "kind": Str(16)},
    "create_disk": {"size": Size(required=True), "name": NAME},
    "inject_error": {"device": DEVICE, "sector": SECTOR, "count": Int(1)},
    "clear_error": {"device": DEVICE, "sector": SECTOR, "count": Int(1)},
    "disable": {"device": DEVICE},
    "enable": {"device": DEVICE},
    "power_fail": {"devices": StrList(), "tear": Bool(), "seed": Int(-(1 << 63), 1 << 63)},
    "trace": {"device": DEVICE, "action": Str(16)},
    "open": {"device": DEVICE, "exclusive": Bool(), "read_only": Bool(), "log": Str()},
    "close": {"handle": HANDLE},
    "unmounted": {"handle": HANDLE},
    "resolve": {"handle": HANDLE, "sector": Int(required=True), "nr": Int(1, required=True),
                "write": Bool()},
    "bio": {"handle": HANDLE, "bio": Str(16, required=True), "sector": SECTOR,
            "nbytes": Int(0, MAX_SECTOR * SECTOR_SIZE, SECTOR_SIZE), "fua": Bool(), "preflush": Bool()},
    "dm_create": {"name": NAME, "uuid": NAME, "read_only": Bool(), "table": Str(MAX_TABLE)},
    "dm_load": {"name": NAME, "table": Str(MAX_TABLE)},
    "dm_clear": {"name": NAME},
    "dm_suspend": {"name": NAME, "noflush": Bool(), "nolockfs": Bool()},
    "dm_resume": {"name": NAME},
    "dm_remove": {"name": NAME, "force": Bool()},
    "dm_rename": {"name": NAME, "new": NAME, "uuid": NAME},
    "dm_message": {"name": NAME, "sector": SECTOR, "words": StrList()},
    "dm_wait": {"name": NAME, "event_nr": Int(0, 1 << 63)},
    "dm_list": {},
    "dm_targets": {},
    "dm_param": {"param": Str(64), "value": Bool()},
    "profile": {"profile": Str(32)},
    "dmesg": {"clear": Bool()},
    "printk": {"line": Str(1024, required=True)},
}

# Operations that may carry a payload, and what it must be.
PAYLOAD_OPS = {"bio"}


def depth(obj) -> int:
    """How deeply ``obj`` nests lists and objects (a scalar is 0), without recursing."""
    deepest, stack = 0, [(obj, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            d += 1
            deepest = max(deepest, d)
            if d > MAX_DEPTH + 1:
                return d        # deep enough to refuse: stop counting
            stack.extend((x, d) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def request_id(obj: dict):
    """The id to answer with: an integer, or None when the id itself is bad."""
    rid = obj.get("id")
    if isinstance(rid, bool) or not isinstance(rid, int) or not 0 <= rid < 1 << 63:
        return None
    return rid


def check_request(obj: dict, payload: bytes) -> str:
    """The operation's name, once every field of the request has been checked.

    Fields that are absent or null keep their defaults (the handlers' ``req.get``); every
    other value must be of the field's kind and in its range.
    """
    if "id" in obj and request_id(obj) is None:
        raise invalid("id must be a non-negative integer")
    op = obj.get("op")
    if not isinstance(op, str):
        raise invalid("op must be a string naming an operation")
    if len(op) > MAX_OP or op not in SCHEMA:
        raise invalid(f"unknown operation '{op[:MAX_OP]}'")
    if depth(obj) > MAX_DEPTH:
        raise invalid(f"{op}: request nested too deeply (at most {MAX_DEPTH} levels)")
    for name, rule in SCHEMA[op].items():
        value = obj.get(name)
        if value is None:
            if not rule.optional:
                raise invalid(f"{op}: {name} is required")
            continue
        rule.check(name, value)
    if op == "bio" and obj.get("bio") == "read" and (obj.get("nbytes") or 0) > MAX_PAYLOAD:
        raise invalid(f"bio: nbytes {obj['nbytes']} is more than one reply carries ({MAX_PAYLOAD})")
    if payload:
        if op not in PAYLOAD_OPS or obj.get("bio") != "write":
            raise invalid(f"{op}: unexpected payload of {len(payload)} bytes")
        if len(payload) % SECTOR_SIZE:
            raise invalid(f"{op}: payload of {len(payload)} bytes is not a multiple of {SECTOR_SIZE}")
    return op


def check_ack(obj: dict) -> int:
    """The event id an acknowledgement answers."""
    eid = obj.get("ack")
    if isinstance(eid, bool) or not isinstance(eid, int):
        raise invalid("ack must be an integer event id")
    if depth(obj) > MAX_DEPTH:
        raise invalid(f"ack nested too deeply (at most {MAX_DEPTH} levels)")
    return eid
