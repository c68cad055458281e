"""The commands for a user other than root: their own state directory, or one clear line.

Run as `nobody` with a HOME of its own. These need root to switch users (setpriv), and a
venv whose python other users can run: scripts/setup.sh makes it with Debian's
/usr/bin/python3 for that reason.
"""
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parent.parent
TOOLS = TOP / "tools"
NOBODY = pwd.getpwnam("nobody")


def as_nobody(home: Path, *cmd, env_extra=None, timeout=120):
    env = {"PATH": f"{TOOLS}:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(home),
           **(env_extra or {})}
    return subprocess.run(["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}",
                           "--clear-groups", *map(str, cmd)], env=env, cwd=home,
                          capture_output=True, text=True, timeout=timeout)


def _venv_runs_for_others() -> bool:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    # through env, as the commands reach it: a direct exec by setpriv is not the same test
    return as_nobody(Path("/"), "env", TOP / ".venv/bin/python", "-c", "").returncode == 0


needs_venv = pytest.mark.skipif(
    not _venv_runs_for_others(),
    reason="NOT TESTED HERE: other users cannot run this venv's python (it was made with an "
           "interpreter they cannot reach); run scripts/setup.sh to remake it with "
           "/usr/bin/python3")


@pytest.fixture
def home():
    # not under pytest's tmp_path: its parents are root's alone
    h = Path(tempfile.mkdtemp(prefix="nobody-", dir="/tmp"))
    os.chown(h, NOBODY.pw_uid, NOBODY.pw_gid)
    yield h
    as_nobody(h, "dmemud", "stop", "--force")
    shutil.rmtree(h, ignore_errors=True)


@needs_venv
def test_a_user_gets_a_state_directory_of_their_own(home):
    r = as_nobody(home, "ndctl", "create-namespace", "-s", "16M")
    assert r.returncode == 0, r.stderr
    state = home / ".local/state/dmemu"
    assert (state / "dmemud.sock").exists() and state.stat().st_uid == NOBODY.pw_uid
    assert oct(state.stat().st_mode & 0o777) == "0o700"
    r = as_nobody(home, "vgcreate", "vg0", "/dev/pmem0")
    assert r.returncode == 0, r.stderr
    assert "vg0" in as_nobody(home, "vgs").stdout
    r = as_nobody(home, "dmemud", "stop")
    assert (r.returncode, r.stdout) == (0, "dmemud stopped\n"), r.stderr


@needs_venv
def test_a_user_mounts_or_is_told_why_not(home):
    img, mnt = home / "fs.img", home / "mnt"
    for cmd in (["truncate", "-s", "64M", img], ["mkfs.daxfs", img], ["mkdir", mnt]):
        r = as_nobody(home, *cmd)
        assert r.returncode == 0, r.stderr
    r = as_nobody(home, "daxfs", img, mnt)
    if os.access("/dev/fuse", os.R_OK | os.W_OK) and (os.stat("/dev/fuse").st_mode & 0o006) == 0o006:
        assert r.returncode == 0, r.stderr
        assert as_nobody(home, "sh", "-c", f"echo hi > {mnt}/f && cat {mnt}/f").stdout == "hi\n"
        assert as_nobody(home, "fusermount3", "-u", mnt).returncode == 0
    else:
        assert r.returncode == 1
        assert r.stderr.startswith(f"daxfs: {img}: this user cannot open /dev/fuse (mode c")
        assert "chmod 666 /dev/fuse" in r.stderr and len(r.stderr.splitlines()) == 1


def test_without_a_venv_the_tools_say_so_in_one_line(tmp_path):
    (tmp_path / "tools").mkdir()
    for name in ("_run", "ndctl"):
        shutil.copy2(TOOLS / name, tmp_path / "tools" / name)
    r = subprocess.run([tmp_path / "tools" / "ndctl", "list"], capture_output=True, text=True)
    assert r.returncode == 127
    assert r.stderr == (f"ndctl: no venv in {tmp_path} (.venv); run 'sh scripts/setup.sh' "
                        "there first\n")
