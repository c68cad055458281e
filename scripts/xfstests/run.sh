#!/bin/sh
# Run fstests (xfstests) with FSTYP=fuse against daxfs from this checkout; see docs/fstests.md.
#   FSTESTS=/path/to/built/xfstests scripts/xfstests/run.sh generic/401 generic/634 ...
# Everything happens in a private mount namespace with a private dmemud (its own
# DMEMU_ROOT), so other users' mounts, devices and daemons are never touched: there the
# mount helper /sbin/mount.fuse.daxfs (set up by scripts/setup.sh, pointing at whichever
# checkout installed it) is covered by ./mount.fuse.daxfs, which runs this checkout's.
set -eu
here=$(dirname "$(readlink -f "$0")")
: "${FSTESTS:?set FSTESTS to a built xfstests tree (outside this repository)}"
DAXFS_TREE=$(dirname "$(dirname "$here")")
export DAXFS_TREE
export DMEMU_ROOT="${DMEMU_ROOT:-/var/tmp/daxfs-xfstests/dmemu}"
# after the system directories: fstests needs xfsprogs' xfs_io, ours only speaks DAX flags
export PATH="$PATH:$DAXFS_TREE/tools"
if [ "${DAXFS_XFSTESTS_NS:-}" != 1 ]; then
    exec env DAXFS_XFSTESTS_NS=1 unshare -m --propagation private "$0" "$@"
fi
helper=$(readlink -f /sbin/mount.fuse.daxfs) || {
    echo "run.sh: /sbin/mount.fuse.daxfs is missing; run scripts/setup.sh first" >&2; exit 1; }
# Every FUSE mount that existed when this namespace was made is here as a copy: fstests
# would take another dmemud's /dev/pmem0 for ours, and a copy keeps a FUSE superblock, and
# with it that mount's daemon, alive after its owner unmounts it, for as long as this run
# lasts. Detach them all, in this namespace only.
findmnt -rn -t fuse,fuseblk -o TARGET | sort -r | while read -r t; do umount -l "$t" || true; done
mount --bind "$here/mount.fuse.daxfs" "$helper"
mkdir -p /mnt/fst-test /mnt/fst-scratch "$DMEMU_ROOT"
if ! ndctl list 2>/dev/null | grep -q pmem1; then
    ndctl create-namespace --size 1G >/dev/null
    ndctl create-namespace --size 1G >/dev/null
fi
mkfs.daxfs -f /dev/pmem0 >/dev/null
mkfs.daxfs -f /dev/pmem1 >/dev/null
cp "$here/local.config" "$FSTESTS/local.config"

# however ./check ends (a signal, a timeout), unmount its file systems, which ends their
# daemons, then stop the private dmemud, which refuses until they have let go
cleanup() {
    for d in /mnt/fst-test /mnt/fst-scratch; do
        if mountpoint -q "$d"; then umount "$d" || umount -l "$d" || true; fi
    done
    for i in $(seq 30); do dmemud stop >/dev/null 2>&1 && break; sleep 1; done
}
trap cleanup EXIT
cd "$FSTESTS"
rc=0
# in the background, so that a signal to this script is acted on at once (a shell waiting
# for a foreground child defers its traps until the child ends)
./check "$@" &
check=$!
trap 'kill -TERM $check 2>/dev/null; wait $check; exit 143' TERM INT HUP
wait $check || rc=$?
exit $rc
