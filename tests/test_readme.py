"""The README's "Using it" section runs as written, in order, on a fresh state directory.

Its indented blocks are taken from README.md itself and run as one `sh -e` script with
tools/ on PATH, in a private mount namespace with a tmpfs over /mnt: the mounts it makes
(/mnt/lv0, /mnt/dev, ...) are the README's own paths, yet nothing of them is seen by or
left on the machine. Whatever the script leaves mounted when it fails is unmounted inside
the namespace, so no daemon outlives the test; and the copies of other tests' FUSE mounts
the namespace starts with are detached first, so it holds none of them.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or shutil.which("unshare") is None,
    reason="the README's commands mount (mount -t fuse.daxfs, losetup): they need root, "
           "/dev/fuse and unshare")

PROLOGUE = """\
# The new namespace starts with a copy of every mount, other tests' FUSE mounts included:
# a copy keeps their superblock alive, so their daemons would not end at their unmount
# while this runs. Detach them here first.
for m in $(awk '$3 ~ "^fuse" {print $2}' /proc/self/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
done
mount -t tmpfs -o size=64m readme /mnt
cleanup() {
    for m in $(awk '$2 ~ "^/mnt/" && $3 ~ "^fuse" {print $2}' /proc/self/mounts | sort -r); do
        fusermount3 -u -z "$m" 2>/dev/null || true
    done
}
trap cleanup EXIT
set -x
"""


def using_it_blocks(readme: str) -> str:
    """The indented (code) lines of the README's "Using it" section, in order."""
    start = readme.index("## Using it")
    end = readme.index("\n## ", start + 1)
    return "\n".join(line[4:] for line in readme[start:end].splitlines()
                     if line.startswith("    "))


@pytest.mark.timeout(900)
def test_using_it_runs_as_written(dmemu_root, tmp_path):
    script = using_it_blocks((TOP / "README.md").read_text())
    assert "mount -t fuse.daxfs" in script and "lvcreate -s" in script
    (tmp_path / "readme.sh").write_text(PROLOGUE + script + "\n")
    env = dict(os.environ, PATH=f"{TOP / 'tools'}:{os.environ['PATH']}")
    try:
        r = subprocess.run(["unshare", "--mount", "--propagation", "private",
                            "sh", "-e", str(tmp_path / "readme.sh")],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=850)
    finally:
        Path("/tmp/image").unlink(missing_ok=True)     # the README's own scratch file
    assert r.returncode == 0, f"README command failed:\n{r.stderr[-4000:]}\n{r.stdout[-2000:]}"
    # What the README promises along the way:
    assert "hello" in r.stdout                             # the snapshot has the file
    assert "EIO, as the poison says" in r.stdout           # the poisoned read failed
    assert "/data offset 0" in r.stdout                    # and rmap named the file
    assert "same" in r.stdout.split()                      # the device view round trip
    assert "Delaying merge since origin is open." in r.stdout     # merge deferred while mounted
    # lvpoll finishes the merge, or finds that the poller the activation started has
    assert ("Merge of snapshot into logical volume vg0/lv0 has finished." in r.stdout
            or "vg0/lv0 is no longer merging origin, polling has finished." in r.stdout)
    assert "Extended file system daxfs on vg0/lv0." in r.stdout    # lvextend -r, mounted
    assert "refused: the filesystem reaches past the new end" in r.stdout
