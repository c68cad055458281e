"""What every command shares: one-line errors, exit codes, logging, running trio.

A DmemuError (or an OSError from the layers below) becomes one line on stderr,
``prog: message``, and a non-zero exit status; a traceback always means a bug.
"""
import argparse
import logging
import os
import sys

import trio

from ..errors import DmemuError

EXIT_FAILURE = 1
EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its usage errors kept to one line plus a hint."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: {message}; see '{self.prog} --help'\n")


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if not verbose else (logging.INFO if verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(name)s: %(message)s")


def fail(prog: str, message: str, code: int = EXIT_FAILURE) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return code


def run(prog: str, fn, *args) -> int:
    """trio.run(fn, *args) with user errors turned into one line and an exit status."""
    try:
        result = trio.run(fn, *args)
        return 0 if result is None else int(result)
    except DmemuError as e:
        return fail(prog, e.message)
    except OSError as e:
        return fail(prog, e.strerror if e.filename is None else f"{e.filename}: {e.strerror}")
    except KeyboardInterrupt:
        return 130


def command_main(default_prog: str, build_parser, body, argv=None) -> int:
    """The whole main() of an async command: parse, set up logging, run ``body(args)``."""
    prog = os.path.basename(sys.argv[0]) or default_prog
    args = build_parser(prog).parse_args(argv)
    setup_logging(int(getattr(args, "verbose", 0) or 0))
    return run(prog, body, args)
