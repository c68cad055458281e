"""dmemu: the emulation's own verbs: plain disks, a device overview, power, removal.

Plain disks are non-DAX block devices backed by a file with a volatile write cache, like a
loop device on a disk: the other half of a mixed DAX/non-DAX table.
"""
import sys

from .. import client
from ..units import human, parse_size
from .common import ArgumentParser, command_main
from .ndctl import dump, power_fail


def build_parser(prog: str) -> ArgumentParser:
    p = ArgumentParser(prog=prog, description="dmemu emulation commands: disks, lsblk, power-fail, removal.")
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    disk = sub.add_parser("disk", help="plain (non-DAX) disks")
    dsub = disk.add_subparsers(dest="disk_cmd", metavar="ACTION", required=True)
    c = dsub.add_parser("create", help="create a disk")
    c.add_argument("-s", "--size", required=True, help="capacity, e.g. 64M")
    c.add_argument("-n", "--name", help="its name (default diskN); /dev/NAME names it")
    dsub.add_parser("list", help="list disks as JSON")
    d = dsub.add_parser("destroy", help="destroy a disk (refused while in use)")
    d.add_argument("disk")
    sub.add_parser("lsblk", help="every device: name, maj:min, size, DAX, model")
    pf = sub.add_parser("power-fail", help="cut the power: volatile data is lost, users lose their devices")
    pf.add_argument("devices", nargs="*", help="devices (default: all)")
    pf.add_argument("--tear", action="store_true", help="let unflushed data tear (8-byte words, sectors)")
    pf.add_argument("--seed", type=int, help="seed for --tear")
    r = sub.add_parser("remove", help="hot-remove a device: its users get errors from now on")
    r.add_argument("device")
    a = sub.add_parser("add", help="bring a removed device back")
    a.add_argument("device")
    tr = sub.add_parser("trace", help="record what becomes durable on an adr namespace, fence by "
                        "fence, to rebuild the media as a crash at any fence leaves it")
    tr.add_argument("action", choices=("start", "stop", "status"))
    tr.add_argument("device")
    ci = sub.add_parser("crash-image", help="write the media of a traced namespace as a power "
                        "failure right after fence K leaves it")
    ci.add_argument("device")
    ci.add_argument("--fence", type=int, required=True, help="0 = before the first fence")
    ci.add_argument("-o", "--output", required=True, help="the image file to write")
    ci.add_argument("--unflushed", type=float, default=0.0,
                    help="probability that a line stored but not yet flushed survived")
    ci.add_argument("--tear", action="store_true", help="surviving unflushed lines tear at 8 bytes")
    ci.add_argument("--seed", type=int)
    ci.add_argument("--in-flight", type=int, metavar="N",
                    help="only the next N fences' stores may have survived (1: the bio write "
                         "the power failure interrupted)")
    pr = sub.add_parser("profile", help="show or choose how the stack behaves: 'fixed' (DAX "
                        "snapshots, clear refusals; the default) or 'linux' (Linux 6.1 and LVM "
                        "2.03.16, their texts and exit codes); kept across restarts")
    pr.add_argument("profile", nargs="?", choices=("linux", "fixed"))
    dm = sub.add_parser("dmesg", help="print the kernel log ring, as dmesg does")
    dm.add_argument("-c", "--read-clear", action="store_true", help="clear the ring after printing")
    pa = sub.add_parser("param", help="show or set a kernel parameter, e.g. 'snapshot_dax off' "
                        "to refuse snapshots of DAX devices as Linux does")
    pa.add_argument("name", nargs="?")
    pa.add_argument("value", nargs="?", choices=("on", "off", "1", "0"))
    return p


def disk_json(d: dict) -> dict:
    return {"name": d["blockdev"], "maj:min": d["devno"], "size": d["size"], "uuid": d["uuid"],
            "dax": d["dax"], "write_cache": "write back", "state": "live" if d["enabled"] else "removed",
            "badblocks": [{"offset": s, "length": c} for s, c in d["badblocks"]]}


async def _main(args) -> int:
    async with client.connect(prog="dmemu") as k:
        if args.cmd == "disk":
            if args.disk_cmd == "create":
                r = await k.call("create_disk", size=str(parse_size(args.size)), name=args.name)
                print(dump(disk_json(r["disk"])))
            elif args.disk_cmd == "list":
                print(dump([disk_json(d) for d in (await k.call("list", kind="disk"))["devices"]]))
            elif args.disk_cmd == "destroy":
                await k.call("destroy", device=args.disk, kind="disk")
                print(f"destroyed disk {args.disk}")
        elif args.cmd == "lsblk":
            print(f"{'NAME':<12} {'MAJ:MIN':<8} {'SIZE':>7} {'DAX':<3} {'MODEL':<5} STATE")
            for d in (await k.call("list"))["devices"]:
                print(f"{d['blockdev']:<12} {d['devno']:<8} {human(d.get('btt_size', d['size'])):>7} "
                      f"{'yes' if d['dax'] else 'no':<3} {d['model']:<5} "
                      f"{'live' if d['enabled'] else 'removed'}")
        elif args.cmd == "power-fail":
            await power_fail(k, args)
        elif args.cmd == "remove":
            await k.call("disable", device=args.device)
            print(f"{args.device} removed")
        elif args.cmd == "trace":
            if args.action == "status":
                from ..persist_trace import read_trace
                path = k.paths.root / "traces" / f"{args.device.removeprefix('/dev/')}.trace"
                if not path.exists():
                    print(f"{args.device}: no trace")
                else:
                    print(f"{args.device}: {len(read_trace(str(path)))} fences recorded in {path}")
            else:
                r = await k.call("trace", action=args.action, device=args.device)
                done = "started" if args.action == "start" else "stopped"
                print(f"{args.device}: trace {done}: base {r['base']}, trace {r['trace']}")
        elif args.cmd == "crash-image":
            from ..persist_trace import materialize, read_trace
            name = args.device.removeprefix("/dev/")
            tdir = k.paths.root / "traces"
            if not (tdir / f"{name}.trace").exists():
                from ..errors import no_device
                raise no_device(f"{args.device}: no trace recorded: run 'dmemu trace start {name}' first")
            if args.in_flight is not None and args.in_flight < 0:
                from ..errors import invalid
                raise invalid(f"--in-flight {args.in_flight}: give a number of fences, 0 or more")
            records = read_trace(str(tdir / f"{name}.trace"))
            if not 0 <= args.fence <= len(records):
                from ..errors import invalid
                raise invalid(f"fence {args.fence} out of range: the trace has {len(records)} fences")
            n = materialize(str(tdir / f"{name}.base"), records, args.fence, args.output,
                            unflushed=args.unflushed, tear=args.tear, seed=args.seed,
                            in_flight=args.in_flight)
            print(f"{args.output}: media after fence {args.fence} of {len(records)}"
                  + (f", {n} unflushed lines survived" if args.unflushed else ""))
        elif args.cmd == "profile":
            r = await k.call("profile", profile=args.profile)
            print(r["profile"])
        elif args.cmd == "dmesg":
            for line in (await k.call("dmesg", clear=args.read_clear))["lines"]:
                print(line)
        elif args.cmd == "param":
            req = {}
            if args.name:
                req["param"] = args.name
                if args.value is not None:
                    req["value"] = args.value in ("on", "1")
            params = (await k.call("dm_param", **req))["params"]
            for name, value in params.items():
                if not args.name or name == args.name:
                    print(f"{name} = {'on' if value else 'off'}")
        elif args.cmd == "add":
            await k.call("enable", device=args.device)
            print(f"{args.device} added")
    return 0


def main(argv=None) -> int:
    return command_main("dmemu", build_parser, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
