"""Mount option handling: what libfuse would refuse never reaches pyfuse3.init."""
import pytest

from daxfs.mount import parse_options


def test_dax_and_fstab_words_taken_out():
    mo = parse_options(["rw", "dax=inode", "defaults", "noauto", "x-systemd.automount",
                        "allow_other", "dev", "suid", "commit=2", "noatime"], "/img")
    assert mo.dax == "inode" and mo.commit_interval == 2.0 and mo.noatime
    assert mo.fuse == ["allow_other", "dev", "suid", "noatime", "default_permissions",
                       "fsname=/img"]
    assert not any(o.startswith(("subtype", "dax", "commit")) for o in mo.fuse)


def test_ro_and_plain_dax():
    mo = parse_options(["ro", "dax", "fsname=ignored", "subtype=daxfs"], "/dev/pmem0")
    assert mo.read_only and mo.dax == "always"
    assert mo.fuse == ["ro", "default_permissions", "fsname=/dev/pmem0"]


def test_bad_commit_interval():
    with pytest.raises(ValueError):
        parse_options(["commit=soon"], "/img")


def _mount_expecting_refusal(img, mnt, *opts):
    """Run the daxfs command where it must refuse; should it mount after all, unmount
    before the assertion fails, so a failing test never leaves a mount behind."""
    import subprocess
    from tests.helpers import TOOLS
    r = subprocess.run([str(TOOLS / "daxfs"), str(img), str(mnt), *opts], capture_output=True,
                       text=True, timeout=60)
    if r.returncode == 0:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
    return r


def test_an_unknown_option_is_named_before_anything_is_opened(tmp_path):
    """-o frobnicate once failed as 'fuse_session_new() failed' after the filesystem had
    been mounted (its mount count bumped); it must be refused by name, the image untouched."""
    import hashlib
    import subprocess
    from tests.helpers import TOOLS
    img = tmp_path / "img"
    img.write_bytes(b"")
    os_truncate = __import__("os").truncate
    os_truncate(img, 16 << 20)
    subprocess.run([str(TOOLS / "mkfs.daxfs"), str(img)], check=True, capture_output=True)
    before = hashlib.sha256(img.read_bytes()).hexdigest()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = _mount_expecting_refusal(img, mnt, "-o", "rw,frobnicate")
    assert r.returncode != 0
    assert "frobnicate" in r.stderr and "unknown mount option" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert hashlib.sha256(img.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("option", ["allow_other", "nosuid", "nodev", "noexec", "max_read=131072",
                                    "blksize=4096", "auto_unmount", "debug", "sync", "dirsync",
                                    "context=system_u:object_r:tmp_t:s0", "user=root"])
def test_options_libfuse_knows_are_passed_on(option):
    assert option in parse_options([option], "/img").fuse


@pytest.mark.parametrize("option", ["frobnicate", "nonsense=1", "max_read", "dax=sometimes", "commit=-1"])
def test_options_nobody_knows_are_refused_by_name(option):
    with pytest.raises(ValueError, match=option.split("=")[0]):
        parse_options([option], "/img")


def test_a_damaged_journal_header_sends_the_user_to_fsck_not_mkfs(tmp_path):
    import subprocess
    from tests.helpers import TOOLS
    img = tmp_path / "img"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run([str(TOOLS / "mkfs.daxfs"), str(img)], check=True, capture_output=True)
    from daxfs.format import BLOCK_SIZE, Superblock
    with open(img, "r+b") as f:
        sb = Superblock.unpack(f.read(BLOCK_SIZE))
        f.seek(sb.journal_start * BLOCK_SIZE)       # the journal header's magic
        f.write(bytes(8))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = _mount_expecting_refusal(img, mnt)
    assert r.returncode != 0
    assert "journal" in r.stderr and "fsck.daxfs -y" in r.stderr and "mkfs" not in r.stderr, r.stderr
    # And fsck -y is indeed the way back.
    fsck = subprocess.run([str(TOOLS / "fsck.daxfs"), "-y", str(img)], capture_output=True, text=True)
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr
    assert subprocess.run([str(TOOLS / "fsck.daxfs"), "-n", str(img)], capture_output=True).returncode == 0


def test_an_image_that_is_not_a_daxfs_is_sent_to_mkfs(tmp_path):
    import subprocess
    from tests.helpers import TOOLS
    img = tmp_path / "img"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = _mount_expecting_refusal(img, mnt)
    assert r.returncode != 0 and "mkfs.daxfs" in r.stderr, r.stderr
