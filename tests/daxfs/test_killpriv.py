"""Set-id bits on write and truncation through a real mount, and what a write costs.

With daxfs/native/fusecaps.c preloaded the mount negotiates FUSE_HANDLE_KILLPRIV_V2: the
kernel stops asking for security.capability before every write, and daxfs clears set-id
bits itself when the kernel flags a request of a caller without CAP_FSETID. The results
must be Linux's: an unprivileged write, truncate or O_TRUNC open clears set-user-ID, and
set-group-ID when the group may execute; root keeps them; a file capability goes on any
write.
"""
import json
import os
from pathlib import Path

from tests.daxfs.test_mount import TOP, image, m, mntdir, run   # noqa: F401 (fixtures)

LIB = TOP / "daxfs/native/libdaxfs-fusecaps.so"
NOBODY = 65534


def stats(mnt) -> dict:
    return json.loads(os.getxattr(mnt, "trusted.daxfs.stats"))


def as_nobody(*cmd):
    return run(*cmd, user=NOBODY)


def mode(path) -> int:
    """As stat(1) sees it: statx for the mode alone, which the kernel answers from its
    cache unless the mode was invalidated (os.stat asks for more and refreshes it all)."""
    return int(run("stat", "-c", "%a", path).stdout, 8)


def test_write_and_fsync_cost_one_request_each(m):
    """No GETXATTR of security.capability per write: a 4 KiB write + fsync loop sends one
    WRITE and one FSYNC per round (the kernel asks once per file, then remembers)."""
    mnt = m.mnt
    assert LIB.exists(), f"run scripts/setup.sh: it builds {LIB}"
    assert "handle_killpriv_v2" in stats(mnt)["fuse_caps"]
    rounds = 200
    fd = os.open(mnt / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"x" * 4096)        # the kernel's one question about the file
        # reading the statistics costs GETXATTRs of its own (a first try with a small
        # buffer answered ERANGE, then the read): count them
        probe = stats(mnt)["requests"]["getxattr"]
        s0 = stats(mnt)["requests"]
        own = s0["getxattr"] - probe
        for _ in range(rounds):
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        s1 = stats(mnt)["requests"]
    finally:
        os.close(fd)
    delta = {k: v - s0.get(k, 0) for k, v in s1.items() if v != s0.get(k, 0)}
    assert delta == {"write": rounds, "fsync": rounds, "getxattr": own}, delta
    assert (mnt / "f").stat().st_size == (rounds + 1) * 4096


def test_unprivileged_change_kills_setid_bits(m):
    """As in fstests' generic/355: set-user-ID always goes, set-group-ID only with group
    execute (without it the bit marks mandatory locking), for every way of changing data."""
    f = m.mnt / "f"
    f.write_bytes(b"this is a test\n")
    os.chown(f, NOBODY, NOBODY)
    ways = {"append": ("sh", "-c", f"echo more >> {f}"),
            "truncate": ("truncate", "-s", "4", str(f)),
            "o_trunc": ("sh", "-c", f": > {f}"),
            "direct": ("dd", "if=/dev/zero", f"of={f}", "bs=4k", "count=1", "oflag=direct",
                       "conv=notrunc", "status=none")}
    for how, cmd in ways.items():
        for before, after in [(0o6644, 0o2644), (0o6744, 0o2744), (0o6654, 0o0654),
                              (0o6754, 0o0754)]:
            os.chmod(f, before)
            as_nobody(*cmd)
            assert mode(f) == after, \
                f"{how}: {before:o} became {mode(f):o}, Linux gives {after:o}"


def test_root_keeps_setid_bits(m):
    """A caller with CAP_FSETID (root) writes and truncates without losing them."""
    f = m.mnt / "f"
    f.write_bytes(b"abc\n")
    os.chmod(f, 0o6755)
    with open(f, "ab") as fh:
        fh.write(b"more\n")
    assert mode(f) == 0o6755, "append"
    os.truncate(f, 1)
    assert mode(f) == 0o6755, "truncate"
    with open(f, "wb"):
        pass
    assert mode(f) == 0o6755, "O_TRUNC"


def test_write_drops_file_capability(m):
    """security.capability goes on any write, root's too (cap_inode_killpriv)."""
    f = m.mnt / "f"
    f.write_bytes(b"abc\n")
    os.chmod(f, 0o755)
    os.setxattr(f, "security.capability", bytes.fromhex("0100000200200000" + "00" * 12))
    assert "security.capability" in os.listxattr(f)
    with open(f, "ab") as fh:
        fh.write(b"more\n")
    assert "security.capability" not in os.listxattr(f)
    assert mode(f) == 0o755


def test_chown_kills_setid_bits(m):
    f = m.mnt / "f"
    f.write_bytes(b"abc\n")
    os.chmod(f, 0o6755)
    os.chown(f, NOBODY, NOBODY)
    assert mode(f) == 0o0755


def test_setid_bits_survive_remount(m):
    """What a kill changed is committed like any chmod."""
    f = m.mnt / "f"
    f.write_bytes(b"abc\n")
    os.chown(f, NOBODY, NOBODY)
    os.chmod(f, 0o6777)
    as_nobody("sh", "-c", f"echo more >> {f}")
    m.unmount()
    m.fsck()
    m.mount()
    assert mode(Path(m.mnt) / "f") == 0o0777
