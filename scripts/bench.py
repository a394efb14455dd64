#!/usr/bin/env python3
"""Throughput and latency of redis-handover against direct Redis and twemproxy, in one interleaved run.

Started by scripts/bench.sh (which installs what is missing and builds the release binary). Starts Redis 7.0,
twemproxy (nutcracker) and redis-handover twice (`--backend-links shared` and `dedicated`) on free 127.0.0.1
ports, runs redis-benchmark (50 clients) for each workload against the four targets in turn, for several rounds,
and prints the median of each with its ratio to direct Redis, p50/p99 latency, and the CPU time per request of the
target's process (and of Redis behind it), read from /proc. Variants run SET and GET as clients that negotiated
RESP3, selected db 3, or authenticated as an ACL user (twemproxy supports none of these, so it is left out of them).
Then it measures the memory each target holds per idle client (RSS growth over 1000 connections that sent a PING).
With --shadow FRACTION, one more target: a shared-links proxy whose NEW (a second Redis 7.0, synced from the first)
gets that share of the reads as shadow reads for the whole run; its results (compared, different, dropped) are
printed at the end. The replica then receives the writes of every target's run, alike. With --baseline BINARY,
one more target: that build of redis-handover (shared links), to measure a change on the same machine in the same
run. Every process it starts is stopped when it ends.
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
# redis-benchmark options of each variant, run for SET and GET at -P 1 and -P 16.
VARIANTS = {"resp3": ["-3"], "db": ["--dbnum", "3"], "acl": ["--user", "bench", "-a", "benchpw"]}
IDLE_CLIENTS = 5000
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    """User plus system CPU time of a process so far, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def idle_memory(port, pid):
    """KiB of RSS the process gains per idle client: IDLE_CLIENTS connections, silent, then each having sent a PING."""
    before = rss_kib(pid)
    conns = []
    try:
        for _ in range(IDLE_CLIENTS):
            conns.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        # Every connection accepted and its session set up: a PING on the last one is answered after them.
        conns[-1].sendall(b"*1\r\n$4\r\nPING\r\n")
        conns[-1].recv(64)
        silent = rss_kib(pid)
        for c in conns:
            c.sendall(b"*1\r\n$4\r\nPING\r\n")
        for c in conns:
            if not c.recv(64).startswith(b"+PONG"):
                sys.exit(f"no PONG from port {port}")
        return {"silent": (silent - before) / IDLE_CLIENTS, "after_ping": (rss_kib(pid) - before) / IDLE_CLIENTS}
    finally:
        for c in conns:
            c.close()


def bench(port, test, pipeline, requests, options, pids):
    """One redis-benchmark run; `pids` are the target's process and Redis, whose CPU per request is measured."""
    before = [cpu_ticks(pid) for pid in pids]
    out = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", "50", "-n", str(requests), "-P", str(pipeline),
         "-t", test.lower(), "--csv", "-e", *options],
        capture_output=True, text=True, timeout=600,
    )
    cpu_us = [(cpu_ticks(pid) - b) * 1e6 / CLK_TCK / requests for pid, b in zip(pids, before)]
    rows = [r for r in csv.reader(io.StringIO(out.stdout)) if r and r[0].upper().startswith(test.split("_")[0])]
    row = next((r for r in rows if r[0].upper().startswith(test)), None)
    if out.returncode != 0 or row is None or "ERR" in out.stdout:
        sys.exit(f"redis-benchmark {test} -P {pipeline} on port {port} failed:\n{out.stdout}\n{out.stderr}")
    return {"rps": float(row[1]), "p50": float(row[4]), "p99": float(row[6]), "cpu_us": cpu_us[0],
            "redis_cpu_us": cpu_us[-1]}


def admin(port, path, body=None):
    """GET (or, with a body, POST) on a proxy's admin port; the JSON answer."""
    import urllib.request
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200_000, help="per run at -P 1 (x8 at -P 16)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/redis-handover"))
    parser.add_argument("--workloads", help="comma-separated subset, e.g. 'GET -P 1,GET -P 16'")
    parser.add_argument("--variants", default="resp3,db,acl", help="comma-separated subset of resp3,db,acl, or ''")
    parser.add_argument("--shadow", type=float, help="also a proxy shadowing this share of reads to a replica (0.05)")
    parser.add_argument("--baseline", help="also this build of redis-handover (shared links), as 'proxy baseline'")
    args = parser.parse_args()
    workloads = [(test, pipeline, "") for test, pipeline in WORKLOADS]
    if args.workloads:
        wanted = {w.strip() for w in args.workloads.split(",")}
        workloads = [w for w in workloads if f"{w[0]} -P {w[1]}" in wanted]
    for variant in filter(None, args.variants.split(",")):
        if variant not in VARIANTS:
            sys.exit(f"unknown variant {variant}: one of {', '.join(VARIANTS)}")
        workloads += [(test, pipeline, variant) for test, pipeline in [("SET", 1), ("GET", 1), ("SET", 16), ("GET", 16)]]

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
        subprocess.run(["redis-cli", "-p", str(redis_port), "ACL", "SETUSER", "bench", "on", ">benchpw", "~*", "&*",
                        "+@all"], check=True, capture_output=True, timeout=10)
        redis_pid = processes[0].pid
        with open(os.path.join(work, "nutcracker.yml"), "w") as f:
            f.write(f"bench:\n  listen: 127.0.0.1:{twem_port}\n  hash: fnv1a_64\n  distribution: ketama\n"
                    f"  redis: true\n  auto_eject_hosts: false\n  servers:\n    - 127.0.0.1:{redis_port}:1\n")
        processes.append(subprocess.Popen(
            ["nutcracker", "-c", os.path.join(work, "nutcracker.yml"), "-s", str(free_port()), "-o",
             os.path.join(work, "nutcracker.log")], stdout=subprocess.DEVNULL))
        wait_port(twem_port, "nutcracker")
        targets = [("direct", redis_port, redis_pid), ("twemproxy", twem_port, processes[1].pid)]
        for mode in ("shared", "dedicated"):
            proxy_port, admin_port = free_port(), free_port()
            processes.append(subprocess.Popen(
                [args.binary, "--listen", f"127.0.0.1:{proxy_port}", "--old", f"127.0.0.1:{redis_port}",
                 "--admin", f"127.0.0.1:{admin_port}", "--backend-links", mode],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"}))
            wait_port(proxy_port, "redis-handover")
            targets.append((f"proxy {mode}", proxy_port, processes[-1].pid))
        if args.baseline:
            proxy_port = free_port()
            processes.append(subprocess.Popen(
                [args.baseline, "--listen", f"127.0.0.1:{proxy_port}", "--old", f"127.0.0.1:{redis_port}",
                 "--admin", f"127.0.0.1:{free_port()}", "--backend-links", "shared"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"}))
            wait_port(proxy_port, "redis-handover (baseline)")
            targets.append(("proxy baseline", proxy_port, processes[-1].pid))
        shadow_admin = None
        if args.shadow:
            new_port, proxy_port, shadow_admin = free_port(), free_port(), free_port()
            new_dir = os.path.join(work, "new")
            os.mkdir(new_dir)
            processes.append(subprocess.Popen(
                ["redis-server", "--port", str(new_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", new_dir], stdout=subprocess.DEVNULL))
            wait_port(new_port, "redis-server (NEW)")
            processes.append(subprocess.Popen(
                [args.binary, "--listen", f"127.0.0.1:{proxy_port}", "--old", f"127.0.0.1:{redis_port}",
                 "--new", f"127.0.0.1:{new_port}", "--admin", f"127.0.0.1:{shadow_admin}", "--backend-links",
                 "shared"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"}))
            wait_port(proxy_port, "redis-handover (shadow)")
            admin(shadow_admin, "/shadow", {"fraction": args.shadow, "for_s": 86400})
            deadline = time.time() + 120
            while admin(shadow_admin, "/shadow")["state"] != "running":
                if time.time() > deadline:
                    sys.exit("shadow reads did not start within 120 s")
                time.sleep(0.2)
            targets.append((f"proxy shadow {args.shadow:g}", proxy_port, processes[-1].pid))

        def targets_of(workload):
            # twemproxy has no RESP3, no SELECT and no ACL users.
            return [t for t in targets if not (workload[2] and t[0] == "twemproxy")]

        samples = {(w, t[0]): [] for w in workloads for t in targets_of(w)}
        for round_no in range(args.rounds):
            for workload in workloads:
                test, pipeline, variant = workload
                requests = args.requests * (8 if pipeline > 1 else 1)
                order = targets_of(workload)
                order = order if round_no % 2 == 0 else list(reversed(order))
                for name, port, pid in order:
                    pids = [pid] if pid == redis_pid else [pid, redis_pid]
                    run = bench(port, test, pipeline, requests, VARIANTS.get(variant, []), pids)
                    samples[(workload, name)].append(run)
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)

        results = []
        header = (f"{'workload':<22}{'target':<17}{'req/s':>10}{'x direct':>9}{'p50 ms':>8}{'p99 ms':>8}"
                  f"{'cpu us/req':>11}{'redis us/req':>13}")
        print(header)
        print("-" * len(header))
        for workload in workloads:
            test, pipeline, variant = workload
            label = f"{test} -P {pipeline}" + (f" {variant}" if variant else "")
            direct = statistics.median(s["rps"] for s in samples[(workload, "direct")])
            for name, _, _ in targets_of(workload):
                runs = samples[(workload, name)]
                median = lambda key: statistics.median(r[key] for r in runs)
                rps = median("rps")
                row = {"workload": label, "target": name, "rps": rps, "ratio": rps / direct,
                       "p50_ms": median("p50"), "p99_ms": median("p99"), "cpu_us_per_request": median("cpu_us"),
                       "redis_cpu_us_per_request": median("redis_cpu_us"), "runs": runs}
                results.append(row)
                print(f"{label:<22}{name:<17}{rps:>10.0f}{row['ratio']:>9.2f}{row['p50_ms']:>8.3f}{row['p99_ms']:>8.3f}"
                      f"{row['cpu_us_per_request']:>11.1f}{row['redis_cpu_us_per_request']:>13.1f}")

        if shadow_admin:
            shadow = admin(shadow_admin, "/shadow")
            print(f"\nshadow reads ({args.shadow:g} of reads): {shadow['compared']} compared, {shadow['matched']} equal, "
                  f"{shadow['lagged']} equal on a second look, {shadow['mismatched']} different, "
                  f"{shadow['inconclusive']} undecided, "
                  f"{shadow['dropped']} dropped (the comparing task was behind)")
            for line in shadow["by_command"]:
                print(f"  {line['command']:<12}{line['matched']:>9} equal{line['lagged']:>7} lag"
                      f"{line['mismatched']:>7} different")

        print(f"\nmemory per idle client (RSS growth over {IDLE_CLIENTS} connections; silent, then having sent a PING):")
        memory = {}
        for name, port, pid in targets:
            memory[name] = idle_memory(port, pid)
            print(f"  {name:<17}{memory[name]['silent']:>7.1f} KiB{memory[name]['after_ping']:>9.1f} KiB")

        machine = {"cpus": os.cpu_count(), "kernel": os.uname().release, "rounds": args.rounds, "clients": 50}
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"machine": machine, "results": results, "idle_client_kib": memory}, f, indent=2)
    finally:
        stop_all()


main()
