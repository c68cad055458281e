"""lvm-like volume management for dmemu: PVs, VGs, LVs and snapshots, on-disk as LVM2 does it.

The metadata lives on the PVs in LVM2's layout (label.py, mda.py) and text format
(metadata.py); the in-memory model and allocation are in vg.py; activation builds
device-mapper devices in dmemud with LVM's names and layering (activate.py); report.py
prints pvs/vgs/lvs. commands/ holds what each command does, a module per object;
dmemu.cli.lvm parses options.
"""
