"""Fixtures for the device-mapper unit tests: synchronous fake devices (see dmfake)."""
import pytest

from tests.dm.dmfake import FakeBlockDevice


@pytest.fixture
def cow4m():
    """A 4 MiB COW device (8192 sectors), the size of the reference's status example."""
    return FakeBlockDevice(8192, name="pmem1", devno="259:1")


@pytest.fixture
def origin():
    return FakeBlockDevice(16384, name="pmem0", devno="259:0")
