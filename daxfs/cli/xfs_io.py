"""xfs_io: the subset of xfs_io that scripts use against daxfs files and dmemu devices.

FILE is a host path (a file on a daxfs mount, or anything else), or a dmemu device name
(/dev/pmem0, /dev/mapper/vg0-lv0) when no such host file exists. The DAX flag and state
travel through daxfs's xattrs, because FUSE cannot carry the flag ioctls (they return
ENOTTY) nor STATX_ATTR_DAX: ``chattr +x``, ``lsattr -v`` and ``statx -r`` read and write them
and print what xfs_io prints on ext4/XFS.
"""
import errno
import mmap
import os
import shlex
import stat
import sys
import time

import trio

from ..daxattr import (DAX_FLAG_XATTR, DAX_STATE_XATTR, STATX_ATTR_DAX, SYNC_XATTR,
                       STATX_ATTRIBUTES_MASK)

USAGE = """usage: xfs_io [-fdrsx] [-c cmd]... file
commands: pwrite [-S seed] [-b bsize] [-W] [-w] off len | pread [-v] [-b bsize] off len |
          fsync | fdatasync | truncate len | stat | statx [-r] | chattr +x|-x | lsattr [-v] |
          syncmode on|off | mmap [-r|-w] off len | mwrite [-S seed] off len | mread off len |
          msync [-s] | munmap | sync | close"""

SIZES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "b": 512, "s": 512}


class Usage(Exception):
    pass


def number(text: str) -> int:
    t = text.strip().lower()
    try:
        if t.startswith("0x"):
            return int(t, 16)
        if t and t[-1] in SIZES:
            return int(float(t[:-1]) * SIZES[t[-1]])
        return int(t)
    except ValueError:
        raise Usage(f"non-numeric argument -- {text}") from None


def human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.3f} {unit}"
    return f"{n} bytes"


def report(verb: str, done: int, asked: int, off: int, ops: int, secs: float) -> None:
    print(f"{verb} {done}/{asked} bytes at offset {off}")
    secs = max(secs, 1e-6)
    print(f"{human(done)}, {ops} ops; {secs:.4f} sec ({done / secs / (1 << 20):.3f} MiB/sec and "
          f"{ops / secs:.4f} ops/sec)")


def hexdump(off: int, data: bytes) -> None:
    for i in range(0, len(data), 16):
        row = data[i:i + 16]
        hexes = " ".join(f"{b:02x}" for b in row)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        print(f"{off + i:08x}:  {hexes:<47}  {text}")


class Target:
    """An open file or device with pread/pwrite/fsync."""

    async def pwrite(self, data: bytes, off: int) -> int: ...
    async def pread(self, n: int, off: int) -> bytes: ...
    async def fsync(self, data_only: bool) -> None: ...


class HostFile(Target):
    def __init__(self, path: str, flags: int):
        self.path = path
        self.fd = os.open(path, flags, 0o644)
        self.map = None
        self.map_off = 0

    async def pwrite(self, data, off):
        return os.pwrite(self.fd, data, off)

    async def pread(self, n, off):
        return os.pread(self.fd, n, off)

    async def fsync(self, data_only):
        (os.fdatasync if data_only else os.fsync)(self.fd)


class DeviceTarget(Target):
    def __init__(self, dev):
        self.dev = dev
        self.path = dev.name

    async def pwrite(self, data, off):
        if off % 512 or len(data) % 512:
            raise OSError(errno.EINVAL, "device I/O must be in whole 512-byte sectors")
        await self.dev.write(off // 512, data)
        return len(data)

    async def pread(self, n, off):
        n = max(0, min(n, self.dev.nr_sectors * 512 - off))
        return await self.dev.read(off // 512, n) if n else b""

    async def fsync(self, data_only):
        await self.dev.flush()


def xattr(path, name):
    try:
        return os.getxattr(path, name).decode()
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return None
        raise


async def command(t: Target, argv: list[str], opts) -> None:
    cmd, args = argv[0], argv[1:]
    if cmd in ("pwrite", "pread"):
        seed, bsize, sync_after, verbose = 0xcd, 65536, None, False
        rest = []
        it = iter(args)
        for a in it:
            if a == "-S":
                seed = number(next(it, "")) & 0xff
            elif a == "-b":
                bsize = number(next(it, ""))
            elif a == "-W":
                sync_after = False
            elif a == "-w":
                sync_after = True
            elif a == "-v":
                verbose = True
            elif a.startswith("-") and not a[1:].isdigit():
                raise Usage(f"{cmd}: unknown option {a}")
            else:
                rest.append(a)
        if len(rest) != 2:
            raise Usage(f"{cmd} needs an offset and a length")
        off, length = number(rest[0]), number(rest[1])
        t0, done, ops = time.perf_counter(), 0, 0
        if cmd == "pwrite":
            while done < length:
                n = min(bsize, length - done)
                done += await t.pwrite(bytes([seed]) * n, off + done)
                ops += 1
            if sync_after is not None:
                await t.fsync(sync_after)
            report("wrote", done, length, off, ops, time.perf_counter() - t0)
        else:
            chunks = []
            while done < length:
                data = await t.pread(min(bsize, length - done), off + done)
                ops += 1
                if not data:
                    break
                chunks.append(data)
                done += len(data)
            report("read", done, length, off, ops, time.perf_counter() - t0)
            if verbose:
                hexdump(off, b"".join(chunks))
    elif cmd in ("fsync", "fdatasync"):
        await t.fsync(cmd == "fdatasync")
    elif cmd == "sync":
        os.sync()
    elif cmd == "truncate":
        os.ftruncate(host(t).fd, number(args[0]))
    elif cmd == "stat":
        st = os.fstat(host(t).fd)
        print(f"fd.path = \"{t.path}\"")
        print(f"stat.ino = {st.st_ino}")
        print(f"stat.type = {file_type(st.st_mode)}")
        print(f"stat.size = {st.st_size}")
        print(f"stat.blocks = {st.st_blocks}")
        print(f"fsxattr.xflags = 0x{(0x8000 if xattr(t.path, DAX_FLAG_XATTR) == '1' else 0):x}")
    elif cmd == "statx":
        st = os.fstat(host(t).fd)
        attrs = STATX_ATTR_DAX if xattr(t.path, DAX_STATE_XATTR) == "1" else 0
        print("stat.mask = 0x17ff")
        print(f"stat.blksize = {st.st_blksize}")
        print(f"stat.attributes = 0x{attrs:x}")
        print(f"stat.nlink = {st.st_nlink}")
        print(f"stat.uid = {st.st_uid}")
        print(f"stat.gid = {st.st_gid}")
        print(f"stat.mode = 0{st.st_mode & 0o7777:o}")
        print(f"stat.ino = {st.st_ino}")
        print(f"stat.size = {st.st_size}")
        print(f"stat.blocks = {st.st_blocks}")
        print(f"stat.attributes_mask = 0x{STATX_ATTRIBUTES_MASK:x}")
    elif cmd == "chattr":
        if not args or args[0] not in ("+x", "-x"):
            raise Usage("chattr: only +x and -x (the DAX flag) are supported")
        os.setxattr(t.path, DAX_FLAG_XATTR, b"1" if args[0] == "+x" else b"0")
    elif cmd == "lsattr":
        flag = xattr(t.path, DAX_FLAG_XATTR) == "1"
        if "-v" in args:
            print(f"[{'dax' if flag else ''}] {t.path}")
        else:
            print(f"{'-' * 14 + ('x' if flag else '-') + '-' * 1} {t.path}")
    elif cmd == "syncmode":
        if not args or args[0] not in ("on", "off"):
            raise Usage("syncmode on|off")
        os.setxattr(t.path, SYNC_XATTR, b"1" if args[0] == "on" else b"0")
    elif cmd == "mmap":
        h = host(t)
        prot = mmap.PROT_READ | (0 if "-r" in args else mmap.PROT_WRITE)
        rest = [a for a in args if not a.startswith("-")]
        off, length = number(rest[0]), number(rest[1])
        h.map = mmap.mmap(h.fd, length, mmap.MAP_SHARED, prot, offset=off)
        h.map_off = off
    elif cmd in ("mwrite", "mread"):
        h = host(t)
        if h.map is None:
            raise Usage(f"{cmd}: no mapping (use mmap first)")
        seed = 0xcd
        rest = []
        it = iter(args)
        for a in it:
            if a == "-S":
                seed = number(next(it, "")) & 0xff
            else:
                rest.append(a)
        off, length = number(rest[0]) - h.map_off, number(rest[1])
        if cmd == "mwrite":
            h.map[off:off + length] = bytes([seed]) * length
        else:
            hexdump(off + h.map_off, h.map[off:off + length])
    elif cmd == "msync":
        h = host(t)
        if h.map is not None:
            h.map.flush()
    elif cmd == "munmap":
        h = host(t)
        if h.map is not None:
            h.map.close()
            h.map = None
    elif cmd == "close":
        pass
    else:
        raise Usage(f"command \"{cmd}\" not found")


def host(t: Target) -> HostFile:
    if not isinstance(t, HostFile):
        raise Usage("this command needs a file, not a device")
    return t


def file_type(mode: int) -> str:
    return {stat.S_IFREG: "regular file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symbolic link"
            }.get(stat.S_IFMT(mode), "other")


async def run(opts, path: str, cmds: list[list[str]]) -> int:
    use_device = not os.path.exists(path) and not opts.create and path.startswith("/dev/")
    if use_device:
        from dmemu import client
        async with client.open_device(path, read_only=opts.readonly) as dev:
            for argv in cmds:
                await command(DeviceTarget(dev), argv, opts)
        return 0
    flags = os.O_RDONLY if opts.readonly else os.O_RDWR
    if opts.create:
        flags |= os.O_CREAT
    if opts.direct:
        flags |= os.O_DIRECT
    if opts.sync:
        flags |= os.O_SYNC
    if os.path.isdir(path):
        flags = os.O_RDONLY | os.O_DIRECTORY
    t = HostFile(path, flags)
    try:
        for argv in cmds:
            await command(t, argv, opts)
    finally:
        if t.map is not None:
            t.map.close()
        os.close(t.fd)
    return 0


class Opts:
    create = direct = sync = readonly = False


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    prog = "xfs_io"
    opts, cmds, path = Opts(), [], None
    it = iter(argv)
    try:
        for a in it:
            if a in ("-h", "--help"):
                print(USAGE)
                return 0
            if a == "-c":
                c = next(it, None)
                if c is None:
                    raise Usage("-c needs a command")
                cmds.append(shlex.split(c))
            elif a.startswith("-") and len(a) > 1:
                for ch in a[1:]:
                    if ch == "f":
                        opts.create = True
                    elif ch == "d":
                        opts.direct = True
                    elif ch == "s":
                        opts.sync = True
                    elif ch == "r":
                        opts.readonly = True
                    elif ch == "x":
                        pass
                    else:
                        raise Usage(f"invalid option -- '{ch}'")
            elif path is None:
                path = a
            else:
                raise Usage(f"too many files: {a}")
        if path is None:
            raise Usage("no file given")
        return trio.run(run, opts, path, cmds)
    except Usage as e:
        print(f"{prog}: {e}; see '{prog} --help'", file=sys.stderr)
        return 2
    except OSError as e:
        where = f"{path}: " if path else ""
        print(f"{prog}: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except Exception as e:   # DmemuError from a device
        from dmemu.errors import DmemuError
        if isinstance(e, DmemuError):
            print(f"{prog}: {e.message}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
