"""Damaged daxfs images: fsck repairs them in one pass and keeps every file the damage spared,
and a mount of a damaged image never writes over a file.

A few populated images are made first (files from empty to 1.2 MiB, one with hundreds of
extents so its extent chain spans blocks, nested directories, a directory of two blocks,
xattrs, hard links, symlinks, a FIFO) and unmounted cleanly; for each, every file's paths,
content, xattrs, inode slot, data blocks, extent-chain blocks and the directory blocks and
inodes its names pass through are recorded. Each trial copies one, damages it one to three
times (bit flips, a zeroed block, a run of random bytes, a block of random bytes) in the
superblock or a backup, the journal, the fast-commit area, the inode table, directory blocks,
extent-chain blocks, the bitmaps or xattr blocks, and in a third of the trials seals the
damaged block again with a valid checksum (as a buggy writer would: damage only fsck's
logic can find). Never all three superblock copies: with none left there is nothing to
check (e2fsck exits 8 there too). Then:

* a copy of the damaged image is mounted read-write and new files are written into it; the
  mount may refuse, go read-only or fail the writes, but no block of an existing file that
  the damage left alone may change (``silent-overwrite``);
* ``fsck -y``, then ``fsck -n``, which must exit 0 (``not-clean-after-repair``), and so must
  a read-write mount of the repaired image that writes a file and unmounts;
* every file whose inode, data blocks and extent chain the damage did not touch must still
  be there with its content (and its xattrs when its xattr block was not touched): at each
  of its paths whose directory blocks and directory inodes were not touched, and when every
  path was touched, anywhere in the tree (lost+found counts) (``lost-intact-file``).

Failures by kind: ``traceback`` (an exception other than a filesystem error left mount or
fsck), ``hang`` (a trial over 120 s), ``not-clean-after-repair``, ``lost-intact-file``,
``silent-overwrite``. Everything runs in-process over an in-memory block device (dmemu's
MemoryBlockDevice), the same ``Filesystem`` and checker that fsck.daxfs and the FUSE daemon
use: the FUSE layer only translates requests and makes no allocation or repair decision,
and a real mount per trial would make a 1,000-trial run take hours instead of minutes.
"""
import logging
import os
import random
import signal
import stat
import traceback
from dataclasses import dataclass, field

import trio

from daxfs import format as fmt
from daxfs.errors import FsError
from daxfs.fs import Filesystem
from daxfs.fsck import check
from daxfs.mkfs import mkfs
from dmemu.memdev import MemoryBlockDevice

from .common import Result

BS = fmt.BLOCK_SIZE
SIZE = 8 << 20
BASES = 3
TRIAL_TIMEOUT = 120
REGIONS = ["superblock", "journal", "fast-commit", "inode table", "directory", "extent",
           "bitmap", "xattr"]
KINDS = ["flip", "zero", "bytes", "block"]


class Hang(Exception):
    pass


@dataclass
class FileRec:
    ino: int
    kind: str                       # "reg", "lnk", "dir", "other"
    paths: list = field(default_factory=list)          # [(path, {units})]
    content: bytes = b""
    xattrs: dict = field(default_factory=dict)
    units: set = field(default_factory=set)            # its inode slot, data, chain
    data: set = field(default_factory=set)             # its data blocks
    xattr_block: int = 0


@dataclass
class Base:
    image: bytes
    sb: fmt.Superblock
    files: dict                     # ino -> FileRec
    dir_blocks: list
    chain_blocks: list
    xattr_blocks: list
    used_itable: list               # inode-table blocks holding inodes in use


# ---------------------------------------------------------------------------------------
# making the images

async def _populate(fs, rng: random.Random) -> None:
    R = fs.sb.root_ino
    dirs = {"": R}

    async def mkdir(path):
        parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
        d = await fs.mkdir(dirs[parent], name.encode())
        dirs[path] = d.ino
        return d

    async def mkfile(path, data, sparse=False):
        parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
        fh, f = await fs.create(dirs[parent], name.encode(), 0o644, os.O_RDWR)
        if sparse:
            for k in range(0, len(data), 2 * BS):
                await fs.write(fh, k, data[k:k + BS])
        elif data:
            await fs.write(fh, 0, data)
        await fs.release(fh)
        return f

    for p in ("a", "a/b", "a/b/c", "d", "d/e", "big"):
        await mkdir(p)
    sizes = [0, 1, 17, 100, 4095, 4096, 4097, 5000, 20000, 65536, 100_000, 300_000]
    made = []
    for i in range(40):
        where = rng.choice(["", "a", "a/b", "a/b/c", "d", "d/e"])
        size = rng.choice(sizes)
        path = f"{where}/f{i}" if where else f"f{i}"
        made.append(await mkfile(path, rng.randbytes(size)))
    for i in range(150):
        made.append(await mkfile(f"big/n{i:04d}", rng.randbytes(rng.randrange(0, 3000))))
    # hundreds of extents: its chain spans two blocks
    blob = rng.randbytes(300 * 2 * BS)
    frag = await mkfile("d/frag", blob[:299 * 2 * BS + BS], sparse=True)
    made.append(frag)
    for f in rng.sample(made, 12):
        await fs.setxattr(f.ino, b"user.k%d" % rng.randrange(100), rng.randbytes(rng.randrange(1, 200)))
    await fs.setxattr(dirs["a/b"], b"user.dir", b"on a directory")
    for f in rng.sample(made[:40], 4):
        for k in range(rng.randrange(1, 3)):
            where = rng.choice(["", "a", "d/e", "big"])
            try:
                await fs.link(f.ino, dirs[where], b"hard%d_%d" % (f.ino, k))
            except FsError:
                pass
    for i in range(6):
        where = rng.choice(["", "a", "a/b/c", "d"])
        await fs.symlink(dirs[where], b"s%d" % i, rng.choice([b"f1", b"../x/y", b"a" * 300]))
    await fs.mknod(dirs["d"], b"fifo", stat.S_IFIFO | 0o644)


async def _catalog(fs) -> tuple[dict, list, list, list]:
    """What every file is and where every part of it lives."""
    sb = fs.sb
    files: dict[int, FileRec] = {}
    dir_blocks, chain_blocks, xattr_blocks = [], [], []

    def slot(ino):
        return ("slot", ino)

    async def visit(ino, path, chain):
        inode = await fs.iget(ino)
        rec = files.get(ino)
        if rec is None:
            kind = "dir" if inode.is_dir else "reg" if inode.is_reg else \
                "lnk" if inode.is_lnk else "other"
            rec = files[ino] = FileRec(ino, kind)
            rec.units.add(slot(ino))
            for _, ln, pblk in inode.extents():
                for b in range(pblk, pblk + ln):
                    rec.data.add(b)
                    rec.units.add(("blk", b))
            for b in inode.chain:
                rec.units.add(("blk", b))
                chain_blocks.append(b)
            if inode.xattr_block:
                rec.xattr_block = inode.xattr_block
                xattr_blocks.append(inode.xattr_block)
                rec.xattrs = {n: await fs.getxattr(ino, n) for n in await fs.listxattr(ino)
                              if n.startswith(b"user.k") or n == b"user.dir"}
            if inode.is_reg:
                fh = await fs.open(ino, os.O_RDONLY)
                rec.content = await fs.read(fh, 0, inode.size)
                await fs.release(fh)
            elif inode.is_lnk:
                rec.content = await fs.readlink(ino)
            if inode.is_dir:
                for bi in range(inode.size // BS):
                    dir_blocks.append(inode.map(bi)[0])
        rec.paths.append((path, frozenset(chain)))
        if inode.is_dir and len(rec.paths) == 1:
            d = await fs._dir(inode)
            here = chain | {slot(ino)} | {("blk", b) for b in inode.chain}
            async for name, child, _ in fs.readdir(ino):
                pos = d.lookup(name)[2]
                pblk = inode.map(pos // BS)[0]
                await visit(child.ino, f"{path}/{name.decode()}", here | {("blk", pblk)})

    await visit(sb.root_ino, "", frozenset())
    return files, dir_blocks, chain_blocks, xattr_blocks


async def make_base(seed: int) -> Base:
    rng = random.Random(seed)
    dev = MemoryBlockDevice(SIZE // 512)
    await mkfs(dev)
    fs = await Filesystem.mount(dev)
    await _populate(fs, rng)
    await fs.unmount()
    fs = await Filesystem.mount(dev, read_only=True)
    files, dirb, chainb, xattrb = await _catalog(fs)
    sb = fs.sb
    used = sorted({fmt.inode_location(ino)[0] + sb.itable_start for ino in files})
    return Base(bytes(dev.view), sb, files, dirb, chainb, xattrb, used)


# ---------------------------------------------------------------------------------------
# damage

def _device(image: bytes) -> MemoryBlockDevice:
    dev = MemoryBlockDevice(len(image) // 512)
    dev.view[:] = image
    dev.media[:] = image
    return dev


def _damage(base: Base, rng: random.Random, dev: MemoryBlockDevice) -> tuple[set, list]:
    """Damage dev; return the units (inode slots, blocks) touched and a description."""
    sb = base.sb
    touched: set = set()
    said = []
    sb_copies = [0, 1, sb.total_blocks - 1]
    sb_hit: set = set()
    reseal = rng.random() < 1 / 3
    for _ in range(rng.randint(1, 3)):
        region = rng.choice(REGIONS)
        if region == "superblock":
            left = [b for b in sb_copies if b not in sb_hit]
            if len(left) <= 1:
                region = "bitmap"
            else:
                blk = left[0] if rng.random() < 0.6 else rng.choice(left)
                sb_hit.add(blk)
        if region == "journal":
            blk = sb.journal_start if rng.random() < 0.5 else \
                rng.randrange(sb.journal_start, sb.journal_start + sb.journal_blocks)
        elif region == "fast-commit":
            blk = rng.randrange(sb.fc_start, sb.fc_start + sb.fc_blocks)
        elif region == "inode table":
            blk = rng.choice(base.used_itable) if rng.random() < 0.8 else \
                rng.randrange(sb.itable_start, sb.itable_start + sb.itable_blocks)
        elif region == "directory":
            blk = rng.choice(base.dir_blocks)
        elif region == "extent":
            blk = rng.choice(base.chain_blocks)
        elif region == "bitmap":
            blk = rng.choice([sb.bbitmap_start, sb.ibitmap_start])
        elif region == "xattr":
            blk = rng.choice(base.xattr_blocks)
        kind = rng.choice(KINDS)
        span = 512 if region == "superblock" else BS
        lo = blk * BS
        before = bytes(dev.view[lo:lo + BS])
        buf = bytearray(before)
        if kind == "flip":
            for _ in range(rng.randint(1, 8)):
                bit = rng.randrange(span * 8)
                buf[bit >> 3] ^= 1 << (bit & 7)
        elif kind == "zero":
            buf[:] = bytes(BS)
        elif kind == "bytes":
            n = rng.randint(1, 64)
            off = rng.randrange(span - n)
            buf[off:off + n] = rng.randbytes(n)
        else:
            buf[:] = rng.randbytes(BS)
        if reseal:
            buf = _reseal(buf, blk, sb, region)
        dev.view[lo:lo + BS] = buf
        dev.media[lo:lo + BS] = buf
        said.append(f"{kind}{'+reseal' if reseal else ''} {region} block {blk}")
        if region == "inode table":
            base_ino = (blk - sb.itable_start) * fmt.INODES_PER_BLOCK
            for s in range(fmt.INODES_PER_BLOCK):
                a, b = s * fmt.INODE_SIZE, (s + 1) * fmt.INODE_SIZE
                if buf[a:b] != before[a:b]:
                    touched.add(("slot", base_ino + s))
        elif buf != before:
            touched.add(("blk", blk))
    return touched, said


def _reseal(buf: bytearray, blk: int, sb, region: str) -> bytearray:
    """Seal damaged metadata again, as a buggy writer would: the checksum then passes and
    only the checker's logic can find what is wrong."""
    if region == "inode table":
        base_ino = (blk - sb.itable_start) * fmt.INODES_PER_BLOCK
        for s in range(fmt.INODES_PER_BLOCK):
            a = s * fmt.INODE_SIZE
            if buf[a:a + 2] == fmt.INODE_MAGIC:
                buf[a:a + fmt.INODE_SIZE] = fmt.seal_inode(buf[a:a + fmt.INODE_SIZE],
                                                           base_ino + s, sb.uuid)
        return buf
    if fmt.block_type(buf) is None:
        return buf
    _, _, _, _, _, lsn = fmt.HDR_FMT.unpack_from(buf, 0)
    return bytearray(fmt.seal(buf, blk, sb.uuid, lsn))


# ---------------------------------------------------------------------------------------
# one trial

async def _write_into(dev, rng: random.Random) -> None:
    """Mount and write new files; refusals (EROFS, EUCLEAN, ENOSPC, ...) are fine."""
    try:
        fs = await Filesystem.mount(dev)
    except FsError:
        return
    try:
        for i in range(6):
            try:
                parent = fs.sb.root_ino
                if i % 2:
                    try:
                        parent = (await fs.lookup(fs.sb.root_ino, b"a")).ino
                    except FsError:
                        pass
                fh, _ = await fs.create(parent, b"new%d" % i, 0o644, os.O_RDWR)
                await fs.write(fh, 0, rng.randbytes(rng.choice([100, 5000, 70_000, 200_000])))
                await fs.release(fh)
            except FsError:
                pass
        try:
            await fs.sync()
        except FsError:
            pass
    finally:
        try:
            await fs.unmount()
        except FsError:
            pass


async def _tree(fs, limit: int = 4 << 20) -> dict:
    """ino -> {"paths": [...], "content": bytes, "xattrs": {...}} of the whole tree."""
    out: dict = {}
    todo = [(fs.sb.root_ino, "")]
    while todo:
        ino, path = todo.pop()
        async for name, inode, _ in fs.readdir(ino):
            p = f"{path}/{name.decode(errors='surrogateescape')}"
            rec = out.get(inode.ino)
            if rec is None:
                rec = out[inode.ino] = {"paths": [], "content": None, "xattrs": {}}
                if inode.is_reg:
                    fh = await fs.open(inode.ino, os.O_RDONLY)
                    # a size the damage made huge reads as a sparse file: enough of it
                    rec["content"] = await fs.read(fh, 0, min(inode.size, limit))
                    await fs.release(fh)
                elif inode.is_lnk:
                    rec["content"] = await fs.readlink(inode.ino)
                for n in await fs.listxattr(inode.ino):
                    rec["xattrs"][n] = await fs.getxattr(inode.ino, n)
                if inode.is_dir:
                    todo.append((inode.ino, p))
            rec["paths"].append(p)
    return out


async def _trial(base: Base, rng: random.Random, res: Result, case: str) -> None:
    dev = _device(base.image)
    touched, said = _damage(base, rng, dev)
    case = f"{case}: {'; '.join(said)}"
    damaged = bytes(dev.view)

    # 1. a mount of the damaged image writes: nothing existing may be overwritten
    mdev = _device(damaged)
    await _write_into(mdev, rng)
    for rec in base.files.values():
        if rec.kind not in ("reg", "lnk"):
            continue                # a directory's blocks change with every new name
        for b in rec.data:
            if ("blk", b) in touched:
                continue
            if mdev.view[b * BS:(b + 1) * BS] != damaged[b * BS:(b + 1) * BS]:
                res.fail("silent-overwrite", f"{case}: block {b} of inode {rec.ino} "
                         "changed by writes to the damaged mount")
                break
        else:
            continue
        break

    # 2. fsck -y, then fsck -n must be clean, and the result mounts and takes writes
    msgs: list = []
    code_y, _ = await check(dev, repair=True, out=msgs.append)
    msgs_n: list = []
    code_n, _ = await check(dev, out=msgs_n.append)
    if code_n != 0:
        res.fail("not-clean-after-repair", f"{case}: fsck -y {code_y}, then fsck -n {code_n}: "
                 f"{msgs_n[:3]}")
        return
    try:
        fs = await Filesystem.mount(dev, read_only=True)
        tree = await _tree(fs)
    except FsError as e:
        res.fail("not-clean-after-repair", f"{case}: the repaired image: {e}")
        return

    # 3. every intact file is there with its content
    for rec in base.files.values():
        if rec.kind == "dir" or rec.units & touched:
            continue
        got = tree.get(rec.ino)
        good_paths = [p for p, chain in rec.paths if not chain & touched]
        why = None
        if got is None:
            why = "missing from the tree"
        elif rec.kind in ("reg", "lnk") and got["content"] != rec.content:
            why = "content differs"
        elif any(p not in got["paths"] for p in good_paths):
            why = f"not at {[p for p in good_paths if p not in got['paths']][0]}"
        elif rec.xattrs and ("blk", rec.xattr_block) not in touched and \
                any(got["xattrs"].get(k) != v for k, v in rec.xattrs.items()):
            why = "xattrs differ"
        if why:
            res.fail("lost-intact-file", f"{case}: inode {rec.ino} "
                     f"({rec.paths[0][0]}): {why}; fsck said {msgs[:4]}")
            break
    try:
        fs = await Filesystem.mount(dev)
        fh, _ = await fs.create(fs.sb.root_ino, b"after-repair", 0o644, os.O_RDWR)
        await fs.write(fh, 0, b"x" * 10000)
        await fs.release(fh)
        await fs.unmount()
    except FsError as e:
        res.fail("not-clean-after-repair", f"{case}: writing to the repaired image: {e}")
        return
    code, _ = await check(dev, out=msgs_n.append)
    if code != 0:
        res.fail("not-clean-after-repair", f"{case}: after writing to the repaired image, "
                 f"fsck -n {code}: {msgs_n[-3:]}")


def _alarm(signum, frame):
    raise Hang()


def run(trials: int, seed: int, workdir) -> Result:
    res = Result("image", seed)
    # every damaged mount logs what it found; a run would print thousands of such lines
    quiet = logging.getLogger("daxfs")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return _run(trials, seed, res)
    finally:
        quiet.setLevel(level)


def _run(trials: int, seed: int, res: Result) -> Result:
    bases = [trio.run(make_base, seed * 1000 + k) for k in range(BASES)]
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for t in range(trials):
            rng = random.Random(f"{seed}-{t}")
            k = t % BASES
            case = f"trial {t} (base {k})"
            res.trials += 1
            signal.alarm(TRIAL_TIMEOUT)
            try:
                trio.run(_trial, bases[k], rng, res, case)
            except Hang:
                res.fail("hang", case)
            except BaseException as e:      # noqa: BLE001 - every escape is a finding
                if isinstance(e, KeyboardInterrupt):
                    raise
                tb = traceback.format_exception(e)
                res.fail("traceback", f"{case}: {''.join(tb[-3:])}")
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, old)
    return res
