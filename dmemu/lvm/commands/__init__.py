"""What each lvm command does, given its parsed options and a connection to dmemud.

One module per object, as lvm2's tools/ has a file per command family: pv.py, vg.py, lv.py,
snapshot.py and merge.py (snapshots, lvconvert --merge), report.py (pvs, vgs, lvs); what they share is in
common.py (voice, scan) and args.py (option values). dmemu.cli.lvm parses the command line
and calls the function named like the command.
"""
from .lv import lvchange, lvcreate, lvextend, lvremove, lvrename
from .pv import pvcreate, pvremove
from .report import lvs, pvs, vgs
from .merge import lvconvert, lvpoll
from .vg import vgchange, vgck, vgcreate, vgextend, vgreduce, vgremove

__all__ = ["lvchange", "lvconvert", "lvcreate", "lvextend", "lvpoll", "lvremove", "lvrename", "lvs",
           "pvcreate", "pvremove", "pvs", "vgchange", "vgck", "vgcreate", "vgextend", "vgreduce",
           "vgremove", "vgs"]
