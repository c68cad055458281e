"""The commands run the checkout they belong to, whatever directory they are run from: a
directory holding other `daxfs` or `dmemu` packages (another checkout, or something put
there on purpose) is not imported, by the command or by the daemons it starts."""
import os
import subprocess
from pathlib import Path

TOP = Path(__file__).resolve().parent
TOOLS = TOP.parent / "tools"


def test_a_command_run_from_another_checkout_imports_its_own(tmp_path):
    for pkg in ("daxfs", "dmemu"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(
            f"raise SystemExit('the {pkg} of the current directory was imported')\n")
    env = {**os.environ, "DMEMU_ROOT": str(tmp_path / "state")}
    env.pop("PYTHONPATH", None)
    img = tmp_path / "fs.img"
    img.write_bytes(bytes(16 << 20))
    try:
        r = subprocess.run([TOOLS / "mkfs.daxfs", img], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        # ndctl starts dmemud (python -m) from the same directory, and asks it for a device
        r = subprocess.run([TOOLS / "ndctl", "create-namespace", "-s", "16m"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    finally:
        subprocess.run([TOOLS / "dmemud", "stop", "--force"], cwd=TOP, env=env,
                       capture_output=True, timeout=60)
