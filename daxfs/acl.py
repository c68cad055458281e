"""POSIX ACLs: the parts of fs/posix_acl.c that a FUSE server must do itself.

With FUSE_POSIX_ACL (pyfuse3's enable_acl) the kernel checks permissions against the ACLs,
caches them, and hands `setfacl` to us as a setxattr of `system.posix_acl_access` or
`system.posix_acl_default` in the xattr format below, already validated. What it leaves to
the server: keeping the mode and the access ACL in step (a new access ACL sets the
permission bits, chmod rewrites the ACL's owner, group-or-mask and other entries), and the
inheritance of a directory's default ACL by what is created in it.

The value (struct posix_acl_xattr_header + entries, little-endian):
    version u32 = 2
    then per entry: tag u16, perm u16 (rwx bits), id u32 (uid or gid; -1 for the others)
Entries come in tag order (USER_OBJ, USER..., GROUP_OBJ, GROUP..., MASK, OTHER), USER and
GROUP entries sorted by id without duplicates; USER_OBJ, GROUP_OBJ and OTHER exactly once;
MASK required when there is any USER or GROUP entry (posix_acl_valid).
"""
import stat
import struct

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"
NAMES = (ACCESS, DEFAULT)

VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
_HDR = struct.Struct("<I")
_ENT = struct.Struct("<HHI")
_ORDER = {USER_OBJ: 0, USER: 1, GROUP_OBJ: 2, GROUP: 3, MASK: 4, OTHER: 5}


class AclError(ValueError):
    """The bytes are not a valid POSIX ACL."""


def parse(value: bytes) -> list[tuple[int, int, int]]:
    """[(tag, perm, id), ...], checked as posix_acl_from_xattr + posix_acl_valid do."""
    if len(value) < _HDR.size or (len(value) - _HDR.size) % _ENT.size:
        raise AclError("bad size")
    if _HDR.unpack_from(value)[0] != VERSION:
        raise AclError("unknown version")
    ents = [_ENT.unpack_from(value, off) for off in range(_HDR.size, len(value), _ENT.size)]
    validate(ents)
    return ents


def validate(ents) -> None:
    seen = {t: 0 for t in _ORDER}
    prev = (-1, -1)
    for tag, perm, id_ in ents:
        if tag not in _ORDER:
            raise AclError(f"unknown tag {tag:#x}")
        if perm & ~7:
            raise AclError("bad permission bits")
        key = (_ORDER[tag], id_ if tag in (USER, GROUP) else 0)
        if key <= prev:
            raise AclError("entries out of order or repeated")
        prev = key
        seen[tag] += 1
    if seen[USER_OBJ] != 1 or seen[GROUP_OBJ] != 1 or seen[OTHER] != 1:
        raise AclError("owner, group and other entries must appear once")
    if (seen[USER] or seen[GROUP]) and not seen[MASK]:
        raise AclError("named entries without a mask")


def pack(ents) -> bytes:
    return _HDR.pack(VERSION) + b"".join(_ENT.pack(*e) for e in ents)


def from_mode(mode: int) -> list[tuple[int, int, int]]:
    return [(USER_OBJ, (mode >> 6) & 7, UNDEFINED_ID), (GROUP_OBJ, (mode >> 3) & 7, UNDEFINED_ID),
            (OTHER, mode & 7, UNDEFINED_ID)]


def mode_bits(ents) -> int:
    """The permission bits an ACL stands for: owner, mask (else group), other."""
    d = {t: p for t, p, _ in ents if t != USER and t != GROUP}
    group = d[MASK] if MASK in d else d[GROUP_OBJ]
    return (d[USER_OBJ] << 6) | (group << 3) | d[OTHER]


def is_minimal(ents) -> bool:
    """The ACL says no more than the mode does (posix_acl_equiv_mode == 0)."""
    return all(t in (USER_OBJ, GROUP_OBJ, OTHER) for t, _, _ in ents)


def chmod(ents, mode: int):
    """posix_acl_chmod: the owner, mask (else group) and other entries take the new bits."""
    has_mask = any(t == MASK for t, _, _ in ents)
    out = []
    for t, p, i in ents:
        if t == USER_OBJ:
            p = (mode >> 6) & 7
        elif t == MASK or (t == GROUP_OBJ and not has_mask):
            p = (mode >> 3) & 7
        elif t == OTHER:
            p = mode & 7
        out.append((t, p, i))
    return out


def create_masq(ents, mode: int):
    """posix_acl_create_masq: the new inode's access ACL from its parent's default ACL and
    the mode it was created with; returns (acl, new mode)."""
    has_mask = any(t == MASK for t, _, _ in ents)
    out = []
    keep = mode & ~0o777
    m = mode
    for t, p, i in ents:
        if t == USER_OBJ:
            p &= (m >> 6) & 7
            keep |= p << 6
        elif t == MASK:
            p &= (m >> 3) & 7
            keep |= p << 3
        elif t == GROUP_OBJ and not has_mask:
            p &= (m >> 3) & 7
            keep |= p << 3
        elif t == OTHER:
            p &= m & 7
            keep |= p
        out.append((t, p, i))
    return out, keep


def inherit(default: bytes | None, mode: int) -> tuple[int, dict[bytes, bytes]]:
    """posix_acl_create for an inode made with `mode` under a directory whose default ACL
    is `default` (None: it has none): the mode to give it and the ACL xattrs to store."""
    if default is None or stat.S_ISLNK(mode):
        return mode, {}
    ents = parse(default)
    xattrs = {}
    if stat.S_ISDIR(mode):
        xattrs[DEFAULT] = default
    acl, mode = create_masq(ents, mode)
    if not is_minimal(acl):
        xattrs[ACCESS] = pack(acl)
    return mode, xattrs
