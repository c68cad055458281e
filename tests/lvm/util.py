"""Shared by the lvm tests: the state a refusal must leave alone, read in-process."""
import contextlib
import io

from dmemu.cli import lvm
from tests.helpers import ok


def report(cmd: str, *args: str) -> str:
    """A report command run in this process (no interpreter start-up); its stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert lvm.main(list(args), prog=cmd) == 0
    return out.getvalue()


def state() -> tuple:
    """Reports with seqno and uuids, and every DM device's table."""
    return (report("lvs", "-a", "-o", "+devices,lv_uuid,vg_seqno,vg_uuid"),
            report("pvs", "-o", "+pv_uuid,vg_name"), ok("dmsetup", "table"))
