"""A cluster-aware application for tests/cluster.rs: redis-py's RedisCluster started at the proxy's listen port.

Usage: cluster_client.py SEED_PORT KEYS
Writes and reads KEYS keys spread over every slot, then a transaction on one slot (hash tags), Pub/Sub, a blocking
call and a RESP3 client; prints one JSON line with what it saw, every address it learned included.
"""
import json
import sys
import time

from redis.cluster import RedisCluster

seed, count = int(sys.argv[1]), int(sys.argv[2])
seen = {}

rc = RedisCluster(host="127.0.0.1", port=seed, protocol=2)
for i in range(count):
    rc.set(f"py:{i}", i)
seen["read_back"] = sum(1 for i in range(count) if rc.get(f"py:{i}") == str(i).encode())

pipe = rc.pipeline(transaction=True)
pipe.incr("{user:7}:visits")
pipe.rpush("{user:7}:log", "a", "b")
seen["multi"] = pipe.execute()
rc.mset_nonatomic({"{tag}a": "1", "{tag}b": "2"})
seen["hash_tags"] = [v.decode() for v in rc.mget("{tag}a", "{tag}b")]

subscriber = rc.pubsub()
subscriber.subscribe("news")
deadline = time.time() + 10
while time.time() < deadline:
    message = subscriber.get_message(timeout=0.5)
    if message and message["type"] == "subscribe":
        break
receivers = rc.publish("news", "hello")
seen["published_to"] = receivers
while time.time() < deadline:
    message = subscriber.get_message(timeout=0.5)
    if message and message["type"] == "message":
        seen["pubsub"] = message["data"].decode()
        break
subscriber.close()

rc.rpush("jobs", "job-1")
popped = rc.blpop(["jobs"], timeout=2)
seen["blpop"] = [p.decode() for p in popped] if popped else None

resp3 = RedisCluster(host="127.0.0.1", port=seed, protocol=3)
resp3.set("py3:key", "v3")
seen["resp3"] = resp3.get("py3:key").decode()

learned = set()
for client in (rc, resp3):
    learned.update(node.name for node in client.get_nodes())
seen["learned"] = sorted(learned)
print(json.dumps(seen))
