"""daxctl: the device-dax instances of devdax namespaces, as daxctl lists them.

``daxctl list`` shows each devdax namespace's character device (dax0.N); -R shows their
dax regions (with -D, the devices in them), -u human sizes, -d/-r pick one. The devices
are made and unmade with ``ndctl create-namespace -m devdax`` (or -e to reconfigure);
reconfiguring one as system RAM has no meaning for an emulated device and is not offered.
"""
import sys

from .. import client
from .common import ArgumentParser, command_main
from .ndctl import dax_device_json, dax_region_json, print_list


def build_parser(prog: str) -> ArgumentParser:
    p = ArgumentParser(prog=prog, description="List the device-dax instances of devdax namespaces.")
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    ls = sub.add_parser("list", help="list dax devices (and regions) as JSON")
    ls.add_argument("-D", "--devices", action="store_true", help="include dax device info")
    ls.add_argument("-R", "--regions", action="store_true", help="include dax region info")
    ls.add_argument("-i", "--idle", action="store_true", help="include idle devices")
    ls.add_argument("-u", "--human", action="store_true", help="human-readable sizes")
    ls.add_argument("-d", "--dev", help="only this device (dax0.N)")
    ls.add_argument("-r", "--region", help="only this region id (0 here)")
    return p


async def _main(args) -> int:
    async with client.connect(prog="daxctl") as k:
        devs = [d for d in (await k.call("list", kind="pmem"))["devices"]
                if d.get("chardev") and (d["enabled"] or args.idle)]
    if args.dev:
        devs = [d for d in devs if d["blockdev"] == args.dev]
    if args.region is not None and args.region not in ("0", "region0"):
        devs = []
    regions = args.regions or args.region is not None
    devices = args.devices or args.dev is not None or not regions
    if not devs:
        if args.dev or args.region is not None:
            print("  Warning: no matching devices found", file=sys.stderr)
        return 0
    if regions:
        print_list([dax_region_json(d, human_units=args.human, devices=devices) for d in devs])
    else:
        print_list([dax_device_json(d, human_units=args.human) for d in devs])
    return 0


def main(argv=None) -> int:
    return command_main("daxctl", build_parser, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
