#!/usr/bin/env python3
"""The handover benchmark: OLD Redis 6.2 with 1,000,000 keys, NEW Redis 7.0, about 20,000 writes/s through
redis-handover from 20 connections, and one live handover in the middle.

Reports the full-sync time, the write pause, the longest time any client waited for a reply, the writes held,
and the error replies (which must be 0), and checks every acknowledged write on NEW afterwards.
Started by scripts/bench.sh --handover. Every process it starts is stopped when it ends.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import redis

from procs import free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))






class Writer(threading.Thread):
    """One connection writing SET w:<id>:<seq> and INCR c:<id> in pipelines, paced to `rate` writes/s."""

    def __init__(self, ident, port, rate, stop):
        super().__init__(daemon=True)
        self.number, self.rate, self.stop = ident, rate, stop
        self.client = redis.Redis(port=port, protocol=2, socket_timeout=30)
        self.acked, self.incrs, self.errors, self.longest = 0, 0, [], 0.0

    def run(self):
        batch = 10
        interval = batch * 2 / self.rate
        next_at = time.monotonic()
        while not self.stop.is_set():
            pipe = self.client.pipeline(transaction=False)
            for j in range(batch):
                pipe.set(f"w:{self.number}:{self.acked + j}", self.acked + j)
                pipe.incr(f"c:{self.number}")
            sent = time.monotonic()
            try:
                replies = pipe.execute(raise_on_error=False)
            except Exception as error:  # a lost connection is an error a client would see
                self.errors.append(repr(error))
                return
            self.longest = max(self.longest, time.monotonic() - sent)
            for j in range(batch):
                ok, count = replies[2 * j], replies[2 * j + 1]
                if ok is not True or count != self.incrs + 1:
                    self.errors.append(f"writer {self.number}: {ok!r} {count!r}")
                    return
                self.acked += 1
                self.incrs += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=20_000, help="writes/s in total")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--json")
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/redis-handover"))
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="rh-handover-bench-")
    processes = []
    try:
        old_port, new_port, proxy_port, admin_port = free_port(), free_port(), free_port(), free_port()
        for binary, port in [(os.path.join(ROOT, ".cache/redis/6.2/redis-server"), old_port), ("redis-server", new_port)]:
            os.makedirs(f"{work}/{port}")
            processes.append(subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                               "--appendonly", "no", "--dir", f"{work}/{port}"], stdout=subprocess.DEVNULL))
            wait_port(port)
        processes.append(subprocess.Popen(
            [args.binary, "--listen", f"127.0.0.1:{proxy_port}", "--old", f"127.0.0.1:{old_port}",
             "--new", f"127.0.0.1:{new_port}", "--admin", f"127.0.0.1:{admin_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"}))
        wait_port(proxy_port)
        old = redis.Redis(port=old_port)
        old.execute_command("DEBUG", "POPULATE", args.keys, "key", 32)
        print(f"OLD 6.2 holds {old.dbsize()} keys, {old.info('memory')['used_memory_human']}", file=sys.stderr)

        stop = threading.Event()
        writers = [Writer(i, proxy_port, args.rate / args.connections, stop) for i in range(args.connections)]
        for w in writers:
            w.start()
        time.sleep(3)
        admin = f"http://127.0.0.1:{admin_port}"
        urllib.request.urlopen(urllib.request.Request(f"{admin}/handover", data=b"{}", method="POST"), timeout=10)
        while True:
            status = json.load(urllib.request.urlopen(f"{admin}/status", timeout=10))
            if status["handover"] is None and status["last_handover"] is not None:
                break
            time.sleep(0.05)
        time.sleep(3)
        stop.set()
        for w in writers:
            w.join(timeout=30)
        report = status["last_handover"]
        elapsed = 6.0 + sum((s["ended_ms"] or s["started_ms"]) - s["started_ms"] for s in report["timeline"]) / 1000
        new = redis.Redis(port=new_port)
        missing = 0
        for w in writers:
            keys = [f"w:{w.number}:{seq}" for seq in range(w.acked)]
            for start in range(0, len(keys), 1000):
                values = new.mget(keys[start:start + 1000])
                missing += sum(1 for k, v in zip(keys[start:start + 1000], values) if v != k.rsplit(":", 1)[1].encode())
            missing += 0 if int(new.get(f"c:{w.number}") or 0) == w.incrs else 1
        sync = next(s for s in report["timeline"] if s["phase"] == "syncing")
        result = {
            "outcome": report["outcome"],
            "keys": args.keys,
            "full_sync_ms": sync["ended_ms"] - sync["started_ms"],
            "pause_ms": report["pause_ms"],
            "writes_held": report["writes_held"],
            "longest_client_wait_ms": max(w.longest for w in writers) * 1000,
            "acknowledged_writes": sum(w.acked + w.incrs for w in writers),
            "writes_per_second": sum(w.acked + w.incrs for w in writers) / elapsed,
            "errors": sum(len(w.errors) for w in writers),
            "acknowledged_writes_missing_on_new": missing,
        }
        for key, value in result.items():
            print(f"{key:<36} {value:.1f}" if isinstance(value, float) else f"{key:<36} {value}")
        if args.json:
            json.dump(result, open(args.json, "w"), indent=2)
        sys.exit(0 if result["errors"] == 0 and missing == 0 and report["outcome"] == "switched" else 1)
    finally:
        for p in processes:
            p.terminate()
        for p in processes:
            p.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


main()
