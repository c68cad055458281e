#!/bin/sh
# The whole test suite: pytest over every layer (real dmemud processes, real FUSE mounts)
# and the quick group of the fstests-style scripts, run side by side. Both parts always run
# and both are summed up at the end, whichever fails; the exit status is non-zero if either
# did. Extra arguments go to pytest (e.g. -k snapshot, or -n 0 to run in one process).
#
# pytest runs 4 workers on a 2-core machine: most of a test's time is spent waiting on
# other processes (dmemud, FUSE daemons), not computing, and every test has its own state
# directory, so they do not meet. Every test has a 300 s limit (setup.cfg).
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
start=$(date +%s)
checklog=$(mktemp /tmp/daxfs-check.XXXXXX)
pylog=$(mktemp /tmp/daxfs-pytest.XXXXXX)
trap 'rm -f "$checklog" "$pylog" "$pylog.rc"' EXIT

scripts/check -g quick >"$checklog" 2>&1 &
checkpid=$!

{ .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-4}" "$@"; echo $? >"$pylog.rc"; } | tee "$pylog"
pytest_rc=$(cat "$pylog.rc")

wait "$checkpid"
check_rc=$?
echo
echo "== scripts/check -g quick =="
cat "$checklog"

end=$(date +%s)
echo
echo "== summary ($(( (end - start) / 60 ))m$(( (end - start) % 60 ))s, load $(cut -d' ' -f1-3 /proc/loadavg)) =="
[ "$pytest_rc" = 0 ] && echo "pytest: passed" || echo "pytest: FAILED (exit status $pytest_rc)"
[ "$check_rc" = 0 ] && echo "scripts/check -g quick: passed" || echo "scripts/check -g quick: FAILED (exit status $check_rc)"
# One closing line for both parts, in the plain "N passed, N failed" form.
count() { grep -Eo "[0-9]+ $1" "$2" | tail -n 1 | cut -d' ' -f1; }
passed=$(( $(count passed "$pylog" || true) + $(count passed "$checklog" || true) + 0 ))
failed=$(( $(count failed "$pylog" || true) + $(count error "$pylog" || true) + $(count failed "$checklog" || true) + 0 ))
[ "$pytest_rc" = 0 ] && [ "$check_rc" = 0 ] || [ "$failed" -gt 0 ] || failed=1
echo "$passed passed, $failed failed"
[ "$pytest_rc" = 0 ] && [ "$check_rc" = 0 ]
