"""redis-py through the proxy, driven by tests/resp3.rs.

Usage: resp3_session.py PROXY_PORT ADMIN_PORT allow|pinned
allow:  a RESP3 session gets maps as dicts and CLIENT TRACKING invalidations as pushes, and keeps both across a
        handover it triggers on the admin port (a flush-all invalidation arrives when it moves).
pinned: HELLO 3 is refused as Redis 5.0 refuses it; redis-py does not fall back to RESP2 by itself (protocol=3, its default since 8.0,
        fails to connect), and protocol=2 works.
Prints "ok" when every check holds.
"""
import json
import sys
import time
import urllib.request

import redis

port, admin, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]


def handover():
    request = urllib.request.Request(f"http://127.0.0.1:{admin}/handover", data=b"{}", method="POST")
    urllib.request.urlopen(request, timeout=10).read()
    for _ in range(600):
        status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=10))
        if status["handover"] is None and status["last_handover"] is not None:
            assert status["last_handover"]["outcome"] == "switched", status["last_handover"]
            return
        time.sleep(0.05)
    raise AssertionError("handover did not finish")


if mode == "allow":
    r = redis.Redis(port=port, protocol=3)
    r.hset("py:h", mapping={"a": "1", "b": "2"})
    assert r.hgetall("py:h") == {b"a": b"1", b"b": b"2"}
    invalidations = []
    tracked = redis.Connection(port=port, protocol=3)
    tracked.connect()
    tracked._parser.set_invalidation_push_handler(invalidations.append)
    tracked.send_command("CLIENT", "TRACKING", "ON")
    assert tracked.read_response() == b"OK"
    tracked.send_command("GET", "py:k")
    tracked.read_response()
    writer = redis.Redis(port=port, protocol=2)
    writer.set("py:k", "1")
    tracked.send_command("PING")
    assert tracked.read_response() == b"PONG"
    assert invalidations == [[b"invalidate", [b"py:k"]]], invalidations

    handover()

    invalidations.clear()
    tracked.send_command("PING")
    assert tracked.read_response() == b"PONG"
    assert invalidations == [[b"invalidate", None]], f"flush-all invalidation after the move: {invalidations}"
    tracked.send_command("HELLO")
    hello = tracked.read_response()
    assert hello[b"proto"] == 3 and hello[b"version"] == b"7.0.15", hello
    tracked.send_command("GET", "py:k")
    assert tracked.read_response() == b"1"
    invalidations.clear()
    writer.set("py:k", "2")
    tracked.send_command("PING")
    assert tracked.read_response() == b"PONG"
    assert invalidations == [[b"invalidate", [b"py:k"]]], f"tracking works on NEW: {invalidations}"
    assert r.hgetall("py:h") == {b"a": b"1", b"b": b"2"}, "still RESP3 maps"
    assert r.execute_command("HELLO")[b"version"] == b"7.0.15"
else:
    try:
        redis.Redis(port=port, protocol=3).ping()
        raise AssertionError("HELLO 3 should have been refused")
    except redis.ResponseError as error:
        assert "unknown command `HELLO`" in str(error), error
    r = redis.Redis(port=port, protocol=2)
    assert r.ping()
    r.hset("py:pinned", mapping={"a": "1"})
    assert r.hgetall("py:pinned") == {b"a": b"1"}
    hello = r.execute_command("HELLO", "2", "SETNAME", "pinned")
    assert dict(zip(hello[::2], hello[1::2]))[b"proto"] == 2, hello
    assert r.client_getname() in (b"pinned", "pinned")
print("ok")
