"""The test suite: a package, so that tests/daxfs is tests.daxfs and never shadows the daxfs package."""
