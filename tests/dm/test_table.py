"""Table text parsing: value objects, and one test per error message."""
import errno

import pytest

from dmemu.dm.errors import DMError, TableError
from dmemu.dm.table import TableLine, format_table_line, parse_table, table_length


def test_parse_multiline_with_comments_and_blanks():
    text = """
    # the LVM layout of snapshot.rst, chunk 16
    0 2097152 snapshot 254:11 254:12 P 16

    2097152 1024 linear pmem0 384   # trailing words are arguments
    """
    lines = parse_table(text)
    assert lines == [
        TableLine(3, 0, 2097152, "snapshot", ("254:11", "254:12", "P", "16")),
        TableLine(5, 2097152, 1024, "linear", ("pmem0", "384", "#", "trailing", "words",
                                               "are", "arguments")),
    ]
    assert table_length(lines) == 2097152 + 1024
    assert lines[1].end == 2098176


def test_empty_table_parses_to_nothing():
    assert parse_table("\n# nothing\n  \n") == []
    assert table_length([]) == 0


def test_target_without_args():
    (line,) = parse_table("0 8 zero")
    assert line.args == () and line.text == "0 8 zero"


@pytest.mark.parametrize("text, message", [
    ("0 1024 linear pmem0 0\n1024 0 linear pmem0 0",
     "line 2: 1024 0 linear pmem0 0: zero-length target"),
    ("8 1024 zero",
     "line 1: 8 1024 zero: Gap in table: the first line must start at sector 0"),
    ("0 1024 zero\n# gap follows\n2048 8 zero",
     "line 3: 2048 8 zero: Gap in table: sectors 1024-2047 are not mapped "
     "(line 1 ends at sector 1024)"),
    ("0 1024 zero\n512 8 zero",
     "line 2: 512 8 zero: overlapping targets: starts at sector 512, inside line 1 "
     "(sectors 0-1023)"),
    ("0 1024 striped 2 8 a 0 b 0",
     "line 1: 0 1024 striped 2 8 a 0 b 0: striped: unknown target type"),
    ("x 1024 zero", "line 1: x 1024 zero: invalid start 'x': expected a number of sectors"),
    ("0 1k zero", "line 1: 0 1k zero: invalid length '1k': expected a number of sectors"),
    ("0 -8 zero", "line 1: 0 -8 zero: invalid length '-8': expected a number of sectors"),
    ("0 1024", "line 1: 0 1024: missing target type"),
    ("\n\n0", "line 3: 0: missing length and target type"),
    ("0 18446744073709551616 zero",
     "line 1: 0 18446744073709551616 zero: length 18446744073709551616 is beyond the "
     "largest sector number"),
    ("0 18446744073709551615 zero\n18446744073709551615 2 zero",
     "line 2: 18446744073709551615 2 zero: ends beyond the largest sector number"),
])
def test_errors_name_the_line_and_the_problem(text, message):
    with pytest.raises(TableError) as info:
        parse_table(text)
    assert info.value.message == message
    assert str(info.value) == message
    assert info.value.errno == errno.EINVAL
    assert isinstance(info.value, DMError)


def test_daemon_may_register_its_own_targets():
    assert parse_table("0 8 thin x", target_types={"thin"})[0].target_name == "thin"
    with pytest.raises(TableError, match="linear: unknown target type"):
        parse_table("0 8 linear pmem0 0", target_types={"thin"})


@pytest.mark.parametrize("args, expected", [
    ((0, 2097152, "linear", "8:19 384"), "0 2097152 linear 8:19 384"),
    ((0, 8, "zero", ""), "0 8 zero "),          # libdm keeps the space
    ((0, 2097152, "snapshot", "397896/2097152 1560"), "0 2097152 snapshot 397896/2097152 1560"),
])
def test_format_table_line(args, expected):
    assert format_table_line(*args) == expected
