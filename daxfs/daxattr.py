"""The xattr interface to DAX state, since FUSE cannot carry the flag ioctls or statx bits.

- ``user.daxfs.dax``: the persistent per-inode DAX flag (FS_XFLAG_DAX), "1" or "0";
  settable on regular files and directories, inherited by new children at creation.
- ``user.daxfs.dax_effective``: read-only, "1" when the inode does its I/O through
  direct_access now (S_DAX, what statx would report as STATX_ATTR_DAX).
- ``user.daxfs.sync``: the synchronous mode, MAP_SYNC's guarantee through FUSE: "1" makes
  every write durable with its metadata on return; refused with EOPNOTSUPP on a file that
  is not DAX, as mmap(MAP_SYNC) is.
- ``user.daxfs.mount_dax`` (on the root): the dax= mount option in force.

These names are served by daxfs itself and never listed by listxattr.
"""
DAX_FLAG_XATTR = "user.daxfs.dax"
DAX_STATE_XATTR = "user.daxfs.dax_effective"
SYNC_XATTR = "user.daxfs.sync"
MOUNT_DAX_XATTR = "user.daxfs.mount_dax"

FS_XFLAG_DAX = 0x00008000         # include/uapi/linux/fs.h
STATX_ATTR_DAX = 0x00200000       # include/uapi/linux/stat.h (since 5.10)
STATX_ATTRIBUTES_MASK = 0x00203000   # what the VFS sets on FUSE files, measured on 6.18
