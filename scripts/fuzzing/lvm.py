"""Corrupted LVM metadata with valid checksums, against the lvm commands and a real dmemud.

A volume group of two PVs with linear LVs and a snapshot is built once; each trial corrupts
its text metadata (wrong types, out-of-range and negative numbers, dangling references,
missing or extra keys, deep nesting, truncation, flipped bytes), writes it with a correct
checksum and a higher seqno to one PV (so the other keeps a good copy) or to both (so none is
good), and runs the commands a user would: pvs, vgs, lvs, vgchange -ay, lvcreate, vgchange -an.
Then the good metadata goes back and every DM device is removed.

Failures counted: ``traceback`` (an exception other than a clean refusal left a command),
``exit`` (an exit status other than 0, 3 or 5), ``over-label`` (an active table maps a base
device's sectors below the PV's data area: its label or metadata area, or beyond its end),
``death`` (dmemud went away).
"""
import contextlib
import io
import os
import random
import re
from pathlib import Path

import trio

from .common import Result, alive, daemon_pid, stop_daemon, tool

PE_START = 2048          # sectors: where pvcreate puts the data area (1 MiB)
COMMANDS = [("pvs",), ("vgs",), ("lvs", "-a"), ("vgchange", "-ay", "vg0"),
            ("lvcreate", "-L", "4M", "-n", "fz", "vg0"), ("lvs", "-a", "-o", "+devices"),
            ("vgchange", "-an", "vg0")]


def setup(root: Path) -> None:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for cmd in (("ndctl", "create-namespace", "-s", "32M", "-a", "4K"),
                ("dmemu", "disk", "create", "-s", "32M", "-n", "disk0"),
                ("pvcreate", "/dev/pmem0", "/dev/disk0"),
                ("vgcreate", "-s", "1M", "vg0", "/dev/pmem0", "/dev/disk0"),
                ("lvcreate", "-L", "8M", "-n", "lv0", "vg0", "/dev/pmem0"),
                ("lvcreate", "-L", "20M", "-n", "lv1", "vg0", "/dev/disk0"),
                ("lvcreate", "-s", "-L", "4M", "-n", "snap0", "vg0/lv0"),
                ("vgchange", "-an", "vg0")):
        r = tool(root, *cmd)
        if r.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")


# -- the metadata as text, written back with a valid checksum ---------------------------------

async def _read_text(name: str) -> str:
    from dmemu import client
    from dmemu.lvm.store import Store
    async with client.connect(prog="fuzz") as k:
        st = Store(k)
        await st.scan()
        from dmemu.lvm.metadata import dump
        return dump(st.vgs["vg0"].export())


async def _write_text(names: list[str], text: str) -> None:
    """Put ``text`` as the committed metadata of each PV, checksum and MDA header correct."""
    from dmemu import client
    from dmemu.lvm.label import LABEL_SCAN_SECTORS, SECTOR, PVHeader
    from dmemu.lvm.mda import MDA_HEADER_SIZE, MdaHeader, place_text
    from dmemu.lvm.store import Store
    async with client.connect(prog="fuzz") as k:
        st = Store(k)
        for name in names:
            dev = await k.open_device(name, read_only=True)
            try:
                head = await dev.read(0, LABEL_SCAN_SECTORS * SECTOR)
                hdr = PVHeader.unpack(head[SECTOR:2 * SECTOR], 1)
                start, _ = hdr.metadata_areas[0]
                mda = MdaHeader.unpack(await dev.read(start // SECTOR, MDA_HEADER_SIZE), start)
            finally:
                await dev.close()
            locn, writes = place_text(mda, text.encode(errors="surrogateescape") + b"\0")
            new = MdaHeader(mda.start, mda.size, locn)
            await st._write(name, writes + [(new.start, new.pack())])


async def _reset() -> None:
    """Remove every DM device the trial left."""
    from dmemu import client
    async with client.connect(prog="fuzz") as k:
        for _ in range(4):          # layers: top devices first, then what they stood on
            devs = (await k.call("dm_list"))["devices"]
            if not devs:
                return
            for d in devs:
                try:
                    await k.call("dm_remove", name=d["name"], force=True)
                except Exception:
                    pass


async def _tables() -> tuple[list[str], dict]:
    from dmemu import client
    async with client.connect(prog="fuzz") as k:
        listing = await k.call("dm_list")
        sizes = {d["devno"]: d["size"] // 512 for d in (await k.call("list"))["devices"]}
        return [line for d in listing["devices"] for line in d["table"]], sizes


# -- corruptions -------------------------------------------------------------------------------

WEIRD = ['-1', '0', '-4096', '18446744073709551616', '99999999999999999999999', '1.5', '1e400',
         '"x"', '""', '"../pv9"', '[]', '[1]', '["pv9", 0]', '["pv0"]', '[-1, 0]', '"pv9"',
         '"lv0"', '"snap0"', '"snapshot0"', '2147483648', '4294967295', '3', '7']


def _lines(text: str) -> list[str]:
    return text.split("\n")


def mutate(rng: random.Random, text: str) -> tuple[str, str]:
    """One corruption of the metadata text: (what was done, new text)."""
    lines = _lines(text)
    settings = [i for i, line in enumerate(lines) if " = " in line]
    sections = [i for i, line in enumerate(lines) if line.rstrip().endswith("{")]
    r = rng.random()
    if r < 0.45:        # a setting's value replaced
        i = rng.choice(settings)
        key = lines[i].split(" = ")[0]
        value = rng.choice(WEIRD)
        lines[i] = f"{key} = {value}"
        return f"{key.strip()} = {value}", "\n".join(lines)
    if r < 0.55:        # a reference pointed elsewhere
        i = rng.choice([j for j in settings if re.search(r"(stripes|origin|cow_store) =", lines[j])] or settings)
        key = lines[i].split(" = ")[0]
        value = rng.choice(['"pv9"', '"lv9"', '"snapshot0"', '["pv1", 999999]', '["pv0", 0, "pv1", 0]',
                            '"snap0"', '"lv0"', '["pv0", -5]'])
        lines[i] = f"{key} = {value}"
        return f"{key.strip()} -> {value}", "\n".join(lines)
    if r < 0.65:        # a setting removed
        i = rng.choice(settings)
        what = lines[i].strip()
        del lines[i]
        return f"removed {what}", "\n".join(lines)
    if r < 0.72:        # a section removed or renamed
        i = rng.choice(sections)
        name = lines[i].strip()
        lines[i] = lines[i].replace(name.split()[0], rng.choice(["pv9", "lv9", "segment9", "x"]), 1)
        return f"renamed section {name}", "\n".join(lines)
    if r < 0.78:        # deep nesting
        i = rng.choice(sections)
        n = rng.choice([50, 2000, 20000])
        lines.insert(i + 1, "a { " * n + "}" * n)
        return f"nested {n} deep", "\n".join(lines)
    if r < 0.84:        # truncation
        cut = rng.randrange(len(text))
        return f"truncated at {cut}", text[:cut]
    if r < 0.90:        # unbalanced braces
        i = rng.randrange(len(lines))
        lines.insert(i, rng.choice(["}", "{", "x {", "] = [", "= = ="]))
        return "unbalanced", "\n".join(lines)
    if r < 0.95:        # byte flips
        b = bytearray(text.encode())
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(7)      # stays ASCII
        return "flipped bits", b.decode()
    # a second VG section, or a setting's value as a section
    i = rng.choice(settings)
    key = lines[i].split(" = ")[0]
    lines[i] = f"{key} {{\n}}"
    return f"{key.strip()} as a section", "\n".join(lines)


def _bump_seqno(text: str, by: int) -> str:
    return re.sub(r"seqno = (\d+)", lambda m: f"seqno = {int(m.group(1)) + by}", text, count=1)


# -- a trial -----------------------------------------------------------------------------------

def _run_cmd(cmd: tuple) -> tuple[int | None, str]:
    from dmemu.cli import lvm
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = lvm.main(list(cmd[1:]), prog=cmd[0])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException as e:      # what would have been a traceback
        return None, f"{type(e).__name__}: {e}"
    return code, err.getvalue()


def _over_label(lines: list[str], sizes: dict) -> str:
    for line in lines:
        f = line.split()
        if len(f) >= 5 and f[2] == "linear" and f[3] in sizes:
            start, length = int(f[4]), int(f[1])
            if start < PE_START or start + length > sizes[f[3]]:
                return line
    return ""


def run(trials: int, seed: int, workdir: Path, progress=None) -> Result:
    root = Path(workdir)
    old_root = os.environ.get("DMEMU_ROOT")
    os.environ["DMEMU_ROOT"] = str(root)
    result = Result("lvm", seed)
    try:
        setup(root)
        pid = daemon_pid(root)
        good = trio.run(_read_text, "vg0")
        seqno = 100
        rng = random.Random(seed)
        for trial in range(trials):
            result.trials += 1
            text = _bump_seqno(good, seqno)
            what = []
            for _ in range(rng.choice([1, 1, 2, 3])):
                w, text = mutate(rng, text)
                what.append(w)
            targets = ["/dev/pmem0"] if rng.random() < 0.5 else ["/dev/pmem0", "/dev/disk0"]
            case = f"trial {trial} on {len(targets)} PV(s): " + "; ".join(what)
            trio.run(_write_text, targets, text)
            for cmd in COMMANDS:
                code, err = _run_cmd(cmd)
                if code is None:
                    result.fail("traceback", f"{' '.join(cmd)}: {err} ({case})")
                elif code not in (0, 3, 5):
                    result.fail("exit", f"{' '.join(cmd)} exited {code}: {err.strip()[:200]} ({case})")
                if cmd[:2] == ("vgchange", "-ay"):
                    try:
                        lines, sizes = trio.run(_tables)
                        bad = _over_label(lines, sizes)
                    except Exception as e:
                        bad = f"cannot list tables: {e}"
                    if bad:
                        result.fail("over-label", f"{bad} ({case})")
            if not alive(pid):
                result.fail("death", case)
                break
            trio.run(_reset)
            seqno += 10
            trio.run(_write_text, ["/dev/pmem0", "/dev/disk0"], _bump_seqno(good, seqno))
            if progress:
                progress(trial + 1)
    finally:
        stop_daemon(root)
        if old_root is None:
            os.environ.pop("DMEMU_ROOT", None)
        else:
            os.environ["DMEMU_ROOT"] = old_root
    return result
