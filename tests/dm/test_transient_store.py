"""The transient (N) store: allocation from chunk 0, Linux's usage numbers, no I/O."""
import errno

import pytest

from dmemu.dm.errors import ExceptionStoreError, ExceptionStoreFull
from dmemu.dm.exception_store import Completion, Usage
from dmemu.dm.status import snapshot_status_text
from dmemu.dm.transient import TransientStore


def test_allocates_from_chunk_0_and_reports_sectors_handed_out(cow4m):
    store = TransientStore(cow4m, 16)
    assert store.read_metadata() == (True, [], [])
    assert snapshot_status_text(store.usage()) == "0/8192 0"
    news = []
    for old in (100, 5, 7):
        new = store.prepare_exception(old)
        assert store.commit_exception(old, new) == [Completion(old, new, True)]
        news.append(new)
    assert news == [0, 1, 2]
    assert store.usage() == Usage(48, 8192, 0)
    assert store.table_text() == "N 16"
    assert cow4m.log == []                            # nothing ever reaches the device


def test_full_after_exactly_the_device(cow4m):
    store = TransientStore(cow4m, 8)
    store.read_metadata()
    for _ in range(1024):
        store.prepare_exception(0)
    with pytest.raises(ExceptionStoreFull) as info:
        store.prepare_exception(0)
    assert info.value.errno == errno.ENOSPC
    assert snapshot_status_text(store.usage()) == "8192/8192 0"


def test_chunk_size_0_cannot_be_used(cow4m):
    with pytest.raises(ExceptionStoreError) as info:
        TransientStore(cow4m, 0).read_metadata()
    assert (info.value.errno, info.value.message) == (errno.EINVAL, "Chunk size not set")


def test_failed_copy_is_reported(cow4m):
    store = TransientStore(cow4m, 8)
    store.read_metadata()
    new = store.prepare_exception(3)
    assert store.commit_exception(3, new, valid=False) == [Completion(3, new, False)]
