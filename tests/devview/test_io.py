"""Device files through a real mount: round trips, copy-on-write, errors, flush, suspend, tools."""
import errno
import mmap
import os
import random
import subprocess

import pytest

from tests.devview.viewhelp import dd, dd_ok, device_bytes
from tests.helpers import ok

MiB = 1 << 20


def rand(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def stack(view):
    """pmem0 (16M), disk0 (8M), a linear device and a snapshot stack, made after mounting."""
    ok("ndctl", "create-namespace", "-s", "16M")
    ok("dmemu", "disk", "create", "-s", "8M")
    ok("dmsetup", "create", "lin", "--table", "0 4096 linear pmem0 0")
    ok("dmsetup", "create", "real", "--table", "0 8192 linear pmem0 8192")
    ok("dmsetup", "create", "cow", "--table", "0 4096 linear pmem0 16384")
    ok("dmsetup", "create", "snap", "--table", "0 8192 snapshot real cow P 8")
    ok("dmsetup", "create", "origin", "--table", "0 8192 snapshot-origin real")
    return view


@pytest.mark.parametrize("path, ident", [("pmem0", "pmem0"), ("disk0", "disk0"),
                                         ("mapper/lin", "lin"), ("mapper/snap", "snap")])
def test_dd_round_trip_is_byte_exact(stack, path, ident):
    f = stack / path
    data = rand(MiB, seed=len(path))
    dd_ok(f"of={f}", "bs=1M", "seek=1", "oflag=direct,sync", "conv=notrunc", input=data)
    assert dd_ok(f"if={f}", "bs=1M", "skip=1", "count=1", "iflag=direct") == data
    assert device_bytes(ident, MiB, MiB) == data          # it is on the device, not in a cache
    assert subprocess.run(["cmp", "-n", str(MiB), "-i", f"{MiB}:0", str(f), "-"], input=data,
                          capture_output=True).returncode == 0
    size = os.stat(f).st_size
    assert subprocess.run(["wc", "-c", str(f)], capture_output=True, text=True).stdout.split()[0] == str(size)


def test_sizes_are_device_sizes_and_blockdev_needs_a_real_device(stack):
    assert {p: os.stat(stack / p).st_size for p in ("pmem0", "disk0", "mapper/lin", "mapper/snap")} == \
        {"pmem0": 16 * MiB, "disk0": 8 * MiB, "mapper/lin": 2 * MiB, "mapper/snap": 4 * MiB}
    r = subprocess.run(["blockdev", "--getsize64", str(stack / "pmem0")], capture_output=True, text=True)
    assert r.returncode != 0 and "Inappropriate ioctl" in r.stderr     # a regular file to the host
    r = subprocess.run(["stat", "-c", "%s", str(stack / "pmem0")], capture_output=True, text=True)
    assert r.stdout == f"{16 * MiB}\n"
    out = subprocess.run(["hexdump", "-C", str(stack / "mapper/lin")], capture_output=True, text=True).stdout
    assert out == "00000000  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|\n*\n00200000\n"


def test_copy_on_write_is_visible_through_the_files(view):
    ok("ndctl", "create-namespace", "-s", "16M")
    ok("dmsetup", "create", "real", "--table", "0 8192 linear pmem0 0")
    old, new = rand(64 * 1024, 2), rand(4096, 3)
    dd_ok(f"of={view}/mapper/real", "bs=64k", "oflag=direct", "conv=notrunc", input=old)
    ok("dmsetup", "create", "cow", "--table", "0 4096 linear pmem0 8192")
    ok("dmsetup", "create", "snap", "--table", "0 8192 snapshot real cow P 8")
    ok("dmsetup", "create", "origin", "--table", "0 8192 snapshot-origin real")
    dd_ok(f"of={view}/mapper/origin", "bs=4k", "seek=3", "oflag=direct", "conv=notrunc", input=new)
    assert dd_ok(f"if={view}/mapper/snap", "bs=64k", "count=1", "iflag=direct") == old
    expect = old[:12288] + new + old[16384:]
    assert dd_ok(f"if={view}/mapper/origin", "bs=64k", "count=1", "iflag=direct") == expect
    assert (view / "mapper/real").read_bytes()[:65536] == expect
    assert ok("dmsetup", "status", "snap") == "0 8192 snapshot 24/4096 16\n"


def test_media_error_reads_eio_and_a_write_clears_it(view):
    ok("ndctl", "create-namespace", "-s", "16M")
    f = view / "pmem0"
    dd_ok(f"of={f}", "bs=1M", "count=1", "conv=notrunc", input=rand(MiB))
    ok("ndctl", "inject-error", "namespace0.0", "--block", "1024", "--count", "8")
    r = dd(f"if={f}", "bs=512", "skip=1024", "count=8", "iflag=direct")
    assert r.returncode != 0 and b"Input/output error" in r.stderr
    fd = os.open(f, os.O_RDWR)
    try:
        assert os.pread(fd, 2048, 1020 * 512) == rand(MiB)[1020 * 512:1024 * 512]  # before it: fine
        with pytest.raises(OSError) as e:
            os.pread(fd, 512, 1030 * 512)
        assert e.value.errno == errno.EIO
        assert os.pwrite(fd, b"z" * 4096, 1024 * 512) == 4096     # the driver clears poison on write
        assert os.pread(fd, 4096, 1024 * 512) == b"z" * 4096
    finally:
        os.close(fd)


def test_invalid_snapshot_fails_io_with_eio_and_origin_carries_on(view):
    ok("ndctl", "create-namespace", "-s", "16M")
    ok("dmsetup", "create", "real", "--table", "0 8192 linear pmem0 0")
    ok("dmsetup", "create", "cow", "--table", "0 64 linear pmem0 8192")     # room for 6 chunks
    ok("dmsetup", "create", "snap", "--table", "0 8192 snapshot real cow P 8")
    ok("dmsetup", "create", "origin", "--table", "0 8192 snapshot-origin real")
    for i in range(7):
        dd_ok(f"of={view}/mapper/origin", "bs=4k", f"seek={i}", "count=1", "conv=notrunc",
              "oflag=direct", input=b"o" * 4096)
    assert ok("dmsetup", "status", "snap") == "0 8192 snapshot Invalid\n"
    for args in ([f"if={view}/mapper/snap", "of=/dev/null"], [f"of={view}/mapper/snap", "conv=notrunc"]):
        r = dd(*args, "bs=4k", "count=1", "iflag=direct" if "of=/dev/null" in args else "oflag=direct",
               input=bytes(4096))
        assert r.returncode != 0 and b"Input/output error" in r.stderr, args
    dd_ok(f"of={view}/mapper/origin", "bs=4k", "seek=9", "count=1", "conv=notrunc", input=b"p" * 4096)
    assert dd_ok(f"if={view}/mapper/origin", "bs=4k", "skip=9", "count=1") == b"p" * 4096


def test_removed_device_fails_io_and_its_file_disappears(view):
    ok("ndctl", "create-namespace", "-s", "16M")
    ok("ndctl", "create-namespace", "-s", "16M")
    fd = os.open(view / "pmem0", os.O_RDWR)
    try:
        assert os.pwrite(fd, b"a" * 512, 0) == 512
        ok("ndctl", "disable-namespace", "namespace0.0")
        # No wait: dmemud moves its device generation before it answers, and every lookup
        # checks it, so the name is gone as soon as the command returns.
        assert not (view / "pmem0").exists()
        assert sorted(os.listdir(view)) == ["mapper", "pmem1"]
        for op in (lambda: os.pread(fd, 512, 0), lambda: os.pwrite(fd, b"b" * 512, 0), lambda: os.fsync(fd)):
            with pytest.raises(OSError) as e:
                op()
            assert e.value.errno == errno.EIO
        assert os.fstat(fd).st_size == 16 * MiB        # the open file still answers fstat
    finally:
        os.close(fd)
    ok("ndctl", "enable-namespace", "namespace0.0")
    assert (view / "pmem0").read_bytes()[:512] == b"a" * 512
    ok("dmsetup", "create", "lin", "--table", "0 8 zero")
    assert (view / "mapper/lin").exists()
    ok("dmsetup", "remove", "lin")
    assert os.listdir(view / "mapper") == []


def test_fsync_is_a_flush_and_o_sync_writes_are_durable(view):
    ok("dmemu", "disk", "create", "-s", "8M")
    f = view / "disk0"
    # A flush makes every completed write durable, so the plain write comes last.
    dd_ok(f"of={f}", "bs=4k", "seek=1", "count=1", "conv=notrunc,fsync", input=b"2" * 4096)
    dd_ok(f"of={f}", "bs=4k", "seek=2", "count=1", "conv=notrunc", "oflag=sync", input=b"3" * 4096)
    dd_ok(f"of={f}", "bs=4k", "count=1", "conv=notrunc", input=b"1" * 4096)
    assert dd_ok(f"if={f}", "bs=4k", "count=1") == b"1" * 4096
    ok("dmemu", "power-fail", "disk0")
    # The disk's write cache lost the plain write; the fsynced and the O_SYNC ones survived.
    assert dd_ok(f"if={f}", "bs=4k", "count=3") == bytes(4096) + b"2" * 4096 + b"3" * 4096


def test_end_of_device_odd_offsets_and_o_direct_alignment(view):
    ok("ndctl", "create-namespace", "-s", "4M")
    ok("dmsetup", "create", "lin", "--table", "0 16 linear pmem0 0")       # 8 KiB
    f = view / "mapper/lin"
    fd = os.open(f, os.O_RDWR)
    try:
        assert os.pwrite(fd, b"x" * 100, 8192 - 50) == 50                  # cut short at the end
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"x", 8192)
        assert e.value.errno == errno.ENOSPC
        assert os.pread(fd, 100, 8192) == b"" and os.pread(fd, 100, 8192 - 50) == b"x" * 50
        assert os.pwrite(fd, b"hello", 1021) == 5                          # across a sector boundary
        assert os.pread(fd, 9, 1019) == b"\0\0hello\0\0"
    finally:
        os.close(fd)
    assert device_bytes("lin", 1024, 3) == b"lo\0"
    fd = os.open(f, os.O_RDWR | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, 4096)
        for off, n in ((100, 512), (0, 100)):
            with pytest.raises(OSError) as e:
                os.preadv(fd, [memoryview(buf)[:n]], off)
            assert e.value.errno == errno.EINVAL
        assert os.preadv(fd, [buf], 0) == 4096 and buf[1021:1026] == b"hello"
    finally:
        os.close(fd)


def test_suspended_device_holds_io_until_resume_and_the_view_stays_responsive(view):
    ok("ndctl", "create-namespace", "-s", "4M")
    ok("dmsetup", "create", "lin", "--table", "0 2048 linear pmem0 0")
    data = rand(MiB, 5)
    dd_ok(f"of={view}/mapper/lin", "bs=1M", "conv=notrunc", input=data)
    ok("dmsetup", "suspend", "lin")
    reader = subprocess.Popen(["dd", f"if={view}/mapper/lin", "bs=1M", "iflag=direct", "status=none"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # While that read waits for the resume, other requests are served.
        assert os.stat(view / "pmem0").st_size == 4 * MiB
        assert dd_ok(f"if={view}/pmem0", "bs=4k", "count=1") == data[:4096]
        assert reader.poll() is None
        ok("dmsetup", "resume", "lin")
        out, err = reader.communicate(timeout=30)
        assert reader.returncode == 0, err
        assert out == data
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()


def test_truncating_opens_and_truncate_leave_the_device_alone(view):
    ok("ndctl", "create-namespace", "-s", "4M")
    f = view / "pmem0"
    dd_ok(f"of={f}", "bs=4k", "seek=1", "count=1", input=b"k" * 4096)    # no notrunc: ftruncate
    with open(f, "w") as out:                                             # O_TRUNC
        out.write("hi")
    os.truncate(f, 0)
    assert os.stat(f).st_size == 4 * MiB
    assert dd_ok(f"if={f}", "bs=4k", "count=2") == b"hi" + bytes(4094) + b"k" * 4096


def test_random_unaligned_io_matches_a_model(view):
    ok("ndctl", "create-namespace", "-s", "4M")
    ok("dmsetup", "create", "lin", "--table", "0 64 linear pmem0 8")       # 32 KiB, odd start
    size = 64 * 512
    model = bytearray(size)
    rng = random.Random(7)
    fd = os.open(view / "mapper/lin", os.O_RDWR)
    try:
        for step in range(300):
            off = rng.randrange(size + 600)
            n = rng.choice([1, 7, 511, 512, 513, 1500, 4096, 5000])
            if rng.random() < 0.6:
                data = rng.randbytes(n)
                if off >= size:
                    with pytest.raises(OSError) as e:
                        os.pwrite(fd, data, off)
                    assert e.value.errno == errno.ENOSPC
                    continue
                done = os.pwrite(fd, data, off)
                assert done == min(n, size - off), step
                model[off:off + done] = data[:done]
            else:
                assert os.pread(fd, n, off) == bytes(model[off:off + n]), step
    finally:
        os.close(fd)
    assert device_bytes("lin", 0, size) == bytes(model)


def test_a_devdax_namespace_is_shown_and_refuses_read_and_write(view):
    ok("ndctl", "create-namespace", "-s", "8M", "-m", "devdax")
    f = view / "dax0.0"
    assert f.exists() and os.stat(f).st_size == 8 * MiB
    fd = os.open(f, os.O_RDWR)
    try:
        for op in (lambda: os.pread(fd, 4096, 0), lambda: os.pwrite(fd, b"x" * 4096, 0)):
            with pytest.raises(OSError) as e:
                op()
            assert e.value.errno == errno.EINVAL
    finally:
        os.close(fd)
