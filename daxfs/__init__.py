"""daxfs: a filesystem with the DAX semantics of ext4/XFS, served through FUSE."""
