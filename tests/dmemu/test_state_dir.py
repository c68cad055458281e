"""The state directory is trusted only when it is safe, and images are plain files in it.

A root dmemud in a DMEMU_ROOT another user owns (or can write to) would follow that user's
symlinks and registry: it once created a file outside the directory from an image name of
'../../../../victim2', and extended and formatted a root-owned 0600 file through a symlinked
image. Both must be refused, with one line, before anything is opened.
"""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import TOOLS, ok, stop_daemon, tool

NOBODY = 65534


def _refused(r, *words):
    assert r.returncode != 0, r.stdout
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, r.stderr
    for w in words:
        assert w in line, line


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_a_state_directory_owned_by_another_user_is_refused(dmemu_root):
    os.chown(dmemu_root, NOBODY, NOBODY)
    r = tool("ndctl", "list")
    _refused(r, str(dmemu_root), "owned by uid 65534")
    assert not (dmemu_root / "dmemud.sock").exists() and not (dmemu_root / "images").exists()


def test_a_state_directory_others_can_write_is_refused(dmemu_root):
    os.chmod(dmemu_root, 0o777)
    _refused(tool("ndctl", "list"), "writable by others", "chmod 700")
    assert not (dmemu_root / "dmemud.sock").exists()


def test_a_symlinked_images_directory_is_refused(dmemu_root, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.symlink(elsewhere, dmemu_root / "images")
    _refused(tool("ndctl", "list"), "images", "symbolic link")
    assert list(elsewhere.iterdir()) == []


def _registry_with(root, **changes):
    ok("ndctl", "create-namespace", "-s", "4M", "-a", "4K")
    ok("ndctl", "create-namespace", "-s", "4M", "-a", "4K")
    stop_daemon(root)
    reg = json.loads((root / "hardware.json").read_text())
    reg["devices"][0].update(changes)
    (root / "hardware.json").write_text(json.dumps(reg))
    return reg["devices"][0]


def test_an_image_name_that_is_a_path_is_left_out_and_nothing_is_created(dmemu_root, tmp_path):
    victim = dmemu_root.parent / f"victim-{dmemu_root.name}"
    _registry_with(dmemu_root, uuid="../../" + victim.name)
    out = json.loads(ok("ndctl", "list"))
    assert [d["blockdev"] for d in (out if isinstance(out, list) else [out])] == ["pmem1"]
    assert not victim.exists() and not list(dmemu_root.parent.glob(f"victim-{dmemu_root.name}*"))
    log = (dmemu_root / "dmemud.log").read_text()
    assert "device 0 left out: uuid" in log and "not a uuid" in log
    # The bad entry stays in the registry for a person to mend; the good one serves on.
    ok("ndctl", "create-namespace", "-s", "4M", "-a", "4K")
    reg = json.loads((dmemu_root / "hardware.json").read_text())
    assert any(d["uuid"].startswith("../") for d in reg["devices"])


def test_a_symlinked_image_is_not_followed(dmemu_root, tmp_path):
    spec = _registry_with(dmemu_root)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.chmod(victim, 0o600)
    image = dmemu_root / "images" / (spec["uuid"] + ".img")
    image.unlink()
    os.symlink(victim, image)
    r = tool("mkfs.daxfs", "/dev/pmem0")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert victim.read_bytes() == b"precious"
    # The other namespace is untouched by its neighbour's trouble.
    ok("mkfs.daxfs", "/dev/pmem1")
    assert "media cannot be opened" in (dmemu_root / "dmemud.log").read_text()
