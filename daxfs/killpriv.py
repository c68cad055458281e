"""Killing set-id bits on write and truncation, as the VFS does for a disk filesystem.

Linux clears set-user-ID on a write or truncation by a caller without CAP_FSETID, and
set-group-ID too when the group may execute the file (should_remove_suid, file_remove_privs).
Through FUSE the kernel does it in one of two ways:

- by default it asks the server for ``security.capability`` before every write(2) and sends
  a SETATTR of the cleared mode when bits must go: daxfs only applies it;
- with FUSE_HANDLE_KILLPRIV_V2 it skips that question once a file is known to have nothing
  to kill, and instead flags the requests that must kill (FUSE_WRITE_KILL_SUIDGID,
  FATTR_KILL_SUIDGID, FUSE_OPEN_KILL_SUIDGID, set only for callers without CAP_FSETID): the
  server clears the bits itself. pyfuse3 can neither negotiate it nor see the flags;
  ``daxfs/native/fusecaps.c``, preloaded into the daemon, does both and copies each flag
  into a field pyfuse3 hands over: bit 63 of the file handle of a write or setattr, bit 30
  of the open flags of an open or create. This module reads them back.
"""
import stat

FH_KILL_SUIDGID = 1 << 63
O_KILL_SUIDGID = 1 << 30

CAPABILITY_XATTR = b"security.capability"


def split_fh(fh):
    """(the handle daxfs gave, whether the kernel asked to kill set-id bits); a setattr
    that carried no handle but the flag gives None."""
    if fh is None or not fh & FH_KILL_SUIDGID:
        return fh, False
    fh &= ~FH_KILL_SUIDGID
    return (fh or None), True


def split_flags(flags: int) -> tuple[int, bool]:
    """(the open flags, whether the kernel asked to kill set-id bits on O_TRUNC)."""
    return flags & ~O_KILL_SUIDGID, bool(flags & O_KILL_SUIDGID)


def killed_mode(mode: int) -> int:
    """The mode once set-id bits are killed: set-user-ID always, set-group-ID only with
    group execute (without it the bit marks mandatory locking, not privilege)."""
    mode &= ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        mode &= ~stat.S_ISGID
    return mode
