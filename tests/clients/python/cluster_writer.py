"""A cluster-aware writer for tests/cluster.rs: redis-py's RedisCluster started at the proxy's listen port, INCRing
keys spread over every slot until STOP_FILE exists.

Usage: cluster_writer.py SEED_PORT STOP_FILE
Prints "writing" once its first write is acknowledged, then at the end one JSON line: the INCRs acknowledged per key,
the errors, the redirections (MOVED or ASK) and the CLUSTERDOWN or TRYAGAIN replies it received (the client
handles those without the application seeing them), its longest write and every address it learned.
"""
import json
import os
import sys
import time

import redis.exceptions
from redis.cluster import RedisCluster

seed, stop = int(sys.argv[1]), sys.argv[2]

# Replies redis-py handles on its own, without the application seeing them, counted here: every MOVED or ASK
# (an AskError; MovedError is one), and every CLUSTERDOWN or TRYAGAIN, which it retries.
redirections = [0]
retried = [0]


def counting(error_class, counter):
    init = error_class.__init__

    def counted(self, *args, **kwargs):
        counter[0] += 1
        init(self, *args, **kwargs)

    error_class.__init__ = counted


counting(redis.exceptions.AskError, redirections)
counting(redis.exceptions.ClusterDownError, retried)
counting(redis.exceptions.TryAgainError, retried)

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
    "retried": retried[0],
    "longest_ms": longest * 1000,
    "learned": learned,
}))
