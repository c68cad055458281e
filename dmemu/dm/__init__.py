"""The pure, kernel-faithful pieces of dmemu's device-mapper emulation.

Nothing here owns a device or does I/O scheduling: dmemud's core resolves device names,
keeps tables live and inactive, and calls into these modules to parse tables, validate
target constructor arguments, format `dmsetup table`/`status` text and run the snapshot
exception stores (persistent `P`/`PO` in Linux's on-disk layout, transient `N`).

Modules:
    errors           DMError (errno + kernel-voiced message) and its subclasses
    table            table text -> TableLine values; dmsetup's line format
    target_args      constructor arguments of linear, snapshot-origin, snapshot, zero, error
    table_type       BIO_BASED vs DAX_BIO_BASED, and the reload rule with its explanation
    exception_store  the store interface, chunk-size validation, the P/PO/N factory
    persistent       the P/PO store in Linux's on-disk format
    transient        the N store
    chunk_io         splitting bios at chunk boundaries, COW remapping
    status           the target text of `dmsetup table` and `dmsetup status`

Devices handed to the stores are synchronous objects with ``name``, ``devno``,
``nr_sectors``, ``logical_block_size``, ``dax_capable``, ``read(sector, nbytes)``,
``write(sector, data, *, fua=False, preflush=False)`` and ``flush()``; I/O errors are
``OSError(errno.EIO, ...)``. Sectors are 512 bytes, as in the kernel.
"""
