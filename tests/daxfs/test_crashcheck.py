"""The crash checker itself: its crash models (which subsets of unflushed writes and lines
a state keeps, torn at 8-byte words on pmem), its oracle, the generated workloads, the
same results on Dask workers as in one process, and that it catches a filesystem broken
on purpose while the real one passes."""
import json
import os
import signal
import subprocess
import time
import uuid

import pytest

from daxfs import crash_ace
from daxfs.crash_oracle import ABSENT, FILE, expectations
from daxfs.crash_states import BaseBuilder, Recording, log_states, pmem_states, state_device
from tests.helpers import tool


def _rec(ops, model="log", size=8 * 512, initial=()):
    return Recording(workload="t", model=model, size=size, fs_bytes=size,
                     initial=list(initial), ops=ops, start=0)


def _image(rec, state, builder=None):
    dev = state_device(rec, state, builder or BaseBuilder(rec))
    return bytes(dev.image())


def test_block_model_keeps_flushed_and_fua_and_any_subset_of_the_rest():
    w = lambda sector, byte, fua=False: ("w", sector * 512, bytes([byte]) * 512, fua)  # noqa: E731
    ops = [w(0, 65), ("f",), w(1, 66), w(2, 67, fua=True), w(3, 68), w(4, 69), w(5, 70),
           ("f",)]
    rec = _rec(ops)
    states = {s.id: s for s in log_states(rec, seed=1, samples=4)}
    # points: the flush at 1, the FUA write at 3, the flush at 7
    assert {s.point for s in states.values()} == {1, 3, 7}
    blocks = {sid: [img[k * 512] for k in range(6)]
              for sid, img in ((sid, _image(rec, s)) for sid, s in states.items())}
    # a crash at a flush: the writes before it may or may not have left the cache
    assert blocks["1:none"] == [0, 0, 0, 0, 0, 0]
    assert blocks["1:all"] == [65, 0, 0, 0, 0, 0]
    assert blocks["3:none"] == [65, 0, 67, 0, 0, 0]         # FUA kept, the plain one not
    assert blocks["3:all"] == [65, 66, 67, 0, 0, 0]
    # at the second flush four writes were pending: every one-out and one-in, FUA always
    assert blocks["7:none"] == [65, 0, 67, 0, 0, 0]
    assert blocks["7:all"] == [65, 66, 67, 68, 69, 70]
    assert blocks["7:out0"] == [65, 0, 67, 68, 69, 70]
    assert blocks["7:in2"] == [65, 0, 67, 0, 69, 0]
    assert sum(sid.startswith("7:out") for sid in states) == 4
    assert sum(sid.startswith("7:in") for sid in states) == 4
    samples = [sid for sid in states if sid.startswith("7:s")]
    assert samples and len(set(states[s].chosen for s in samples)) == len(samples)
    # the same seed gives the same states; another seed other samples
    again = [(s.id, s.chosen) for s in log_states(rec, seed=1, samples=4)]
    assert again == [(s.id, s.chosen) for s in states.values()]
    other = {s.id: s.chosen for s in log_states(rec, seed=2, samples=4)}
    assert any(other.get(s) != states[s].chosen for s in samples)


def test_pmem_model_keeps_fenced_lines_and_tears_unflushed_ones_at_words():
    size = 4096
    base = bytes(size)
    new = bytes(range(1, 129))                  # two 64-byte lines, every word changed
    rec = _rec([("r", 0, b"A" * 8), ("r", 128, new)], model="pmem", size=size,
               initial=[(0, base)])
    builder = BaseBuilder(rec)
    states = {s.id: s for s in pmem_states(rec, seed=1, samples=3)}
    img = {sid: _image(rec, s, builder) for sid, s in states.items()}
    assert img["0:none"] == base                 # before the first fence nothing
    assert img["1:none"][:8] == b"A" * 8 and img["1:none"][128:256] == bytes(128)
    # of two lines, keeping one is dropping the other: one-in repeats one-out, and goes
    assert not any(sid.startswith("1:in") for sid in img)
    assert img["1:out1"][128:192] == new[:64] and img["1:out1"][192:256] == bytes(64)
    assert img["1:out0"][128:192] == bytes(64) and img["1:out0"][192:256] == new[64:]
    assert img["2:none"][128:256] == new         # the fence made both lines durable
    torn = img["1:torn0"][128:192]
    words = [torn[i:i + 8] for i in range(0, 64, 8)]
    kept = [w == new[i * 8:i * 8 + 8] for i, w in enumerate(words)]
    assert any(kept) and not all(kept)           # a strict part of the line, whole words
    assert all(w == bytes(8) for w, k in zip(words, kept) if not k)
    assert builder.base(1)[128:256] == bytes(128)   # states never change the base image


def test_oracle_promises_follow_renames_and_directory_fsyncs():
    events = [("o0", "a", frozenset({"sha:1"}), False),
              ("o1", "b", frozenset({FILE}), True),          # fsync of the parent
              ("o2", "b", frozenset({"sha:1"}), "widen"),    # rename a over b
              ("o3", "a", frozenset({ABSENT}), "widen"),
              ("o4", "a", None, False)]
    pos = {"o0": 10, "o1": 20, "o2": 30, "o3": 31, "o4": 40}
    assert expectations(events, pos, 5) == {}
    assert expectations(events, pos, 25) == {"a": {"sha:1"}, "b": {FILE}}
    at_rename = expectations(events, pos, 35)
    assert at_rename["b"] == {FILE, "sha:1"} and at_rename["a"] == {"sha:1", ABSENT}
    assert "a" not in expectations(events, pos, 45)
    # at the very point of a mark: a change begun there voids the promise (the state may
    # hold part of it), a promise made there holds (everything before it was durable)
    assert "a" not in expectations(events, pos, 40)
    assert expectations(events, pos, 10) == {"a": {"sha:1"}}


def test_ace_generates_every_valid_one_op_sequence_and_seeded_samples():
    seq1 = list(crash_ace.sequences(1))
    kinds = {op[0] for (op, _), in seq1}
    assert kinds == {"creat", "mkdir", "write", "truncate", "link", "unlink", "rename",
                     "setxattr", "removexattr", "mmap"}
    assert all(p != "none" for (_, p), in seq1)          # the last op is always persisted
    assert len(seq1) == len(set(seq1))
    a = crash_ace.sample_sequences(3, 20, seed=5)
    assert a == crash_ace.sample_sequences(3, 20, seed=5) != crash_ace.sample_sequences(3, 20, 6)
    assert len(set(a)) == 20 and all(len(s) == 3 for s in a)


def _procs_with(marker: str) -> list:
    """Processes whose environment carries ``marker`` (this run's children, wherever)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker.encode() in f.read():
                    out.append(int(pid))
        except OSError:
            pass
    return out


def test_real_daxfs_passes_on_dask_as_in_one_process_and_leaves_no_worker(dmemu_root, tmp_path):
    marker = f"CRASHCHECK_TEST={uuid.uuid4()}"
    env = dict(os.environ, CRASHCHECK_TEST=marker.split("=")[1])
    out = {}
    for workers in ("0", "2"):
        js = tmp_path / f"w{workers}.json"
        r = tool("crashcheck", "-w", "seq-1/88", "--mode", "both", "--bound", "6",
                 "--workers", workers, "--json", str(js), env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "0 failed" in r.stdout
        doc = json.loads(js.read_text())
        out[workers] = [(x["workload"], x["mode"], x["states"], x["points"]) for x in doc["runs"]]
    assert out["0"] == out["2"] and all(n > 10 for _, _, n, _ in out["0"])
    assert _procs_with(marker) == []
    r = tool("crashcheck", "report", str(tmp_path / "w2.json"), "-o", str(tmp_path / "c.png"))
    assert r.returncode == 0, r.stderr
    assert "seq-1" in r.stdout and (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "bad.json").write_text("{")
    r = tool("crashcheck", "report", str(tmp_path / "bad.json"))
    assert r.returncode == 2 and "not a crashcheck results file" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_interrupted_run_shuts_its_workers_down(dmemu_root, sig):
    """Ctrl-C, and SIGTERM as a test's timeout or a batch system sends it."""
    marker = f"CRASHCHECK_TEST={uuid.uuid4()}"
    env = dict(os.environ, CRASHCHECK_TEST=marker.split("=")[1])
    p = subprocess.Popen(["tools/crashcheck", "-w", "seq-1", "--workers", "2", "-q"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _recording(marker) and time.monotonic() < deadline:
        time.sleep(0.2)                          # a daxfs of a recording is mounted
    assert _recording(marker)
    p.send_signal(sig)
    _, err = p.communicate(timeout=90)
    assert p.returncode == 130 and "interrupted" in err, err
    deadline = time.monotonic() + 10
    while _procs_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _procs_with(marker) == []
    assert _crashcheck_mounts(p.pid) == set()    # recordings in flight were unmounted


def _recording(marker: str) -> bool:
    for pid in _procs_with(marker):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"daxfs.cli.mount" in f.read():
                    return True
        except OSError:
            pass
    return False


def _crashcheck_mounts(pid: int) -> set:
    """Mounts of recordings of the crashcheck whose process id is ``pid``."""
    with open("/proc/mounts") as f:
        return {line.split()[1] for line in f if f" /tmp/crashcheck-{pid}-mnt-" in line}


def test_a_commit_without_flush_is_caught_and_its_state_reproduced(dmemu_root):
    # fsync alone is the promise here (fsync-files fsyncs the directory next, whose flush
    # would cover a commit that skipped its own)
    r = tool("crashcheck", "-w", "fsync-append", "--broken", "--workers", "0", "-x")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "differ from what was made durable" in r.stdout
    cmd = next(line.split("reproduce: ", 1)[1] for line in r.stdout.splitlines()
               if "reproduce: crashcheck" in line)
    r = tool(*cmd.split())
    assert r.returncode == 1 and "differ from what was made durable" in r.stdout, r.stdout
    assert "1 states at 1 crash points checked, 1 failed" in r.stdout


def test_fences_mode_catches_dax_stores_never_flushed(dmemu_root):
    r = tool("crashcheck", "--mode", "fences", "-w", "dax-msync", "--workers", "0", "--bound", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "crash points checked, 0 failed" in r.stdout
    r = tool("crashcheck", "--mode", "fences", "-w", "dax-msync", "--broken", "--workers", "0",
             "-x")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "differ from what was made durable" in r.stdout


def test_fast_commit_fsync_survives_power_failure_on_disk_and_adr_pmem(dmemu_root):
    """fsync of existing files writes fast-commit records: every fsynced state survives
    the crash points on a disk with a write cache and on adr pmem mounted with DAX, with
    writes and lines since the last flush kept or dropped; records written without their
    flush are caught."""
    r = tool("crashcheck", "-w", "fsync-append", "--mode", "both", "--workers", "0",
             "--bound", "4")
    assert r.returncode == 0 and r.stdout.count(" 0 failed") == 3, r.stdout + r.stderr
    r = tool("crashcheck", "--mode", "fences", "-w", "fsync-append", "--broken", "--workers",
             "0", "-x")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "differ from what was made durable" in r.stdout


def test_bad_command_lines_are_one_line_errors(dmemu_root):
    for argv, words in ((["-w", "nosuch"], "unknown workload nosuch"),
                        (["-w", "seq-1/100000"], "seq-1 has workloads 0 to"),
                        (["--mode", "fences", "-w", "snapshot-during-writes"], "fences mode"),
                        (["--workers", "-1"], "--workers must be 0 or more")):
        r = tool("crashcheck", *argv)
        assert r.returncode == 2 and words in r.stderr, (argv, r.stderr)
        assert "Traceback" not in r.stderr
