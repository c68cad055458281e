#!/bin/sh
# Run fstests (xfstests) with FSTYP=fuse against daxfs from this checkout; see docs/fstests.md.
#   FSTESTS=/path/to/built/xfstests scripts/xfstests/run.sh generic/401 generic/634 ...
# With PASSTHROUGH_LL set to a built libfuse example/passthrough_ll, the same tests run the
# same way against it instead (over directories of PASSTHROUGH_ROOT), as the peer to compare.
# Results go to $RESULT_BASE (default $FSTESTS/results/daxfs or .../passthrough_ll), so
# runs of both can go on side by side in one fstests tree.
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
if [ -n "${PASSTHROUGH_LL:-}" ]; then
    fs=passthrough_ll
    PASSTHROUGH_LL=$(readlink -f "$PASSTHROUGH_LL")
    [ -x "$PASSTHROUGH_LL" ] || { echo "run.sh: PASSTHROUGH_LL: $PASSTHROUGH_LL is not an executable" >&2; exit 1; }
    export PASSTHROUGH_LL
    export PASSTHROUGH_ROOT="${PASSTHROUGH_ROOT:-/var/tmp/daxfs-xfstests/passthrough_ll}"
    export HOST_OPTIONS="$here/local.config.passthrough_ll"
else
    fs=daxfs
    export HOST_OPTIONS="$here/local.config"
    # after the system directories: fstests needs xfsprogs' xfs_io, ours only speaks DAX
    # flags. Not for passthrough_ll: a test looking for dmsetup would find ours there and
    # start a dmemud that nothing stops
    export PATH="$PATH:$DAXFS_TREE/tools"
fi
export RESULT_BASE="${RESULT_BASE:-$FSTESTS/results/$fs}"
if [ "${DAXFS_XFSTESTS_NS:-}" != 1 ]; then
    exec env DAXFS_XFSTESTS_NS=1 unshare -m --propagation private "$0" "$@"
fi
if [ $fs = daxfs ]; then
    helper=$(readlink -f /sbin/mount.fuse.daxfs) || {
        echo "run.sh: /sbin/mount.fuse.daxfs is missing; run scripts/setup.sh first" >&2; exit 1; }
    # without it the kernel masks modes that a default ACL should decide (generic/099 fails),
    # asks for security.capability before every write, and DAX files keep a page cache
    [ -f "$DAXFS_TREE/daxfs/native/libdaxfs-fusecaps.so" ] || {
        echo "run.sh: daxfs/native/libdaxfs-fusecaps.so is not built in $DAXFS_TREE; run scripts/setup.sh there first" >&2; exit 1; }
fi
# Every FUSE mount that existed when this namespace was made is here as a copy: fstests
# would take another dmemud's /dev/pmem0 for ours, and a copy keeps a FUSE superblock, and
# with it that mount's daemon, alive after its owner unmounts it, for as long as this run
# lasts. Detach them all, in this namespace only.
findmnt -rn -t fuse,fuseblk -o TARGET | sort -r | while read -r t; do umount -l "$t" || true; done
mkdir -p /mnt/fst-test /mnt/fst-scratch
if [ $fs = daxfs ]; then
    # Only when the system-wide helper is another checkout's: covering this checkout's own
    # tools/mount.fuse.daxfs with the wrapper that execs it would make it exec itself forever
    if [ "$helper" != "$(readlink -f "$DAXFS_TREE/tools/mount.fuse.daxfs")" ]; then
        mount --bind "$here/mount.fuse.daxfs" "$helper"
    fi
    mkdir -p "$DMEMU_ROOT"
    if ! ndctl list 2>/dev/null | grep -q pmem1; then
        ndctl create-namespace --size 1G >/dev/null
        ndctl create-namespace --size 1G >/dev/null
    fi
    mkfs.daxfs -f /dev/pmem0 >/dev/null
    mkfs.daxfs -f /dev/pmem1 >/dev/null
else
    # /sbin has no mount.fuse.passthrough_ll: lay a directory holding it over /usr/sbin
    # (/sbin links there), in this namespace only
    bin=$(mktemp -d /tmp/xfstests-helper.XXXXXX)
    cp "$here/mount.fuse.passthrough_ll" "$bin/"
    mount -t overlay overlay -o "lowerdir=$bin:/usr/sbin" /usr/sbin
    # fresh, empty file systems, as mkfs gives daxfs
    rm -rf "$PASSTHROUGH_ROOT/test" "$PASSTHROUGH_ROOT/scratch"
    mkdir -p "$PASSTHROUGH_ROOT/test" "$PASSTHROUGH_ROOT/scratch"
fi
mkdir -p "$RESULT_BASE"

# however ./check ends (a signal, a timeout), unmount its file systems, which ends their
# daemons, then stop the private dmemud, which refuses until they have let go
cleanup() {
    for d in /mnt/fst-test /mnt/fst-scratch; do
        if mountpoint -q "$d"; then umount "$d" || umount -l "$d" || true; fi
    done
    if [ $fs != daxfs ]; then rm -rf "$bin"; return 0; fi
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
