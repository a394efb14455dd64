#!/usr/bin/env python3
"""Throughput and latency of redis-handover against direct Redis and twemproxy, in one interleaved run.

Started by scripts/bench.sh (which installs what is missing and builds the release binary). Starts Redis 7.0,
twemproxy (nutcracker) and redis-handover twice (`--backend-links shared` and `dedicated`) on free 127.0.0.1
ports, runs redis-benchmark (50 clients) for each workload against the four targets in turn, for several rounds, and prints the median of each with its ratio to
direct Redis and p50/p99 latency. Every process it starts is stopped when it ends.
"""
import argparse
import csv
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from procs import free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = [("SET", 1), ("GET", 1), ("SET", 16), ("GET", 16), ("INCR", 1), ("LPUSH", 1), ("LRANGE_100", 1), ("MSET", 1)]






def bench(port, test, pipeline, requests):
    out = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", "50", "-n", str(requests), "-P", str(pipeline),
         "-t", test.lower(), "--csv", "-e"],
        capture_output=True, text=True, timeout=600,
    )
    rows = [r for r in csv.reader(io.StringIO(out.stdout)) if r and r[0].upper().startswith(test.split("_")[0])]
    row = next((r for r in rows if r[0].upper().startswith(test)), None)
    if out.returncode != 0 or row is None or "ERR" in out.stdout:
        sys.exit(f"redis-benchmark {test} -P {pipeline} on port {port} failed:\n{out.stdout}\n{out.stderr}")
    return {"rps": float(row[1]), "p50": float(row[4]), "p99": float(row[6])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200_000, help="per run at -P 1 (x8 at -P 16)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/redis-handover"))
    parser.add_argument("--workloads", help="comma-separated subset, e.g. 'GET -P 1,GET -P 16'")
    args = parser.parse_args()
    workloads = WORKLOADS
    if args.workloads:
        wanted = {w.strip() for w in args.workloads.split(",")}
        workloads = [w for w in WORKLOADS if f"{w[0]} -P {w[1]}" in wanted]

    work = tempfile.mkdtemp(prefix="rh-bench-")
    processes = []

    def stop_all(*_):
        for p in processes:
            if p.poll() is None:
                p.terminate()
        for p in processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(143)))
    try:
        redis_port, twem_port = free_port(), free_port()
        processes.append(subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", work], stdout=subprocess.DEVNULL))
        wait_port(redis_port, "redis-server")
        with open(os.path.join(work, "nutcracker.yml"), "w") as f:
            f.write(f"bench:\n  listen: 127.0.0.1:{twem_port}\n  hash: fnv1a_64\n  distribution: ketama\n"
                    f"  redis: true\n  auto_eject_hosts: false\n  servers:\n    - 127.0.0.1:{redis_port}:1\n")
        processes.append(subprocess.Popen(
            ["nutcracker", "-c", os.path.join(work, "nutcracker.yml"), "-s", str(free_port()), "-o",
             os.path.join(work, "nutcracker.log")], stdout=subprocess.DEVNULL))
        wait_port(twem_port, "nutcracker")
        targets = [("direct", redis_port), ("twemproxy", twem_port)]
        for mode in ("shared", "dedicated"):
            proxy_port, admin_port = free_port(), free_port()
            processes.append(subprocess.Popen(
                [args.binary, "--listen", f"127.0.0.1:{proxy_port}", "--old", f"127.0.0.1:{redis_port}",
                 "--admin", f"127.0.0.1:{admin_port}", "--backend-links", mode],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"}))
            wait_port(proxy_port, "redis-handover")
            targets.append((f"proxy {mode}", proxy_port))

        samples = {(w, t): [] for w in workloads for t, _ in targets}
        for round_no in range(args.rounds):
            for workload in workloads:
                test, pipeline = workload
                requests = args.requests * (8 if pipeline > 1 else 1)
                order = targets if round_no % 2 == 0 else list(reversed(targets))
                for name, port in order:
                    samples[(workload, name)].append(bench(port, test, pipeline, requests))
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)

        results = []
        header = f"{'workload':<16}{'target':<16}{'req/s':>12}{'x direct':>10}{'p50 ms':>9}{'p99 ms':>9}"
        print(header)
        print("-" * len(header))
        for workload in workloads:
            test, pipeline = workload
            direct = statistics.median(s["rps"] for s in samples[(workload, "direct")])
            for name, _ in targets:
                runs = samples[(workload, name)]
                rps = statistics.median(r["rps"] for r in runs)
                row = {"workload": f"{test} -P {pipeline}", "target": name, "rps": rps, "ratio": rps / direct,
                       "p50_ms": statistics.median(r["p50"] for r in runs),
                       "p99_ms": statistics.median(r["p99"] for r in runs), "runs": runs}
                results.append(row)
                print(f"{row['workload']:<16}{name:<16}{rps:>12.0f}{row['ratio']:>10.2f}{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}")
        machine = {"cpus": os.cpu_count(), "kernel": os.uname().release, "rounds": args.rounds, "clients": 50}
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"machine": machine, "results": results}, f, indent=2)
    finally:
        stop_all()


main()
