"""Who asks: the caller's credentials, as the kernel's struct cred carries them to a filesystem."""
from dataclasses import dataclass


@dataclass
class Ctx:
    """Who asks: uid, gid, supplementary groups, umask (pyfuse3's RequestContext + groups)."""
    uid: int = 0
    gid: int = 0
    # the caller's umask, which daxfs applies to what it creates where no default ACL
    # decides instead (the kernel hands modes over unmasked, FUSE_DONT_MASK); 0 for callers
    # of the Filesystem API, whose modes are taken as given
    umask: int = 0
    groups: tuple = ()


ROOT = Ctx()
