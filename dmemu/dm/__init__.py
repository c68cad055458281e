"""dmemu's device-mapper emulation.

Modules:
    core             mapped devices, table slots, suspend/resume, the ioctls
    region           resolution of a device range down to the media (what leases are)
    cow              copy-on-write between an origin and its snapshots
    targets/         one module per target: linear, snapshot-origin, snapshot, zero, error,
                     log-writes
    replay           reading and replaying a log-writes log
    errors           DMError (errno + kernel-voiced message) and its subclasses
    table            table text -> TableLine values; dmsetup's line format
    target_args      constructor arguments of every target, in the kernel's words
    exception_store  the store interface, chunk-size validation, the P/PO/N factory
    persistent       the P/PO store in Linux's on-disk format
    transient        the N store
    status           the target text of `dmsetup table` and `dmsetup status`

Devices handed to the stores are synchronous objects with ``name``, ``devno``,
``nr_sectors``, ``logical_block_size``, ``dax_capable``, ``read(sector, nbytes)``,
``write(sector, data, *, fua=False, preflush=False)`` and ``flush()``; I/O errors are
``OSError(errno.EIO, ...)``. Sectors are 512 bytes, as in the kernel.
"""
