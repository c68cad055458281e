"""Fixtures for the lvm tools: a daemon with a 256 MiB DAX namespace and a 64 MiB disk."""
import pytest

from tests.helpers import ok


@pytest.fixture
def pmem(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "256M")      # /dev/pmem0, DAX-capable
    ok("dmemu", "disk", "create", "-s", "64M")          # /dev/disk0, not DAX-capable
    return dmemu_root
