"""dmemud against hostile clients: no frame kills it, every request is answered.

The cases the issue found first, one by one, then a brief run of the frame fuzzer (the long
run is ``scripts/fuzz frames -n 1000``).
"""
import json

import pytest

from scripts.fuzzing import frames
from scripts.fuzzing.common import alive, daemon_pid
from tests.helpers import ok


@pytest.fixture
def daemon(dmemu_root):
    ok("ndctl", "create-namespace", "-s", "4M", "-a", "4K")
    return dmemu_root


def _send(root, body: bytes, payload: bytes = b"", owed: int | None = None):
    """Send one frame and a status after it; the other replies (until the status's and the
    one ``owed``, which may come in either order: requests run concurrently) and whether
    the connection stayed open."""
    conn = frames.Conn(str(root / "dmemud.sock"))
    try:
        conn.send(frames._frame(body, payload))
        try:
            conn.send(frames._frame(json.dumps({"id": frames.SENTINEL, "op": "status"}).encode()))
        except BrokenPipeError:
            pass        # it closed already: what it said before is still to be read
        replies, sentinel = [], False
        while not sentinel or (owed is not None and all(r.get("id") != owed for r in replies)):
            obj = conn.read()
            if obj is None:
                return replies, False
            if obj.get("id") == frames.SENTINEL:
                sentinel = True
            else:
                replies.append(obj)
        return replies, True
    finally:
        conn.close()


def _alive_and_serving(root):
    assert alive(daemon_pid(root))
    conn = frames.Conn(str(root / "dmemud.sock"))
    try:
        assert "pid" in conn.call("status", 7)["ok"]
    finally:
        conn.close()


@pytest.mark.parametrize("body", ['[]', '1', '"op"', 'null', '[{"op":"status","id":1}]',
                                  '{"op":', '\udcff', '[' * 100000 + ']' * 100000,
                                  '{"id":1,"op":"list","kind":' + '[' * 5000 + ']' * 5000 + '}'])
def test_a_frame_that_is_not_an_object_is_refused_and_the_connection_closed(daemon, body):
    replies, still_open = _send(daemon, body.encode(errors="surrogateescape"))
    assert not still_open
    assert replies and "bad frame" in replies[0]["error"]["message"], replies
    _alive_and_serving(daemon)


@pytest.mark.parametrize("body, what", [
    ('{"id":1,"op":123}', "op must be a string"),
    ('{"id":1,"op":null}', "op must be a string"),
    ('{"id":1,"op":"op_status"}', "unknown operation"),
    ('{"id":1,"op":"bio","handle":1,"bio":"read","sector":0,"nbytes":-4096}', "nbytes"),
    ('{"id":1,"op":"inject_error","device":"pmem0","sector":1e400,"count":1}', "sector must be an integer"),
    ('{"id":1,"op":"open","device":["pmem0"]}', "device must be a string"),
    ('{"id":1,"op":"list","kind":[["x"]]}', "kind must be a string"),
    ('{"id":1,"op":"status","extra":' + '[' * 10 + ']' * 10 + '}', "nested too deeply"),
    ('{"id":1,"op":"dm_message","name":"x","words":[1,2]}', "words must be a list of strings"),
    ('{"id":1,"op":"resolve","handle":1,"sector":0,"nr":18446744073709551616}', "nr"),
])
def test_a_bad_field_gets_an_error_naming_it(daemon, body, what):
    replies, still_open = _send(daemon, body.encode(), owed=1)
    assert still_open       # a well-framed request with a bad field keeps its connection
    assert len(replies) == 1 and replies[0]["id"] == 1, replies
    err = replies[0]["error"]
    assert err["errno"] == 22 and what in err["message"], err
    assert "internal error" not in err["message"]
    _alive_and_serving(daemon)


@pytest.mark.parametrize("body", ['{"ack":[1]}', '{"ack":"x"}', '{"ack":null}', '{"ack":99}',
                                  '{"ack":1.5,"error":7}'])
def test_a_bad_acknowledgement_does_not_kill_the_daemon(daemon, body):
    replies, still_open = _send(daemon, body.encode())
    assert still_open or (replies and "bad frame" in replies[0]["error"]["message"])
    _alive_and_serving(daemon)


def test_a_frame_longer_than_the_limit_is_refused(daemon):
    conn = frames.Conn(str(daemon / "dmemud.sock"))
    try:
        conn.send(frames._frame(b"{}", jlen=(1 << 32) - 1))
        reply = conn.read()
        assert reply is not None and "too large" in reply["error"]["message"]
        assert conn.read() is None
    finally:
        conn.close()
    _alive_and_serving(daemon)


def test_the_frame_fuzzer_briefly(dmemu_root):
    result = frames.run(120, 20261129, dmemu_root)
    assert result.trials == 120
    assert result.failed == 0, result.summary()
