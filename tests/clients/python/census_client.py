"""An application's client for tests/readiness.rs: redis-py as it connects by default (it names its library with
CLIENT SETINFO), with a client name, sending a few commands through the proxy.

Usage: census_client.py PROXY_PORT
Prints "ok" and redis-py's version when every command got its answer.
"""
import sys

import redis

r = redis.Redis(port=int(sys.argv[1]), protocol=2, client_name="billing")
for i in range(5):
    r.set(f"py:{i}", i)
assert r.get("py:4") == b"4"
assert r.hgetall("py:none") == {}
print(redis.__version__)
print("ok")
