"""A cluster-aware writer for tests/cluster.rs: redis-py's RedisCluster started at the proxy's listen port, INCRing
keys spread over every slot until STOP_FILE exists.

Usage: cluster_writer.py SEED_PORT STOP_FILE
Prints "writing" once its first write is acknowledged, then at the end one JSON line: the INCRs acknowledged per key,
the errors, the redirections (MOVED or ASK) it received, its longest write and every address it learned.
"""
import json
import os
import sys
import time

import redis.exceptions
from redis.cluster import RedisCluster

seed, stop = int(sys.argv[1]), sys.argv[2]

# Every MOVED or ASK reply becomes an AskError (MovedError is one) that redis-py follows on its own: counted here.
redirections = [0]
ask_init = redis.exceptions.AskError.__init__


def counted(self, *args, **kwargs):
    redirections[0] += 1
    ask_init(self, *args, **kwargs)


redis.exceptions.AskError.__init__ = counted

rc = RedisCluster(host="127.0.0.1", port=seed)
keys = [f"pyw:{i}" for i in range(64)]
acked = {key: 0 for key in keys}
errors = []
longest = 0.0
i = 0
while not os.path.exists(stop):
    key = keys[i % len(keys)]
    i += 1
    started = time.monotonic()
    try:
        rc.incr(key)
        acked[key] += 1
    except Exception as error:  # an INCR whose outcome the client cannot know
        errors.append(repr(error))
    longest = max(longest, time.monotonic() - started)
    if i == 1:
        print("writing", flush=True)
learned = sorted({node.name for node in rc.get_nodes()})
print(json.dumps({
    "acked": acked,
    "errors": len(errors),
    "first_errors": errors[:3],
    "redirections": redirections[0],
    "longest_ms": longest * 1000,
    "learned": learned,
}))
