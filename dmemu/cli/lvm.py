"""The lvm commands: pvcreate, vgcreate, lvcreate, lvs, ... and ``lvm <command>``.

One main() serves every name in tools/: the command is the program's name, or the first
argument of ``lvm``. Messages carry LVM's two-space indent; a failure prints one line (two
where LVM adds what it gave up on) on stderr and exits 5, a bad command line exits 3.
"""
import argparse
import os
import sys

import trio

from .. import client
from ..errors import DmemuError
from ..lvm import commands
from ..lvm.commands import common
from ..lvm.errors import ECMD_FAILED, EINVALID_CMD_LINE, LvmError
from ..lvm.units import check_units
from .common import setup_logging


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EINVALID_CMD_LINE, f"  {self.prog}: {message}; see '{self.prog} --help'\n")


def _common(p):
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-y", "--yes", action="store_true", help="answer yes to every prompt")
    p.add_argument("-q", "--quiet", action="count", default=0,
                   help="no messages of success; -qq also answers every prompt no")


def _report(p, kind):
    p.add_argument("-o", "--options", action="append", help="fields, comma-separated; +F adds")
    p.add_argument("--units", default="h", type=_units, help="h, b, s, k, m, g, t (upper case: SI)")
    p.add_argument("--noheadings", action="store_true")
    p.add_argument("--reportformat", choices=("basic", "json"), default="basic")
    p.add_argument("--separator", help="between columns, instead of aligning them")
    p.add_argument("--nosuffix", action="store_true", help="sizes without their unit letter")
    p.add_argument("-S", "--select", help="only rows matching, e.g. lv_name=lv0 && lv_size>8m")
    p.add_argument("-a", "--all", action="store_true")


def _units(text):
    try:
        return check_units(text)
    except LvmError as e:
        raise argparse.ArgumentTypeError(e.message)


def _seconds(text):
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"invalid interval: {text}")
    return n


def _size_opts(p, size_help):
    p.add_argument("-L", "--size", help=size_help)
    p.add_argument("-l", "--extents", help="extents, or N%%FREE, N%%VG, N%%PVS, N%%ORIGIN")


def build(cmd: str, prog: str) -> ArgumentParser:
    p = ArgumentParser(prog=prog)
    _common(p)
    if cmd == "pvcreate":
        p.description = "Initialize devices as physical volumes."
        p.add_argument("-f", "--force", action="count", default=0)
        p.add_argument("devices", nargs="+", metavar="PV")
    elif cmd == "pvremove":
        p.description = "Remove the LVM label from physical volumes."
        p.add_argument("-f", "--force", action="count", default=0)
        p.add_argument("devices", nargs="+", metavar="PV")
    elif cmd == "pvs":
        p.description = "Report physical volumes."
        _report(p, "pv")
        p.add_argument("devices", nargs="*", metavar="PV")
    elif cmd == "vgcreate":
        p.description = "Create a volume group on devices (initializing them as PVs if needed)."
        p.add_argument("-f", "--force", action="count", default=0)
        p.add_argument("-s", "--physicalextentsize", metavar="SIZE", help="extent size (default 4M)")
        p.add_argument("vg", metavar="VG")
        p.add_argument("devices", nargs="+", metavar="PV")
    elif cmd == "vgs":
        p.description = "Report volume groups."
        _report(p, "vg")
        p.add_argument("names", nargs="*", metavar="VG")
    elif cmd == "vgchange":
        p.description = "Activate (-ay) or deactivate (-an) the LVs of volume groups."
        p.add_argument("-a", "--activate", choices=("y", "n", "ay"))
        p.add_argument("vgs", nargs="*", metavar="VG")
    elif cmd == "vgextend":
        p.description = "Add physical volumes to a volume group."
        p.add_argument("-f", "--force", action="count", default=0,
                       help="wipe filesystem signatures without asking")
        p.add_argument("vg", metavar="VG")
        p.add_argument("devices", nargs="+", metavar="PV")
    elif cmd == "vgreduce":
        p.description = "Remove unused physical volumes from a volume group."
        p.add_argument("-a", "--all", action="store_true", help="every empty PV")
        p.add_argument("--removemissing", action="store_true",
                       help="drop PVs that are gone (with -f also the LVs on them)")
        p.add_argument("-f", "--force", action="count", default=0)
        p.add_argument("vg", metavar="VG", nargs="?")
        p.add_argument("devices", nargs="*", metavar="PV")
    elif cmd == "vgck":
        p.description = "Check the consistency of volume groups."
        p.add_argument("--updatemetadata", action="store_true",
                       help="rewrite every PV's copy of the metadata")
        p.add_argument("vgs", nargs="*", metavar="VG")
    elif cmd == "vgremove":
        p.description = "Remove volume groups."
        p.add_argument("-f", "--force", action="count", default=0)
        p.add_argument("vgs", nargs="+", metavar="VG")
    elif cmd == "lvcreate":
        p.description = "Create a logical volume, or with -s a snapshot of one."
        _size_opts(p, "size (default unit MiB; k, m, g, t)")
        p.add_argument("-n", "--name")
        p.add_argument("-s", "--snapshot", action="store_true")
        p.add_argument("-c", "--chunksize", help="snapshot chunk size (default 4K)")
        p.add_argument("-Z", "--zero", choices=("y", "n"), default="y")
        p.add_argument("-W", "--wipesignatures", choices=("y", "n"), default="y")
        p.add_argument("target", nargs="*", metavar="VG|VG/ORIGIN [PV ...]")
    elif cmd == "lvs":
        p.description = "Report logical volumes."
        _report(p, "lv")
        p.add_argument("names", nargs="*", metavar="VG|LV")
    elif cmd == "lvremove":
        p.description = "Remove logical volumes."
        p.add_argument("-f", "--force", action="count", default=0)
        p.add_argument("lvs", nargs="+", metavar="VG|LV")
    elif cmd == "lvrename":
        p.description = "Rename a logical volume: VG OLD NEW or VG/OLD NEW."
        p.add_argument("names", nargs="+", metavar="NAME")
    elif cmd in ("lvextend", "lvreduce", "lvresize"):
        mode = {"lvextend": "extend", "lvreduce": "reduce", "lvresize": "any"}[cmd]
        p.description = {"extend": "Add extents to a logical volume.",
                         "reduce": "Reduce the size of a logical volume.",
                         "any": "Resize a logical volume."}[mode]
        sign = {"extend": "+SIZE to add", "reduce": "-SIZE to remove", "any": "+SIZE or -SIZE"}[mode]
        _size_opts(p, f"new size, or {sign} (default unit MiB)")
        p.add_argument("-r", "--resizefs", action="store_true",
                       help="resize the filesystem with the LV (daxfs-resize), as --fs resize")
        p.add_argument("--fs", choices=("checksize", "ignore", "resize", "resize_fsadm"),
                       help="checksize (lvreduce's default): refuse to cut a filesystem; "
                            "ignore: do not look; resize, resize_fsadm: resize it with the LV")
        if mode != "extend":
            p.add_argument("-f", "--force", action="count", default=0,
                           help="do not ask before reducing an LV that holds a filesystem")
        p.set_defaults(resize=mode, force=0)
        p.add_argument("lv", metavar="LV")
        p.add_argument("pvs", nargs="*", metavar="PV[:PE[-PE]]")
    elif cmd == "lvchange":
        p.description = "Activate (-ay) or deactivate (-an) logical volumes."
        p.add_argument("-a", "--activate", choices=("y", "n", "ay"))
        p.add_argument("lvs", nargs="+", metavar="LV")
    elif cmd == "lvconvert":
        p.description = "Convert a logical volume: --merge a snapshot into its origin."
        p.add_argument("--merge", action="store_true")
        p.add_argument("-b", "--background", action="store_true",
                       help="leave the merge to a background poller")
        p.add_argument("-i", "--interval", type=_seconds, metavar="SECONDS",
                       help="seconds between progress reports (default 15)")
        p.add_argument("lv", metavar="LV")
    elif cmd == "lvpoll":
        p.description = "Poll a merge until it finishes (what lvmpolld runs)."
        p.add_argument("--polloperation", required=True, choices=("merge",))
        p.add_argument("-i", "--interval", type=_seconds, metavar="SECONDS")
        p.add_argument("lv", metavar="LV")
    return p


def _signed_values(argv: list[str]) -> list[str]:
    """'-L -8M' as lvm2 reads it: a size or extent count may start with '-' (lvreduce,
    lvresize), which argparse would take for an option; join it to its option."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in ("-L", "--size", "-l", "--extents") and i + 1 < len(argv) \
                and argv[i + 1][:1] == "-" and argv[i + 1][1:2].isdigit():
            out.append(f"{a}={argv[i + 1]}" if a.startswith("--") else a + argv[i + 1])
            i += 2
            continue
        out.append(a)
        i += 1
    return out


COMMANDS = ("pvcreate", "pvremove", "pvs", "vgcreate", "vgextend", "vgreduce", "vgck", "vgs",
            "vgchange", "vgremove", "lvcreate", "lvs", "lvremove", "lvrename", "lvextend",
            "lvreduce", "lvresize", "lvchange", "lvconvert", "lvpoll")
# Commands that are another's function with a different mode (set_defaults in build()).
SAME_AS = {"lvreduce": "lvextend", "lvresize": "lvextend"}


async def _run(cmd, args) -> None:
    # A poller never starts dmemud: it has nothing to poll in a kernel that was not running
    # (and one left behind must not bring a daemon back into a state directory that went).
    async with client.connect(prog=cmd, autostart=cmd != "lvpoll") as k:
        await getattr(commands, SAME_AS.get(cmd, cmd))(k, args)


def main(argv=None, prog=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or os.path.basename(sys.argv[0]) or "lvm"
    cmd = prog
    if cmd == "lvm":
        if not argv or argv[0] in ("-h", "--help", "help"):
            print("  Available lvm commands:\n" + "\n".join(f"  {c}" for c in COMMANDS))
            return 0
        if argv[0] == "version":
            print("  LVM version:     2.03.dmemu\n  Library version: 1.02.dmemu\n"
                  "  Driver version:  4.48.0")
            return 0
        cmd = argv.pop(0)
        prog = cmd
    if cmd not in COMMANDS:
        print(f"  No such command '{cmd}'.  Try 'help'.", file=sys.stderr)
        return EINVALID_CMD_LINE
    args = build(cmd, prog).parse_args(_signed_values(argv))
    setup_logging(args.verbose)
    common.QUIET = args.quiet
    try:
        trio.run(_run, cmd, args)
    except LvmError as e:
        sys.stdout.flush()
        print(f"  {e.message}", file=sys.stderr)
        return e.code
    except DmemuError as e:
        sys.stdout.flush()
        print(f"  {e.message}", file=sys.stderr)
        return ECMD_FAILED
    except OSError as e:
        print(f"  {e.strerror}", file=sys.stderr)
        return ECMD_FAILED
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
