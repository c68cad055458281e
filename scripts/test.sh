#!/bin/sh
# The whole test suite: pytest over every layer (real dmemud processes, real FUSE mounts).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
exec .venv/bin/python -m pytest "$@"
