"""Typed errors that carry an errno and a message in the kernel's or the tool's voice.

Library code raises these; each command's main() catches DmemuError once and prints its
message on one line. dmemud sends them to clients as (errno, message) and the client
raises them again, so a refusal reads the same wherever it surfaces.
"""
import errno as _errno


class DmemuError(Exception):
    """A failure a user can understand and act on."""

    def __init__(self, err: int, message: str):
        super().__init__(message)
        self.errno = err
        self.message = message

    def __str__(self) -> str:
        return self.message

    def to_wire(self) -> dict:
        return {"errno": self.errno, "message": self.message}

    @classmethod
    def from_wire(cls, d: dict) -> "DmemuError":
        return cls(d.get("errno", _errno.EIO), d.get("message", "unknown error"))

    def as_oserror(self) -> OSError:
        return OSError(self.errno, self.message)


def busy(message: str) -> DmemuError:
    return DmemuError(_errno.EBUSY, message)


def invalid(message: str) -> DmemuError:
    return DmemuError(_errno.EINVAL, message)


def no_device(message: str) -> DmemuError:
    return DmemuError(_errno.ENODEV, message)


def io_error(message: str) -> DmemuError:
    return DmemuError(_errno.EIO, message)
