"""Reverse mapping: which file and offset own a device sector (the "rmap for fsdax" that
the 2021 XFS thread needed to tell a process which data a media error hit), and the
forward question, which sector holds a file offset.

Works on a mounted filesystem too: the device is opened read-only beside the mount and the
journal is replayed in memory, so what the last commit made durable is what is reported.
"""
import stat

from . import format as fmt
from .fs import Filesystem

SECTORS = fmt.BLOCK_SECTORS


async def walk(fs: Filesystem):
    """(path, inode) for every inode reachable from the root, each once."""
    root = await fs.iget(fs.sb.root_ino)
    stack, seen = [("", root)], {root.ino}
    yield "/", root
    while stack:
        path, d = stack.pop()
        async for name, child, _ in fs.readdir(d.ino):
            if name in (b".", b".."):
                continue
            p = f"{path}/{name.decode(errors='replace')}"
            if child.ino in seen:
                continue
            seen.add(child.ino)
            yield p, child
            if stat.S_ISDIR(child.mode):
                stack.append((p, child))


def _region(fs: Filesystem, blk: int) -> str | None:
    sb = fs.sb
    if blk == 0:
        return "superblock"
    if sb.journal_start <= blk < sb.journal_start + sb.journal_blocks:
        return "journal"
    if blk < sb.data_start:
        return "filesystem metadata (bitmaps, inode table)"
    return None


async def owners(fs: Filesystem, sectors: list[int]) -> dict[int, str]:
    want = {s: s // SECTORS for s in sectors}
    out: dict[int, str] = {}
    for s, blk in want.items():
        if blk >= fs.sb.total_blocks:
            out[s] = "beyond the filesystem"
        elif (r := _region(fs, blk)) is not None:
            out[s] = r
    todo = {s: b for s, b in want.items() if s not in out}
    if todo:
        async for path, inode in walk(fs):
            for i, pblk in enumerate(inode.ext_pblk):
                n = inode.ext_len[i]
                for s, blk in list(todo.items()):
                    if pblk <= blk < pblk + n:
                        off = (inode.ext_lblk[i] + blk - pblk) * fmt.BLOCK_SIZE + (s % SECTORS) * 512
                        out[s] = f"{path} offset {off}"
                        del todo[s]
            if inode.xattr_block in todo.values():
                for s, blk in list(todo.items()):
                    if blk == inode.xattr_block:
                        out[s] = f"{path} (extended attributes)"
                        del todo[s]
            if not todo:
                break
    for s in todo:
        out[s] = "free space" if not fs.balloc.bitmap.test(todo[s]) else "metadata (directory or extent block)"
    return out


async def sector_of(fs: Filesystem, ino: int, offset: int) -> int | None:
    inode = await fs.iget(ino)
    pblk, _ = inode.map(offset // fmt.BLOCK_SIZE)
    if not pblk:
        return None
    return pblk * SECTORS + (offset % fmt.BLOCK_SIZE) // 512
