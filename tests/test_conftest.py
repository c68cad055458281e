"""The shared fixtures themselves: a traceback that a test's daemon logs fails that test."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent

INNER = textwrap.dedent('''
    import os
    import pytest
    from pathlib import Path

    TB = "Traceback (most recent call last):\\n  File \\"x.py\\", line 1\\nValueError: boom\\n"

    def test_dmemud_traceback():
        Path(os.environ["DMEMU_ROOT"], "dmemud.log").write_text("started\\n" + TB)

    def test_mount_traceback():
        d = Path(os.environ["DMEMU_ROOT"], "log")
        d.mkdir()
        (d / "daxfs-pmem0.log").write_text(TB)

    @pytest.mark.daemon_traceback_expected
    def test_expected_traceback():
        Path(os.environ["DMEMU_ROOT"], "dmemud.log").write_text(TB)

    def test_clean_log():
        Path(os.environ["DMEMU_ROOT"], "dmemud.log").write_text("started\\nstopped\\n")
''')


def test_a_daemon_traceback_fails_the_test_that_caused_it(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER)
    (tmp_path / "conftest.py").write_text((TOP / "tests" / "conftest.py").read_text())
    env = dict(os.environ, PYTHONPATH=str(TOP))
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
                        "-p", "no:xdist", str(tmp_path)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    out = r.stdout
    assert r.returncode == 1, out
    assert "ERROR test_inner.py::test_dmemud_traceback" in out
    assert "ERROR test_inner.py::test_mount_traceback" in out
    assert "PASSED test_inner.py::test_expected_traceback" in out
    assert "PASSED test_inner.py::test_clean_log" in out
    assert "a daemon logged a traceback during this test" in out and "ValueError: boom" in out
