"""The one error type of the lvm commands: message lines in LVM's voice and its exit code.

LVM prints every message with a two-space indent and fails most commands with ECMD_FAILED
(5); a command line it cannot parse is EINVALID_CMD_LINE (3).
"""

ECMD_FAILED = 5
EINVALID_CMD_LINE = 3


class LvmError(Exception):
    def __init__(self, message: str, code: int = ECMD_FAILED):
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message
