"""The fuzzers of scripts/fuzz, briefly: LVM metadata corruptions, bad command lines and
damaged daxfs images.

(The frame fuzzer's brief run is in test_hostile_frames.py.) The long runs, whose numbers
docs/robustness.md gives, are ``scripts/fuzz lvm -n 500``, ``scripts/fuzz cli -n 500`` and
``scripts/fuzz image -n 1000``.
A failure prints the first case of each kind, reproducible from the seed.
"""
from scripts.fuzzing import cli, image, lvm

SEED = 20261129


def test_lvm_metadata_fuzzer_briefly(dmemu_root):
    result = lvm.run(12, SEED, dmemu_root)
    assert result.trials == 12
    assert result.failed == 0, result.summary()


def test_command_line_fuzzer_briefly(dmemu_root):
    result = cli.run(12, SEED, dmemu_root)
    assert result.trials == 12
    assert result.failed == 0, result.summary()


def test_damaged_image_fuzzer_briefly(tmp_path):
    result = image.run(24, SEED, tmp_path)
    assert result.trials == 24
    assert result.failed == 0, result.summary()
