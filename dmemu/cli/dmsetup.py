"""dmsetup: low-level device-mapper control, with dmsetup's subcommands and output formats.

Tables come from --table, a file argument, or standard input, as with the real command.
"""
import sys

from .. import client
from ..errors import DmemuError
from .common import ArgumentParser, command_main


def build_parser(prog: str) -> ArgumentParser:
    p = ArgumentParser(prog=prog, description="Device-mapper control for dmemu devices.")
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    def table_source(x):
        x.add_argument("--table", help="the table, lines separated by newlines or ';'")
        x.add_argument("table_file", nargs="?", help="a file holding the table (default: stdin)")

    c = sub.add_parser("create", help="create a device (and load and resume its table)")
    c.add_argument("name")
    table_source(c)
    c.add_argument("-u", "--uuid", default="")
    c.add_argument("-r", "--readonly", action="store_true")
    c.add_argument("-n", "--notable", action="store_true", help="create without a table")
    for name in ("load", "reload"):
        x = sub.add_parser(name, help="load a table into the inactive slot")
        x.add_argument("name")
        table_source(x)
    s = sub.add_parser("suspend", help="suspend: hold I/O, freeze the filesystem, flush")
    s.add_argument("names", nargs="+")
    s.add_argument("--noflush", action="store_true")
    s.add_argument("--nolockfs", action="store_true")
    r = sub.add_parser("resume", help="resume, swapping in the inactive table if any")
    r.add_argument("names", nargs="+")
    rm = sub.add_parser("remove", help="remove devices (refused while in use)")
    rm.add_argument("names", nargs="+")
    rm.add_argument("-f", "--force", action="store_true", help="replace the table with error first")
    sub.add_parser("remove_all", help="remove every device that is not in use")
    rn = sub.add_parser("rename", help="rename a device, or set its uuid")
    rn.add_argument("name")
    rn.add_argument("new", nargs="?")
    rn.add_argument("--setuuid")
    cl = sub.add_parser("clear", help="drop the inactive table")
    cl.add_argument("name")
    i = sub.add_parser("info", help="device state")
    i.add_argument("names", nargs="*")
    i.add_argument("-c", "-C", "--columns", action="store_true")
    i.add_argument("--noheadings", action="store_true")
    ls = sub.add_parser("ls", help="list devices")
    ls.add_argument("--tree", action="store_true")
    ls.add_argument("--target")
    for name in ("table", "status"):
        x = sub.add_parser(name, help=f"show the {name} lines")
        x.add_argument("names", nargs="*")
        x.add_argument("--target")
        if name == "table":
            x.add_argument("--inactive", action="store_true")
    d = sub.add_parser("deps", help="the devices a device uses")
    d.add_argument("names", nargs="*")
    m = sub.add_parser("message", help="send a message to a target")
    m.add_argument("name")
    m.add_argument("sector", type=int)
    m.add_argument("words", nargs="+")
    w = sub.add_parser("wait", help="wait for the device's next event (or one after EVENT_NR)")
    w.add_argument("name")
    w.add_argument("event_nr", nargs="?", type=int)
    sub.add_parser("targets", help="the registered target types")
    sub.add_parser("version", help="versions")
    sub.add_parser("mknodes", help="accepted for compatibility (device names are dmemu's)")
    return p


def read_table(args) -> str:
    if args.table is not None:
        return args.table.replace(";", "\n")
    if args.table_file:
        try:
            with open(args.table_file) as f:
                return f.read()
        except OSError as e:
            raise DmemuError(e.errno, f"{args.table_file}: {e.strerror}") from None
    if sys.stdin is None or sys.stdin.isatty():
        raise DmemuError(22, "no table given: use --table, a file, or standard input")
    return sys.stdin.read()


def _state(d: dict) -> str:
    return ("L" if d["live"] else "-") + ("I" if d["inactive"] else "-") + \
           ("s" if d["suspended"] else "-") + ("r" if d["read_only"] else "w")


def _tables_present(d: dict) -> str:
    if d["live"] and d["inactive"]:
        return "LIVE & INACTIVE"
    return "LIVE" if d["live"] else ("INACTIVE" if d["inactive"] else "None")


def _info_long(d: dict) -> str:
    major, minor = d["devno"].split(":")
    state = "SUSPENDED" if d["suspended"] else "ACTIVE"
    if d["read_only"]:
        state += " (READ-ONLY)"
    lines = [f"Name:              {d['name']}", f"State:             {state}",
             "Read Ahead:        256", f"Tables present:    {_tables_present(d)}",
             f"Open count:        {d['open_count']}", f"Event number:      {d['event_nr']}",
             f"Major, minor:      {major}, {minor}", f"Number of targets: {d['targets']}"]
    if d["uuid"]:
        lines.append(f"UUID: {d['uuid']}")
    return "\n".join(lines)


def _tree(devs: dict, bases: dict) -> list[str]:
    by_devno = {d["devno"]: d for d in devs.values()}
    used = {dep for d in devs.values() for dep in d["deps"]}
    out = []

    def walk(devno, prefix, last, top):
        d = by_devno.get(devno)
        label = f"{d['name']} ({devno})" if d else f"{bases.get(devno, '')} ({devno})".lstrip()
        if top:
            out.append(label)
            child_prefix = " "
        else:
            out.append(prefix + ("└─" if last else "├─") + label)
            child_prefix = prefix + ("   " if last else "│  ")
        deps = d["deps"] if d else []
        for i, dep in enumerate(deps):
            walk(dep, child_prefix, i == len(deps) - 1, False)

    for d in sorted(devs.values(), key=lambda x: x["name"]):
        if d["devno"] not in used:
            walk(d["devno"], "", True, True)
    return out


# The ioctl each subcommand issues, as libdm names it in its "ioctl on NAME failed" line.
IOCTL = {"remove": "remove", "suspend": "suspend", "resume": "resume", "load": "reload",
         "reload": "reload", "rename": "rename", "clear": "clear", "message": "message"}


class NoDevice(Exception):
    """A name that matches no device: dmsetup's own texts, printed bare (no 'dmsetup:')."""

    def __init__(self, text: str, code: int = 1, stdout: bool = False):
        super().__init__(text)
        self.text, self.code, self.stdout = text, code, stdout


def _find(devs: list, n: str):
    """A device by name, /dev/mapper/name, major:minor or uuid, as the kernel looks it up."""
    for d in devs:
        if n in (d["name"], f"/dev/mapper/{d['name']}", d["devno"]) or (d["uuid"] and n == d["uuid"]):
            return d
    return None


async def _check_exists(k, args) -> None:
    """Name a missing device the way dmsetup does for each subcommand: an ioctl that
    fails with ENXIO for those that change a device, 'Device does not exist.' for the
    reports (on stdout and successfully for deps, as dmsetup's _deps)."""
    cmd = args.cmd
    names = [args.name] if hasattr(args, "name") and cmd != "create" else list(getattr(args, "names", None) or [])
    if cmd not in IOCTL and cmd not in ("info", "table", "status", "deps", "wait"):
        return
    devs = (await k.call("dm_list"))["devices"]
    for n in names:
        if _find(devs, n) is not None:
            continue
        if cmd in IOCTL:
            raise NoDevice(f"device-mapper: {IOCTL[cmd]} ioctl on {n}  failed: "
                           "No such device or address\nCommand failed.")
        if cmd == "deps":
            raise NoDevice("Device does not exist.", code=0, stdout=True)
        if cmd == "wait":
            raise NoDevice(f"device-mapper: waitevent ioctl on {n}  failed: "
                           "No such device or address\nCommand failed.")
        raise NoDevice("Device does not exist.\nCommand failed.")


async def _remove_all(k) -> None:
    """Remove every device nothing uses, top-down and again until a pass removes nothing
    (removing a top frees what it held), as the kernel's dm_hash_remove_all; then name
    what is left, which the kernel says in its log."""
    while True:
        devs = (await k.call("dm_list"))["devices"]
        held = {dep for d in devs for dep in d["deps"]}
        removed = 0
        for d in devs:
            if d["devno"] in held or d["open_count"]:
                continue
            try:
                await k.call("dm_remove", name=d["name"])
                removed += 1
            except DmemuError:
                pass        # opened since the listing: it stays, and is named below
        if not removed:
            break
    left = (await k.call("dm_list"))["devices"]
    if left:
        held = {dep: d["name"] for d in left for dep in d["deps"]}
        why = [f"{d['name']} ({'held by ' + held[d['devno']] if d['devno'] in held else 'open'})"
               for d in sorted(left, key=lambda x: x["name"])]
        print(f"device-mapper: remove_all left {len(left)} open device(s): {', '.join(why)}",
              file=sys.stderr)


async def _main(args) -> int:
    try:
        return await _run(args)
    except DmemuError as e:
        if not e.message.startswith("device-mapper: "):
            raise
        # libdm's own line (the linux profile), printed bare as dmsetup does
        print(f"{e.message}\nCommand failed.", file=sys.stderr)
        return 1


async def _run(args) -> int:
    async with client.connect(prog="dmsetup") as k:
        cmd = args.cmd
        try:
            await _check_exists(k, args)
        except NoDevice as e:
            print(e.text, file=sys.stdout if e.stdout else sys.stderr)
            return e.code
        if cmd == "create":
            table = None if args.notable else read_table(args)
            await k.call("dm_create", name=args.name, uuid=args.uuid, read_only=args.readonly,
                         table=table)
        elif cmd in ("load", "reload"):
            await k.call("dm_load", name=args.name, table=read_table(args))
        elif cmd == "suspend":
            for n in args.names:
                await k.call("dm_suspend", name=n, noflush=args.noflush, nolockfs=args.nolockfs)
        elif cmd == "resume":
            for n in args.names:
                await k.call("dm_resume", name=n)
        elif cmd == "remove":
            for n in args.names:
                await k.call("dm_remove", name=n, force=args.force)
        elif cmd == "remove_all":
            await _remove_all(k)
        elif cmd == "rename":
            if args.setuuid is not None:
                await k.call("dm_rename", name=args.name, uuid=args.setuuid)
            else:
                if not args.new:
                    raise DmemuError(22, "rename needs a new name (or --setuuid UUID)")
                await k.call("dm_rename", name=args.name, new=args.new)
        elif cmd == "clear":
            await k.call("dm_clear", name=args.name)
        elif cmd == "message":
            r = await k.call("dm_message", name=args.name, sector=args.sector, words=args.words)
            if r["reply"]:
                print(r["reply"])
        elif cmd == "wait":
            req = {"name": args.name}
            if args.event_nr is not None:
                req["event_nr"] = args.event_nr
            await k.call("dm_wait", **req)
        elif cmd == "targets":
            for name, v in (await k.call("dm_targets"))["targets"]:
                print(f"{name:<16} v{v[0]}.{v[1]}.{v[2]}")
        elif cmd == "version":
            print("Library version:   1.02.dmemu\nDriver version:    4.48.0")
        elif cmd == "mknodes":
            pass
        else:
            return await _report(k, args)
    return 0


async def _report(k, args) -> int:
    r = await k.call("dm_list")
    devs = {d["name"]: d for d in r["devices"]}
    names = getattr(args, "names", None) or []
    for n in names:
        if n not in devs:
            match = [d for d in devs.values() if n in (f"/dev/mapper/{d['name']}", d["devno"])]
            if not match:
                raise DmemuError(6, f"Device {n} not found")
            devs[n] = match[0]
    chosen = [devs[n] for n in names] if names else sorted(devs.values(), key=lambda d: d["name"])
    if getattr(args, "target", None):
        chosen = [d for d in chosen if args.target in d["target_types"]]
    cmd = args.cmd
    if cmd == "ls":
        if not chosen:
            print("No devices found")
        elif args.tree:
            print("\n".join(_tree({d["name"]: d for d in chosen}, r["bases"])))
        else:
            width = max(len(d["name"]) for d in chosen)
            for d in chosen:
                print(f"{d['name']:<{width}}\t({d['devno']})")
    elif cmd == "info":
        if not chosen:
            print("No devices found")
        elif args.columns:
            width = max(16, max(len(d["name"]) for d in chosen))
            if not args.noheadings:
                print(f"{'Name':<{width}} Maj Min Stat Open Targ Event  UUID")
            for d in chosen:
                major, minor = d["devno"].split(":")
                print(f"{d['name']:<{width}} {major:>3} {minor:>3} {_state(d)} {d['open_count']:>4} "
                      f"{d['targets']:>4} {d['event_nr']:>6} {d['uuid']}".rstrip())
        else:
            print("\n\n".join(_info_long(d) for d in chosen))
    elif cmd in ("table", "status"):
        key = "status" if cmd == "status" else ("inactive_table" if getattr(args, "inactive", False) else "table")
        if not chosen:
            print("No devices found")
        for d in chosen:
            lines = d[key]
            if getattr(args, "target", None):
                lines = [x for x in lines if x.split()[2] == args.target]
            prefix = f"{d['name']}: " if len(chosen) > 1 or not names else ""
            for line in lines:
                print(prefix + line)
    elif cmd == "deps":
        for d in chosen:
            deps = " ".join(f"({x.replace(':', ', ')})" for x in d["deps"])
            prefix = f"{d['name']}: " if len(chosen) > 1 or not names else ""
            print(f"{prefix}{len(d['deps'])} dependencies\t: {deps}".rstrip())
    return 0


def main(argv=None) -> int:
    return command_main("dmsetup", build_parser, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
