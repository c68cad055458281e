"""LVM2's text metadata format: a tree of sections and ``key = value`` settings.

Values are integers, "strings" (with \\" and \\\\ escaped) or [arrays] of them; sections are
``name { ... }``; ``#`` starts a comment. The on-disk copy has the VG section first, then
contents/version/description/creation_host/creation_time, as lvm2's export.c writes it.
"""
import re

from .errors import LvmError

_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|[{}\[\],=]|[^\s{}\[\],="#]+')


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _value(v) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return _quote(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as metadata")


def dump(tree: dict, indent: int = 0) -> str:
    """A dict (sections are dicts, in insertion order) as text metadata."""
    pad = "\t" * indent
    out = []
    for key, v in tree.items():
        if isinstance(v, dict):
            out.append(f"{pad}{key} {{")
            out.append(dump(v, indent + 1).rstrip("\n"))
            out.append(f"{pad}}}")
        else:
            out.append(f"{pad}{key} = {_value(v)}")
    return "\n".join(x for x in out if x != "") + "\n"


def _unquote(tok: str) -> str:
    return re.sub(r"\\(.)", r"\1", tok[1:-1])


# A VG's metadata nests five sections deep (vg / logical_volumes / lv / segment); lvm2's
# config parser has no limit of its own, but a text nested thousands deep is damage, and
# following it would exhaust the stack.
MAX_DEPTH = 16


def parse(text: str) -> dict:
    """Text metadata back into nested dicts; a malformed text raises LvmError."""
    tokens = [t for t in _TOKEN.findall(text) if t.strip() and not t.startswith("#")]
    pos = 0

    def scalar(tok):
        if tok.startswith('"'):
            return _unquote(tok)
        try:
            return int(tok)
        except ValueError:
            try:
                return float(tok)
            except ValueError:
                raise LvmError(f"Parse error in metadata near '{tok}'") from None

    def section(depth: int = 0) -> dict:
        nonlocal pos
        if depth > MAX_DEPTH:
            raise LvmError(f"Parse error in metadata: sections nested more than {MAX_DEPTH} deep")
        out = {}
        while pos < len(tokens) and tokens[pos] != "}":
            key = tokens[pos]
            pos += 1
            if pos >= len(tokens):
                raise LvmError(f"Parse error in metadata: '{key}' has no value")
            if tokens[pos] == "{":
                pos += 1
                out[key] = section(depth + 1)
                if pos >= len(tokens) or tokens[pos] != "}":
                    raise LvmError(f"Parse error in metadata: section '{key}' is not closed")
                pos += 1
            elif tokens[pos] == "=":
                pos += 1
                if pos < len(tokens) and tokens[pos] == "[":
                    pos += 1
                    arr = []
                    while pos < len(tokens) and tokens[pos] != "]":
                        if tokens[pos] != ",":
                            arr.append(scalar(tokens[pos]))
                        pos += 1
                    pos += 1
                    out[key] = arr
                elif pos < len(tokens):
                    out[key] = scalar(tokens[pos])
                    pos += 1
            else:
                raise LvmError(f"Parse error in metadata near '{key}'")
        return out

    tree = section()
    if pos != len(tokens):
        raise LvmError("Parse error in metadata: unbalanced '}'")
    return tree
