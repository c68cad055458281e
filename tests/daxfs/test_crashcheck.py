"""The crash checker itself: its crash model, and that it catches a filesystem that commits
without flushing what the commit references, while the real one passes every point."""
from types import SimpleNamespace as E

from daxfs.crashcheck import expectations, log_crash_states
from dmemu.dm.targets.log_writes import LOG_FLUSH_FLAG, LOG_FUA_FLAG
from tests.helpers import tool


def entry(i, sector, flags=0, data_len=512):
    return E(index=i, sector=sector, nr_sectors=data_len // 512, flags=flags, data_len=data_len)


def test_crash_model_keeps_flushed_and_fua_writes_only():
    entries = [entry(0, 0), entry(1, 0, LOG_FLUSH_FLAG, 0), entry(2, 1), entry(3, 2, LOG_FUA_FLAG),
               entry(4, 3), entry(5, 0, LOG_FLUSH_FLAG, 0)]
    data = {0: b"A" * 512, 2: b"B" * 512, 3: b"C" * 512, 4: b"D" * 512}
    states = {i: bytes(img) for i, img in log_crash_states(entries, data, 4 * 512, 0)}
    assert sorted(states) == [1, 3, 5]
    blocks = {i: [img[s * 512] for s in range(4)] for i, img in states.items()}
    assert blocks[1] == [65, 0, 0, 0]            # the write before the flush
    assert blocks[3] == [65, 0, 67, 0]           # + the FUA write, not the plain one before it
    assert blocks[5] == [65, 66, 67, 68]         # the second flush makes everything durable


def test_oracle_forgets_a_path_while_it_changes():
    events = [("o0", "a", "h1"), ("o1", "a", "changing"), ("o2", "a", "h2")]
    pos = {"o0": 10, "o1": 20, "o2": 30}
    assert expectations(events, pos, 5) == {}
    assert expectations(events, pos, 15) == {"a": "h1"}
    assert expectations(events, pos, 25) == {}
    assert expectations(events, pos, 35) == {"a": "h2"}


def test_real_daxfs_passes_and_a_commit_without_flush_is_caught(dmemu_root):
    r = tool("crashcheck", "-w", "fsync-files")
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failed" in r.stdout and "crash points checked" in r.stdout
    # fsync alone is the promise here (fsync-files fsyncs the directory next, whose flush
    # would cover a commit that skipped its own)
    r = tool("crashcheck", "-w", "fsync-append", "--broken")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "differ from what was made durable" in r.stdout


def test_fences_mode_catches_dax_stores_never_flushed(dmemu_root):
    r = tool("crashcheck", "--mode", "fences", "-w", "dax-msync")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fences checked, 0 failed" in r.stdout
    r = tool("crashcheck", "--mode", "fences", "-w", "dax-msync", "--broken")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "first failure at fence" in r.stdout and "differ from what was made durable" in r.stdout


def test_fast_commit_fsync_survives_power_failure_on_disk_and_adr_pmem(dmemu_root):
    """fsync of existing files writes fast-commit records: every fsynced state survives
    every crash point on a disk with a write cache (log mode) and on adr pmem mounted with
    DAX (fences mode); records written without their flush are caught."""
    r = tool("crashcheck", "-w", "fsync-append")
    assert r.returncode == 0 and " 0 failed" in r.stdout, r.stdout + r.stderr
    r = tool("crashcheck", "--mode", "fences", "-w", "fsync-append")
    assert r.returncode == 0 and "fences checked, 0 failed" in r.stdout, r.stdout + r.stderr
    r = tool("crashcheck", "--mode", "fences", "-w", "fsync-append", "--broken")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "differ from what was made durable" in r.stdout
