"""What the lvm commands need to know about a filesystem or signature on a device or LV,
as lvm2 learns it from libblkid: its type, the offset of its magic (for the wipe prompts of
pvcreate and lvcreate -W) and the last byte it uses (for lvreduce's --fs checksize); and
where it is mounted, from the mount table (a daxfs mount's source names its device).
"""
import os
from dataclasses import dataclass

SECTOR = 512
# (byte offset of the magic, magic, blkid TYPE), the signatures mkfs.daxfs also knows.
SIGNATURES = [
    (0, b"DAXFS\x00SB", "daxfs"),
    (1024 + 56, b"\x53\xef", "ext4"),
    (0, b"XFSB", "xfs"),
    (0x10040, b"_BHRfS_M", "btrfs"),
    (512, b"LABELONE", "LVM2_member"),
    (4096 - 10, b"SWAPSPACE2", "swap"),
    (0x8001, b"CD001", "iso9660"),
    (3, b"mkfs.fat", "vfat"),
]
HEAD_BYTES = 0x10200            # covers every offset above, whole sectors
DAXFS_BLOCK = 4096


@dataclass
class FsInfo:
    fstype: str
    offset: int                 # byte offset of the magic
    last_byte: int = 0          # bytes the filesystem spans; 0 when unknown


async def probe(read, nr_sectors: int, *, skip=("LVM2_member",)) -> FsInfo | None:
    """The first signature on a device of nr_sectors, read through ``read(sector, nbytes)``."""
    n = min(nr_sectors * SECTOR, HEAD_BYTES)
    head = await read(0, n - n % SECTOR)
    for off, magic, name in SIGNATURES:
        if name not in skip and head[off:off + len(magic)] == magic:
            return FsInfo(name, off, _fs_bytes(name, head))
    return None


def _fs_bytes(fstype: str, head: bytes) -> int:
    if fstype != "daxfs":
        return 0
    try:
        from daxfs.format import Superblock
        return Superblock.unpack(head[:DAXFS_BLOCK]).total_blocks * DAXFS_BLOCK
    except Exception:        # a damaged or foreign superblock: usage unknown, as blkid says
        return 0


def mounted_at(sources: set[str]) -> str | None:
    """The mount point of the first mount whose source is one of ``sources`` and, for a
    dmemu device, whose daxfs is served from this state directory: /dev/vg0/lv0 of another
    dmemud (another DMEMU_ROOT) shows in the one mount table under the same name."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) > 4 and len(rfields) > 1 and rfields[1] in sources:
            where = fields[4].replace("\\040", " ")
            if not rfields[1].startswith("/dev/") or _served_from_here(where):
                return where
    return None


def _served_from_here(mountpoint: str) -> bool:
    """Whether the daxfs daemon serving ``mountpoint`` (its command line names it) uses
    this process's state directory; True when that cannot be told."""
    want = os.fsencode(mountpoint)
    ours = os.environ.get("DMEMU_ROOT")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if want not in argv or not any(b"daxfs.cli.mount" in a for a in argv):
                continue
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        theirs = next((os.fsdecode(e[len(b"DMEMU_ROOT="):]) for e in env
                       if e.startswith(b"DMEMU_ROOT=")), None)
        if theirs is None or ours is None:
            return theirs is None and ours is None
        return os.path.abspath(theirs) == os.path.abspath(ours)
    return True


def lv_sources(vg: str, lv: str, dm: str) -> set[str]:
    """Every name a mount of an LV may show as its source."""
    return {f"/dev/{vg}/{lv}", f"/dev/mapper/{dm}", f"mapper/{dm}", dm,
            os.path.join("/dev", vg, lv)}
