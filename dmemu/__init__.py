"""dmemu: an emulated kernel block layer for persistent memory.

dmemud (the daemon) owns pmem namespaces, plain disks and device-mapper devices; the
client API in dmemu.client lets other processes open them, submit bios and map them
through direct_access.
"""
