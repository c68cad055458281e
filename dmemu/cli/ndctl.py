"""ndctl: manage emulated pmem namespaces the way ndctl manages real ones.

Subcommands and JSON follow ndctl (create-namespace, destroy-namespace, enable-/disable-
namespace, list, inject-error); ``power-fail`` and ``remove`` are dmemu's additions for what
real hardware does by itself. Namespaces are named namespace0.N, their block devices pmemN.
"""
import json
import shutil
import sys

from .. import client
from ..units import human, parse_size
from .common import ArgumentParser, command_main

DEFAULT_SIZE = "256M"


def namespace_json(d: dict, *, media_errors: bool = False, human_units: bool = False,
                   dax_region: bool = False) -> dict:
    """A namespace as `ndctl list` prints it (util_namespace_to_json): fsdax and devdax
    say how their pages are mapped, sector and raw do not; a devdax namespace has a
    character device (or, with -X, its dax region) instead of a block device."""
    # a sector namespace is as big as its BTT exports, as ndctl reports it
    size = d.get("btt_size", d["size"])
    size = human(size) if human_units else size
    mode = d["mode"]
    out = {"dev": d["dev"], "mode": mode}
    if mode in ("fsdax", "devdax"):
        out["map"] = "mem" if mode == "fsdax" else "dev"
    out.update(size=size, uuid=d["uuid"])
    if mode == "devdax":
        if dax_region:
            out["daxregion"] = dax_region_json(d, human_units=human_units, embedded=True)
        else:
            out["chardev"] = d["blockdev"]
    else:
        out["sector_size"] = d.get("sector_size", 512)
    if mode in ("fsdax", "devdax"):
        out["align"] = d["align"]
    if mode != "devdax":
        out["blockdev"] = d["blockdev"]
    if d.get("name"):
        out["name"] = d["name"]
    # Where a store becomes durable: ndctl reports this per region; here it is per namespace.
    out["persistence_domain"] = "cpu_cache" if d["model"] == "eadr" else "memory_controller"
    if not d["enabled"]:
        out["state"] = "disabled"
    if media_errors and d["badblocks"]:
        out["badblock_count"] = sum(c for _, c in d["badblocks"])
        out["badblocks"] = [{"offset": s, "length": c, "dimms": []} for s, c in d["badblocks"]]
    return out


def dax_device_json(d: dict, *, human_units: bool = False) -> dict:
    """A device-dax instance as daxctl lists it (util_daxctl_dev_to_json)."""
    return {"chardev": d["blockdev"], "size": human(d["size"]) if human_units else d["size"],
            "target_node": 0, "align": human(d["align"]) if human_units else d["align"],
            "mode": "devdax"}


def dax_region_json(d: dict, *, human_units: bool = False, embedded: bool = False,
                    devices: bool = True) -> dict:
    """The dax region of a devdax namespace (util_daxctl_region_to_json): its path only
    when not inside the namespace's own object."""
    out = {} if embedded else {"path": f"/dmemu/ndbus0/region0/{d['blockdev']}"}
    out.update(id=0, size=human(d["size"]) if human_units else d["size"], align=d["align"])
    if devices:
        out["devices"] = [dax_device_json(d, human_units=human_units)]
    return out


# One region and one DIMM stand for the emulated platform: every namespace lives in region0.
REGION_ALIGN = 2 << 20


def region_json(devs: list, *, human_units: bool = False, dimms: bool = False) -> dict:
    """region0 as ndctl lists it: as large as its namespaces plus what the host could still
    give a new eadr namespace (rounded down to 2 MiB), which is its available size."""
    from ..paths import StatePaths
    free = shutil.disk_usage(StatePaths().root).free // REGION_ALIGN * REGION_ALIGN
    used = sum(d["size"] for d in devs)
    size = (lambda n: human(n) if human_units else n)
    out = {"dev": "region0", "size": size(used + free), "available_size": size(free),
           "max_available_extent": size(free), "type": "pmem"}
    if dimms:
        out["mappings"] = [{"dimm": "nmem0", "offset": 0, "length": size(used + free), "position": 0}]
    out["persistence_domain"] = ("memory_controller" if any(d["model"] == "adr" for d in devs)
                                 else "cpu_cache")
    return out


def dimm_json() -> dict:
    return {"dev": "nmem0", "id": "dmemu-nmem0", "handle": 0, "phys_id": 0}


def dump(obj) -> str:
    """ndctl's JSON: two-space indent, no space after the colon."""
    return json.dumps(obj, indent=2, separators=(",", ":"))


def print_list(items: list) -> None:
    # ndctl prints a lone object bare and several as an array.
    if len(items) == 1:
        print(dump(items[0]))
    elif items:
        print(dump(items))


def build_parser(prog: str) -> ArgumentParser:
    p = ArgumentParser(prog=prog, description="Manage emulated pmem namespaces (dmemu).")
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    c = sub.add_parser("create-namespace", help="create a namespace (and its /dev/pmemN)")
    c.add_argument("-s", "--size", default=DEFAULT_SIZE, help=f"capacity, e.g. 64M, 1G (default {DEFAULT_SIZE})")
    c.add_argument("-a", "--align", help="alignment: 4K, 2M (default) or 1G")
    c.add_argument("-m", "--mode", default=None, choices=("fsdax", "raw", "sector", "devdax"),
                   help="fsdax: DAX-capable block device (default); raw: plain block device; "
                        "sector: atomic sectors (BTT), not DAX-capable; devdax: a DAX "
                        "character device, no filesystem")
    c.add_argument("-e", "--reconfig", metavar="NAMESPACE",
                   help="reconfigure this namespace (its size and contents stay)")
    c.add_argument("-f", "--force", action="store_true",
                   help="reconfigure an enabled namespace")
    c.add_argument("-l", "--sector-size", type=int,
                   help="logical sector size: 512, or 4096 for sector mode (the BTT's)")
    c.add_argument("-n", "--name", default="", help="a label for the namespace")
    c.add_argument("--persistence", default="eadr", choices=("eadr", "adr"),
                   help="eadr: stores durable when they land (default); adr: stores are lost "
                        "at power failure unless flushed and fenced")
    c.add_argument("-r", "--region", default="region0", help="only region0 exists here")

    d = sub.add_parser("destroy-namespace", help="destroy a namespace (refused while in use)")
    d.add_argument("namespace")
    d.add_argument("-f", "--force", action="store_true",
                   help="destroy an enabled namespace (ndctl asks for it)")

    for name, text in (("disable-namespace", "hot-remove a namespace: its users get errors"),
                       ("remove", "same as disable-namespace (dmemu)"),
                       ("enable-namespace", "bring a disabled namespace back")):
        x = sub.add_parser(name, help=text)
        x.add_argument("namespace")

    ls = sub.add_parser("list", help="list namespaces, regions and DIMMs as JSON")
    ls.add_argument("-N", "--namespaces", action="store_true", help="list namespaces (the default)")
    ls.add_argument("-R", "--regions", action="store_true", help="list regions")
    ls.add_argument("-D", "--dimms", action="store_true", help="list DIMMs")
    ls.add_argument("-X", "--device-dax", action="store_true",
                    help="a devdax namespace's dax region instead of its chardev")
    ls.add_argument("-r", "--region", help="only this region")
    ls.add_argument("-M", "--media-errors", action="store_true", help="include media errors")
    ls.add_argument("-i", "--idle", action="store_true", help="include disabled namespaces")
    ls.add_argument("-u", "--human", action="store_true", help="human-readable sizes")
    ls.add_argument("-n", "--namespace", help="only this namespace")

    ie = sub.add_parser("inject-error", help="inject (or clear, or show) media errors")
    ie.add_argument("namespace")
    ie.add_argument("-B", "--block", type=int, default=0, help="first 512-byte block")
    ie.add_argument("-n", "--count", type=int, default=1, help="number of blocks")
    ie.add_argument("-d", "--uninject", action="store_true", help="clear instead of inject")
    ie.add_argument("-t", "--status", action="store_true", help="show the injected errors")
    ie.add_argument("-N", "--no-notify", action="store_true", help="accepted for compatibility")

    ce = sub.add_parser("clear-errors", aliases=["clear-error"], help="clear media errors")
    ce.add_argument("namespace")
    ce.add_argument("-B", "--block", type=int, help="first 512-byte block (default: all)")
    ce.add_argument("-n", "--count", type=int, default=1, help="number of blocks")

    pf = sub.add_parser("power-fail", help="cut the power (dmemu): volatile data is lost, "
                        "users lose their devices")
    pf.add_argument("devices", nargs="*", help="devices (default: all)")
    pf.add_argument("--tear", action="store_true", help="let unflushed lines tear at 8-byte words")
    pf.add_argument("--seed", type=int, help="seed for --tear")
    return p


async def _main(args) -> int:
    async with client.connect(prog="ndctl") as k:
        cmd = args.cmd
        if cmd == "create-namespace":
            if args.region != "region0":
                from ..errors import no_device
                raise no_device(f"region '{args.region}' not found: only region0 exists")
            if args.reconfig:
                r = await k.call("reconfigure_namespace", namespace=args.reconfig,
                                 mode=args.mode or "fsdax", force=args.force,
                                 name=args.name or None, sector_size=args.sector_size)
            else:
                if args.force:
                    from ..errors import invalid
                    raise invalid("--force only applies with -e/--reconfig NAMESPACE")
                size = parse_size(args.size)
                r = await k.call("create_namespace", size=str(size), align=args.align,
                                 mode=args.mode or "fsdax", name=args.name,
                                 persistence=args.persistence, sector_size=args.sector_size)
            print(dump(namespace_json(r["namespace"])))
        elif cmd == "destroy-namespace":
            if not args.force:
                # ndctl's namespace_prep_reconfig: an active namespace needs --force.
                devs = (await k.call("list", kind="pmem"))["devices"]
                d = next((d for d in devs if args.namespace.removeprefix("/dev/") in
                          (d["dev"], d["blockdev"], d["name"])), None)
                if d is not None and d["enabled"]:
                    from ..errors import busy
                    raise busy(f"{d['dev']} is active, specify --force for re-configuration")
            await k.call("destroy", device=args.namespace, kind="pmem")
            print("destroyed 1 namespace")
        elif cmd in ("disable-namespace", "remove"):
            await k.call("disable", device=args.namespace)
            print("disabled 1 namespace")
        elif cmd == "enable-namespace":
            await k.call("enable", device=args.namespace)
            print("enabled 1 namespace")
        elif cmd == "list":
            await list_cmd(k, args)
        elif cmd == "inject-error":
            if args.status:
                r = await k.call("list", kind="pmem")
                spec = next((d for d in r["devices"] if args.namespace in (d["dev"], d["blockdev"], d["name"])), None)
                if spec is None:
                    from ..errors import no_device
                    raise no_device(f"{args.namespace}: no such namespace")
                print(dump({"badblocks": [{"block": s, "count": c} for s, c in spec["badblocks"]]}))
            elif args.uninject:
                await k.call("clear_error", device=args.namespace, sector=args.block, count=args.count)
            else:
                await k.call("inject_error", device=args.namespace, sector=args.block, count=args.count)
        elif cmd in ("clear-errors", "clear-error"):
            await k.call("clear_error", device=args.namespace, sector=args.block,
                         count=args.count if args.block is not None else None)
        elif cmd == "power-fail":
            await power_fail(k, args)
    return 0


async def list_cmd(k, args) -> None:
    """ndctl list: namespaces by default; -R regions (holding their namespaces), -D DIMMs,
    combined into one object as ndctl's list_display does."""
    devs = (await k.call("list", kind="pmem"))["devices"]
    regions = args.regions or bool(args.region)
    spaces = args.namespaces or not (regions or args.dimms) or bool(args.namespace)
    matched = devs
    if args.region and args.region != "region0":
        matched = []
    shown = [d for d in matched if d["enabled"] or args.idle]
    if args.namespace:
        shown = [d for d in shown if args.namespace in (d["dev"], d["blockdev"], d["name"])]
    nss = [namespace_json(d, media_errors=args.media_errors, human_units=args.human,
                          dax_region=args.device_dax) for d in shown] if spaces else []
    dimms = [dimm_json()] if args.dimms else []
    regs = []
    if regions and (matched or not args.region):
        reg = region_json(devs, human_units=args.human, dimms=args.dimms)
        if nss:
            reg["namespaces"] = nss
        regs = [reg]
    if (args.namespace or args.region) and not (nss or regs):
        # ndctl's util_display_json_array says this for an empty result.
        print("  Warning: no matching devices found", file=sys.stderr)
        return
    if bool(dimms) + bool(regs) + bool(nss) > 1:
        platform = {}
        if dimms:
            platform["dimms"] = dimms
        if regs:
            platform["regions"] = regs        # the namespaces are inside them
        elif nss:
            platform["namespaces"] = nss
        print(dump(platform))
    else:
        print_list(dimms or regs or nss)


async def power_fail(k, args) -> None:
    """Shared with `dmemu power-fail`."""
    r = await k.call("power_fail", devices=args.devices, tear=args.tear, seed=args.seed)
    for name, lost in sorted(r["lost"].items()):
        print(f"{name}: power failed, {lost} bytes not yet durable were lost")


def main(argv=None) -> int:
    return command_main("ndctl", build_parser, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
