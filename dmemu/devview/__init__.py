"""The device view: every device of dmemud as a file, for ordinary tools (dd, cmp, losetup).

``names`` says which files and symlinks the devices make (as udev and LVM name them),
``tree`` keeps them as inodes that follow dmemud's changes, ``blockio`` is the byte-granular
block-device I/O of one open file, ``fs`` the pyfuse3 Operations that translate, ``mount``
the process that runs it all, and ``control`` starts and stops that process.
"""
