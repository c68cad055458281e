"""The target-specific text of `dmsetup table` and `dmsetup status`, as Linux prints it.

Devices always print as ``major:minor`` whatever name the table was loaded with. Combine
with dmemu.dm.table.format_table_line for the full line.
"""
from .exception_store import Usage


def linear_table_text(devno: str, offset: int) -> str:
    return f"{devno} {offset}"


def origin_table_text(devno: str) -> str:
    return devno


def error_table_text(devno: str | None = None, offset: int = 0) -> str:
    return "" if devno is None else f"{devno} {offset}"


def snapshot_table_text(origin_devno: str, cow_devno: str, store_text: str,
                        features=()) -> str:
    """``<origin> <cow> P|PO|N <chunk> [n feat...]``; store_text is the store's
    ``table_text()`` (its chunk size is the one in effect, e.g. from the header)."""
    text = f"{origin_devno} {cow_devno} {store_text}"
    features = list(features)
    if features:
        text += f" {len(features)} " + " ".join(features)
    return text


def snapshot_status_text(usage: Usage | None, *, valid: bool = True,
                         merge_failed: bool = False, overflow: bool = False) -> str:
    """snapshot_status(STATUSTYPE_INFO): the first state that applies, in the kernel's
    order: Invalid, Merge failed, Overflow, then ``allocated/total metadata``."""
    if not valid:
        return "Invalid"
    if merge_failed:
        return "Merge failed"
    if overflow:
        return "Overflow"
    if usage is None:
        return "Unknown"
    return f"{usage.sectors_allocated}/{usage.total_sectors} {usage.metadata_sectors}"
