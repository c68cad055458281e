"""Device-mapper target types, registered by name as dm_register_target does."""
from .error import ErrorTarget
from .linear import LinearTarget
from .log_writes import LogWritesTarget
from .origin import OriginTarget
from .snapshot import SnapshotTarget
from .snapshot_merge import SnapshotMergeTarget
from .zero import ZeroTarget

TARGETS = {t.name: t for t in (LinearTarget, OriginTarget, SnapshotTarget, SnapshotMergeTarget,
                                ZeroTarget, ErrorTarget, LogWritesTarget)}
