#!/bin/sh
# The daxfs + dmemu demo on its built-in default: the 2018 dm-devel scenario end to end.
# A private dmemud state directory; a DAX-capable pmem namespace and a plain disk; a volume
# group, a logical volume with daxfs mounted on it with DAX; files written with shell tools;
# a snapshot taken while a writer is busy (Linux refuses this on DAX devices); the snapshot
# mounted and compared; the mixed DAX/non-DAX snapshot refused with a clear message and
# nothing half-made; then a clean teardown. Each command is printed before its output.
set -eu
if [ "$(id -u)" != 0 ] && ! { [ -r /dev/fuse ] && [ -w /dev/fuse ]; }; then
    echo "demo: $(id -un) cannot open /dev/fuse ($(stat -c %A /dev/fuse 2>/dev/null)); mounts by users other than root need it crw-rw-rw- (chmod 666 /dev/fuse, as udev sets it on Debian), or run the demo as root" >&2
    exit 1
fi
top=$(cd "$(dirname "$0")/.." && pwd)
PATH="$top/tools:$PATH"
DMEMU_ROOT=${DMEMU_ROOT:-$(mktemp -d /tmp/daxfs-demo.XXXXXX)}
export PATH DMEMU_ROOT
mnt=$DMEMU_ROOT/mnt
writer=

run() {
    printf '\n$ %s\n' "$*"
    "$@"
}
# mount(8) mounts only for root; another user mounts with the daxfs command itself, which
# goes through the setuid fusermount3 as every FUSE filesystem does, and unmounts with it.
if [ "$(id -u)" = 0 ]; then
    mount_daxfs() { run mount -t fuse.daxfs -o "$1" "$2" "$3"; }
    umount_daxfs() { run umount "$1"; }
else
    mount_daxfs() { run daxfs "$2" "$3" -o "$1"; }
    umount_daxfs() { run fusermount3 -u "$1"; }
fi
cleanup() {
    [ -n "$writer" ] && kill "$writer" 2>/dev/null
    for m in "$mnt/lv0" "$mnt/snap0"; do
        mountpoint -q "$m" 2>/dev/null && fusermount3 -u -z "$m"
    done
    dmemud stop --force >/dev/null 2>&1 || true
    case "$DMEMU_ROOT" in /tmp/daxfs-demo.*) rm -rf "$DMEMU_ROOT" ;; esac
}
trap cleanup EXIT INT TERM

echo "# dmemu state directory: $DMEMU_ROOT (dmemud starts on first use)"
echo "# 1. Hardware: a DAX-capable pmem namespace and a plain disk"
run ndctl create-namespace --size 512M
run dmemu disk create --size 64M
run dmemu lsblk

echo
echo "# 2. The volume group of the 2018 report, and a logical volume on the pmem"
run vgcreate -f vg0 /dev/pmem0 /dev/disk0
run lvcreate -L 128M -n lv0 vg0 /dev/pmem0
run lvs -o lv_name,vg_name,lv_attr,lv_size,devices vg0
run dmsetup table

echo
echo "# 3. daxfs on it, mounted with DAX, and files written with ordinary tools"
mkdir -p "$mnt/lv0" "$mnt/snap0"
run mkfs.daxfs -L demo /dev/vg0/lv0
mount_daxfs dax=always /dev/vg0/lv0 "$mnt/lv0"
run cp -a "$top/dmemu" "$top/docs" "$mnt/lv0/"
run df -h "$mnt/lv0"
run xfs_io -c "statx -r" "$mnt/lv0/docs/design.md"
run getfattr -n user.daxfs.dax_effective "$mnt/lv0/docs/design.md"

echo
echo "# 4. A snapshot while a writer is busy on the mounted DAX volume"
( i=0; while [ $i -lt 400 ]; do
      dd if=/dev/urandom of="$mnt/lv0/busy" bs=4k count=1 seek=$i conv=notrunc oflag=sync 2>/dev/null
      i=$((i + 1))
  done ) &
writer=$!
run lvcreate -s -L 32M -n snap0 vg0/lv0 /dev/pmem0
wait "$writer"; writer=
run lvs vg0
run dmsetup ls --tree

echo
echo "# 5. The snapshot mounted read-only beside the origin, and compared"
mount_daxfs ro,dax=always /dev/vg0/snap0 "$mnt/snap0"
run diff -r "$mnt/lv0/dmemu" "$mnt/snap0/dmemu"
echo "identical: the files copied before the snapshot"
run ls -l "$mnt/lv0/busy" "$mnt/snap0/busy"
size=$(stat -c %s "$mnt/snap0/busy")
run cmp -n "$size" "$mnt/lv0/busy" "$mnt/snap0/busy" || true
echo "the snapshot's busy file is the origin's as it was when the snapshot was taken"
run dd if=/dev/zero of="$mnt/lv0/after-snapshot" bs=1M count=8 conv=fsync
run lvs vg0

echo
echo "# 6. A snapshot whose COW would sit on the non-DAX disk is refused, and nothing changes"
run lvcreate -s -L 8M -n snap1 vg0/lv0 /dev/disk0 || true
run lvs vg0
run dmsetup ls

echo
echo "# 7. Teardown"
umount_daxfs "$mnt/snap0"
umount_daxfs "$mnt/lv0"
run lvremove -f vg0/snap0
run lvremove -f vg0/lv0
run vgremove vg0
run pvremove /dev/pmem0 /dev/disk0
run dmsetup ls
