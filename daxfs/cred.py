"""Who asks: the caller's credentials, as the kernel's struct cred carries them to a filesystem."""
from dataclasses import dataclass


@dataclass
class Ctx:
    """Who asks: uid, gid, supplementary groups, umask (pyfuse3's RequestContext + groups)."""
    uid: int = 0
    gid: int = 0
    umask: int = 0o022
    groups: tuple = ()


ROOT = Ctx()
