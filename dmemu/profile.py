"""The two behaviours dmemud can have, and the module parameters they set, kept across restarts.

``fixed`` (the default) is the stack as the 2018 dm-devel thread proposed it: snapshots of
DAX devices stay DAX-capable, and a refusal says in one clear line what was wrong and what
to do, changing nothing. ``linux`` is what Linux 6.1 with LVM 2.03.16 does, to the byte where
the bytes are known: a mapped device's type is fixed by its first table load, snapshots are
never DAX-capable, and the tools print the kernel's and LVM's own texts and exit codes
(docs/linux-differences.md lists every difference). Like a kernel command line, the choice
lives in the state directory and survives dmemud restarts; it is a property of the machine,
not of a device.
"""
import errno
import json
import os

from .errors import DmemuError

PROFILES = ("fixed", "linux")
DEFAULT_PROFILE = "fixed"
# What each profile sets; `dmemu param` may change a parameter afterwards.
PROFILE_PARAMS = {"fixed": {"snapshot_dax": True}, "linux": {"snapshot_dax": False}}


class Settings:
    """The profile and module parameters, saved in ``path`` (JSON) on every change."""

    def __init__(self, path):
        self.path = path
        self.profile = DEFAULT_PROFILE
        self.params = dict(PROFILE_PARAMS[DEFAULT_PROFILE])
        try:
            with open(path) as f:
                saved = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            raise DmemuError(errno.EINVAL, f"{path}: unreadable settings ({e}); fix or remove "
                                           f"the file and restart dmemud") from None
        if saved.get("profile") in PROFILES:
            self.profile = saved["profile"]
        self.params.update({k: bool(v) for k, v in saved.get("params", {}).items()
                            if k in self.params})

    @property
    def linux(self) -> bool:
        return self.profile == "linux"

    def set_profile(self, name: str) -> None:
        if name not in PROFILES:
            raise DmemuError(errno.EINVAL, f"unknown profile '{name}': choose "
                                           + " or ".join(PROFILES))
        self.profile = name
        self.params.update(PROFILE_PARAMS[name])
        self.save()

    def set_param(self, name: str, value: bool) -> None:
        self.params[name] = value
        self.save()

    def save(self) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"profile": self.profile, "params": self.params}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
