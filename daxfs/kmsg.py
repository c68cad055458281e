"""A mount's errors in the kernel log ring, as ext4 prints its own to dmesg.

Errors that change what a filesystem is (turned read-only, device gone, media errors,
corruption found) must be seen where people look for such things, not only in the mount's
own log file: `dmemu dmesg` shows dmemud's kernel log, and there they read
``daxfs (vg0-lv0): ...`` as ``EXT4-fs (dm-0): ...`` on Linux. Every ERROR record of the
daxfs loggers goes there, one line each, sent by a task of the mount's nursery (a logging
call may come from any thread, and must never wait on the daemon).
"""
import collections
import logging

import trio

# At most this many lines wait for the daemon; a storm of errors keeps the newest.
QUEUE = 64


class KernelLog(logging.Handler):
    def __init__(self, devname: str):
        super().__init__(logging.ERROR)
        self.prefix = f"daxfs ({devname}): "
        self.pending: collections.deque[str] = collections.deque(maxlen=QUEUE)
        self._token = trio.lowlevel.current_trio_token()
        self._wake = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage().splitlines()[0] if record.msg else ""
        except Exception:      # a bad format string must not take the logging call down
            text = str(record.msg)
        self.pending.append((self.prefix + text)[:1000])
        try:
            self._token.run_sync_soon(self._wake.set)
        except trio.RunFinishedError:
            pass

    async def run(self, client) -> None:
        """Send what is logged to dmemud until the mount ends or dmemud goes away."""
        from dmemu.errors import DmemuError
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self.pending:
                try:
                    await client.call("printk", line=self.pending.popleft())
                except (DmemuError, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    return      # the daemon is gone: the mount's own log still has it
