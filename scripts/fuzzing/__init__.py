"""Fuzzers for hostile input, run briefly by the test suite and at length by scripts/fuzz.

Each fuzzer is a module with ``run(trials, seed, workdir) -> Result``: it builds what it needs
in ``workdir`` (a private DMEMU_ROOT with a real dmemud), throws ``trials`` generated cases at
it, and counts the failures by kind. A run is reproducible from its seed. New fuzzers join by adding a module and a line to FUZZERS.
"""
import importlib

FUZZERS = {
    "frames": "malformed dmemud frames: the daemon stays alive and answers",
    "lvm": "corrupted LVM metadata with valid checksums: no traceback, no LV over a label",
    "cli": "bad command lines: one line on stderr, non-zero exit, no traceback",
    "image": "damaged daxfs images: fsck -y repairs in one pass and keeps intact files, "
             "a damaged mount overwrites nothing",
}


def load(name: str):
    return importlib.import_module(f"{__name__}.{name}")
