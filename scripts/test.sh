#!/bin/sh
# The whole test suite: pytest over every layer (real dmemud processes, real FUSE mounts),
# then the quick group of the fstests-style scripts.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
.venv/bin/python -m pytest "$@"
scripts/check -g quick
