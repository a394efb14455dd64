#!/usr/bin/env bash
# The main job: starts OLD (Redis 6.2) and NEW (Redis 7.0) on free local ports with redis-handover in front,
# loads data, measures throughput, performs a live handover while 20 clients write through the proxy, and
# prints a report (timeline, pause, longest client wait, errors, keys on each side). Stops everything it
# started when it ends, also on Ctrl-C. Exits non-zero if the handover did not switch or a client saw an error.
# Usage: scripts/demo.sh [--quick]      (--quick: smaller load, for CI)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

requests=200000
during=1500000
keys=100000
if [ "${1:-}" = "--quick" ]; then
  requests=20000
  keys=10000
fi

echo "== installing what is missing (Redis 5.0/6.2/7.0, redis-benchmark) and building"
scripts/install-redis.sh | sed 's/^/   /'
cargo build --release --quiet
proxy_bin="$root/target/release/redis-handover"

. scripts/lib.sh
start_redis() { # binary port
  mkdir -p "$work/$2"
  "$1" --port "$2" --bind 127.0.0.1 --save "" --appendonly no --dir "$work/$2" --logfile redis.log &
  pids+=($!)
  wait_port "$2"
}

old_port=$(free_port); new_port=$(free_port); proxy_port=$(free_port); admin_port=$(free_port)
echo "== starting OLD Redis 6.2 on :$old_port, NEW Redis 7.0 on :$new_port"
start_redis "$root/.cache/redis/6.2/redis-server" "$old_port"
start_redis "$(command -v redis-server)" "$new_port"
echo "== starting redis-handover on :$proxy_port (admin :$admin_port)"
"$proxy_bin" --listen "127.0.0.1:$proxy_port" --old "127.0.0.1:$old_port" --new "127.0.0.1:$new_port" \
  --admin "127.0.0.1:$admin_port" 2>"$work/proxy.log" &
pids+=($!)
wait_port "$proxy_port"

echo "== loading $keys keys through the proxy"
redis-benchmark -p "$proxy_port" -t set -n "$keys" -r "$keys" -P 16 -q >/dev/null

bench() { # port label pipeline
  redis-benchmark -p "$1" -t set,get -n "$requests" -c 50 -P "$3" --csv -e 2>&1 |
    awk -F'"' -v label="$2" -v p="$3" '/^"(SET|GET)"/ { printf "   %-8s %-4s -P %-3s %12.0f req/s   p50 %s ms   p99 %s ms\n", label, $2, p, $4, $10, $14 }
      /ERR|Error/ { errors++ } END { exit errors > 0 }'
}
echo "== throughput before the handover: redis-benchmark, 50 clients, SET and GET, straight at OLD and through the proxy"
for pipeline in 1 16; do
  bench "$old_port" "direct" "$pipeline"
  bench "$proxy_port" "proxy" "$pipeline"
done

echo "== live handover: 20 clients write through the proxy (SET and INCR, pipelined) while it runs"
redis-benchmark -p "$proxy_port" -t set,incr -n "$during" -c 20 -P 4 -r "$keys" --csv -e >"$work/during.csv" 2>&1 &
load=$!
sleep 1
# The operator's side: ctl starts the handover and follows it until it ends.
"$proxy_bin" ctl --admin "127.0.0.1:$admin_port" handover --max-pause-ms 1000 --wait --json >"$work/status.json" || true
wait "$load" || true

echo "== throughput after the handover, through the proxy (now in front of NEW)"
bench "$proxy_port" "proxy" 1
bench "$proxy_port" "proxy" 16

redis-cli -p "$old_port" DBSIZE >"$work/old_keys"
redis-cli -p "$new_port" DBSIZE >"$work/new_keys"
python3 - "$work" <<'REPORT'
import csv, json, sys
work = sys.argv[1]
status = json.load(open(f"{work}/status.json"))
last = status["last_handover"] or {}
rows = [r for r in csv.reader(open(f"{work}/during.csv")) if r and r[0] in ("SET", "INCR")]
errors = sum(1 for line in open(f"{work}/during.csv") if "ERR" in line or "Error" in line)
print()
print("== report")
print(f"   handover:           {last.get('outcome')} ({last.get('from')} -> {last.get('to')})")
if last.get("reason"):
    print(f"   reason:             {last['reason']}")
for span in last.get("timeline", []):
    ended = span["ended_ms"] if span["ended_ms"] is not None else span["started_ms"]
    print(f"     {span['phase']:<12} {span['started_ms']:9.1f} ms -> {ended:9.1f} ms  ({ended - span['started_ms']:.1f} ms)")
pause = last.get("pause_ms")
print(f"   write pause:        {pause:.1f} ms" if pause is not None else "   write pause:        none")
print(f"   writes held:        {last.get('writes_held')}")
for row in rows:
    print(f"   during, {row[0]:<5}       {float(row[1]):10.0f} req/s, longest client wait {row[7]} ms")
print(f"   error replies:      {errors}")
print(f"   primary now:        {status['primary']['side'].upper()} {status['primary']['addr']} (Redis {status['primary']['version']})")
print(f"   keys on OLD:        {open(f'{work}/old_keys').read().strip()}")
print(f"   keys on NEW:        {open(f'{work}/new_keys').read().strip()}")
print(f"   OLD fenced:         {status['fence']}")
sys.exit(0 if last.get("outcome") == "switched" and errors == 0 else 1)
REPORT
