#!/bin/sh
# Install everything daxfs + dmemu need on a Debian 12 machine, as root, idempotently:
# the Debian packages FUSE and the pyfuse3 build need, a venv in the checkout, and the
# package in editable mode with its test extras. Safe to run any number of times.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

need=""
for pkg in fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv fio attr acl e2fsprogs; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need="$need $pkg"
done
# fuse3 needs /etc/fuse.conf's user_allow_other only for non-root users; nothing to do here.
if [ -n "$need" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup: missing Debian packages:$need; run this as root or install them first" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq $need >/dev/null
fi

# Debian's own python3 by default: every user can run it, so the tools work for non-root
# users too (an interpreter under /root, as version managers install them, would not).
if [ -n "${PYTHON:-}" ]; then py=$PYTHON
elif [ -x /usr/bin/python3 ]; then py=/usr/bin/python3
else py=python3
fi
home=$(dirname "$(command -v "$py")")
if [ -f .venv/pyvenv.cfg ] && ! grep -qx "home = $home" .venv/pyvenv.cfg; then
    echo "setup: .venv was made with another python; making it again with $py" >&2
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
fi
# Re-install only when setup.cfg changed since the last install, to stay quick when run twice.
stamp=.venv/.daxfs-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    touch "$stamp"
fi

# The mount helper lets `mount -t fuse.daxfs` and /etc/fstab lines find daxfs.
if [ -f tools/mount.fuse.daxfs ] && [ "$(id -u)" = 0 ]; then
    ln -sf "$top/tools/mount.fuse.daxfs" /sbin/mount.fuse.daxfs
fi

# The library through which the daxfs daemon asks the kernel for what pyfuse3 cannot:
# FUSE_DONT_MASK (POSIX default ACLs need the caller's mode unmasked),
# FUSE_HANDLE_KILLPRIV_V2 (no GETXATTR before every write) and FUSE_DIRECT_IO_ALLOW_MMAP
# (DAX files bypass the page cache and can still be mapped): tools/_run preloads it.
lib=daxfs/native/libdaxfs-fusecaps.so
if [ ! -f "$lib" ] || [ daxfs/native/fusecaps.c -nt "$lib" ]; then
    gcc -shared -fPIC -O2 -Wall -o "$lib" daxfs/native/fusecaps.c \
        $(pkg-config fuse3 --cflags --libs) -ldl
fi
