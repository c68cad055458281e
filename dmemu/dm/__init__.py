"""The pure, kernel-faithful pieces of dmemu's device-mapper emulation.

Nothing here owns a device or does I/O scheduling: dmemud's core resolves device names,
keeps tables live and inactive, and calls into these modules to parse tables, validate
target constructor arguments, format `dmsetup table`/`status` text and run the snapshot
exception stores (persistent `P`/`PO` in Linux's on-disk layout, transient `N`).

Devices handed to the stores are synchronous objects with ``name``, ``devno``,
``nr_sectors``, ``logical_block_size``, ``dax_capable``, ``read(sector, nbytes)``,
``write(sector, data, *, fua=False, preflush=False)`` and ``flush()``; I/O errors are
``OSError(errno.EIO, ...)``. Sectors are 512 bytes, as in the kernel.
"""
