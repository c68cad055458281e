"""The fstests-style runner: run test scripts, compare their output with golden files.

Tests live in tests/<group dir>/<NNN>, each a shell script with a golden <NNN>.out. A test
declares its groups on its `_begin_fstest` line. Each test runs with its own dmemud state
directory, so it sets up and tears down its own devices; its output (after the test's own
filters) must equal the golden file, or the runner keeps it as results/<dir>/<NNN>.out.bad
and prints the diff. A test that calls _notrun is reported with its reason.

    scripts/check [-g GROUP]... [-x GROUP]... [-n] [TEST...]     e.g. -g quick, dax/001
"""
import argparse
import difflib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = Path(__file__).resolve().parent
TOP = SUITE.parent.parent
GROUP_RE = re.compile(r"^_begin_fstest\s+(.*)$", re.M)


def discover() -> dict[str, list[str]]:
    tests = {}
    for d in sorted((SUITE / "tests").iterdir()):
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if re.fullmatch(r"\d{3}", f.name):
                m = GROUP_RE.search(f.read_text())
                tests[f"{d.name}/{f.name}"] = m.group(1).split() if m else []
    return tests


def select(tests, groups, excludes, names) -> list[str]:
    if names:
        unknown = [n for n in names if n not in tests]
        if unknown:
            sys.exit(f"check: no such test: {', '.join(unknown)}; see scripts/fstests/tests/")
        chosen = list(names)
    elif groups:
        chosen = [t for t, g in tests.items() if set(g) & set(groups) or t.split("/")[0] in groups]
    else:
        chosen = [t for t, g in tests.items() if "auto" in g]
    return [t for t in chosen if not set(tests[t]) & set(excludes)]


def load_config(env: dict) -> dict:
    """local.config (shell assignments) under the suite, or CHECK_CONFIG, over defaults."""
    path = Path(env.get("CHECK_CONFIG", SUITE / "local.config"))
    if path.exists():
        out = subprocess.run(["bash", "-c", f"set -a; . '{path}'; env -0"], capture_output=True,
                             env=env, check=True).stdout
        env = dict(x.split("=", 1) for x in out.decode().split("\0") if "=" in x)
    return env


def stop_daemon(root: Path, env: dict) -> None:
    subprocess.run([str(TOP / "tools" / "dmemud"), "stop", "--force"], env=env,
                   capture_output=True, timeout=120)
    try:
        pid = int((root / "dmemud.pid").read_text().strip() or 0)
        if pid:
            os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        pass


def run_test(name: str, env: dict, results: Path, verbose: bool) -> tuple[str, str]:
    script = SUITE / "tests" / name
    golden = script.with_name(script.name + ".out")
    out_dir = results / name.split("/")[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    bad = out_dir / (script.name + ".out.bad")
    full = out_dir / (script.name + ".full")
    notrun = out_dir / (script.name + ".notrun")
    for f in (bad, notrun):
        f.unlink(missing_ok=True)
    root = Path(tempfile.mkdtemp(prefix="check-", dir="/tmp"))
    mnt = Path(tempfile.mkdtemp(prefix="check-mnt-", dir="/tmp"))
    mnt.chmod(0o755)        # tests switch to unprivileged users, who must reach the mounts
    tenv = dict(env, DMEMU_ROOT=str(root), seq=name, RESULT_DIR=str(out_dir),
                seqres=str(out_dir / script.name), here=str(SUITE), tmp=str(root / "tmp"),
                PATH=f"{TOP / 'tools'}:{env.get('PATH', '')}", CHECK_MNT=str(mnt))
    tenv.setdefault("TEST_DIR", str(mnt / "test"))
    tenv.setdefault("SCRATCH_MNT", str(mnt / "scratch"))
    for d in (tenv["TEST_DIR"], tenv["SCRATCH_MNT"]):
        Path(d).mkdir(parents=True, exist_ok=True)
        Path(d).chmod(0o755)
    try:
        with open(full, "w") as fullf:
            p = subprocess.run(["bash", str(script)], cwd=SUITE, env=tenv, stdout=subprocess.PIPE,
                               stderr=fullf, text=True, timeout=float(env.get("CHECK_TIMEOUT", 600)))
        output = p.stdout
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        output += f"\ncheck: test timed out after {e.timeout:.0f}s\n"
        p = None
    finally:
        for d in (tenv["SCRATCH_MNT"], tenv["TEST_DIR"]):
            subprocess.run(["fusermount3", "-u", "-z", d], capture_output=True)
        stop_daemon(root, tenv)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(mnt, ignore_errors=True)
    if notrun.exists():
        return "notrun", notrun.read_text().strip()
    expected = golden.read_text() if golden.exists() else ""
    if p is not None and p.returncode == 0 and output == expected:
        return "pass", ""
    bad.write_text(output)
    diff = "".join(difflib.unified_diff(expected.splitlines(True), output.splitlines(True),
                                        str(golden.relative_to(SUITE)), str(bad)))
    why = f"exit status {p.returncode}" if p is not None and p.returncode else "output mismatch"
    return "fail", f"{why} (see {bad}, {full})\n{diff}"


def main() -> int:
    ap = argparse.ArgumentParser(prog="check", description=__doc__.splitlines()[0])
    ap.add_argument("-g", dest="groups", action="append", default=[], help="run this group")
    ap.add_argument("-x", dest="excludes", action="append", default=[], help="exclude this group")
    ap.add_argument("-n", dest="dry", action="store_true", help="list the tests, run nothing")
    ap.add_argument("-v", dest="verbose", action="store_true")
    ap.add_argument("tests", nargs="*")
    args = ap.parse_args()
    tests = discover()
    chosen = select(tests, args.groups, args.excludes, args.tests)
    if args.dry:
        for t in chosen:
            print(f"{t}  [{' '.join(tests[t])}]")
        return 0
    env = load_config(dict(os.environ))
    results = Path(env.get("RESULT_BASE", SUITE / "results"))
    counts = {"pass": 0, "fail": 0, "notrun": 0}
    failed = []
    start = time.time()
    for t in chosen:
        t0 = time.time()
        state, detail = run_test(t, env, results, args.verbose)
        counts[state] += 1
        took = f"{time.time() - t0:.0f}s"
        if state == "pass":
            print(f"{t:<16} {took}")
        elif state == "notrun":
            print(f"{t:<16} [not run] {detail}")
        else:
            failed.append(t)
            print(f"{t:<16} - {detail}")
        sys.stdout.flush()
    print(f"Ran: {' '.join(t for t in chosen)}")
    if counts["notrun"]:
        print(f"Not run: {counts['notrun']}")
    if failed:
        print(f"Failures: {' '.join(failed)}")
    print(f"Failed {len(failed)} of {len(chosen) - counts['notrun']} tests in {time.time() - start:.0f}s")
    print(f"{counts['pass']} passed, {counts['fail']} failed, {counts['notrun']} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
