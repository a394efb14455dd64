#!/usr/bin/env bash
# The main job: starts OLD (Redis 6.2) and NEW (Redis 7.0) on free local ports with redis-handover in front,
# loads data, puts load through the proxy and straight at OLD, and prints a report. Stops everything it
# started when it ends, also on Ctrl-C.
# Usage: scripts/demo.sh [--quick]      (--quick: smaller load, for CI)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

requests=200000
keys=100000
if [ "${1:-}" = "--quick" ]; then
  requests=20000
  keys=10000
fi

echo "== installing what is missing (Redis 5.0/6.2/7.0, redis-benchmark) and building"
scripts/install-redis.sh | sed 's/^/   /'
cargo build --release --quiet
proxy_bin="$root/target/release/redis-handover"

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo; echo "interrupted: stopping everything"; exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  exit 1
}
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

bench() { # port label
  redis-benchmark -p "$1" -t set,get -n "$requests" -c 50 -P "$3" --csv -e 2>&1 |
    awk -F'"' -v label="$2" -v p="$3" '/^"(SET|GET)"/ { printf "   %-8s %-4s -P %-3s %12.0f req/s   p50 %s ms   p99 %s ms\n", label, $2, p, $4, $10, $14 }
      /ERR|Error/ { errors++ } END { exit errors > 0 }'
}
echo "== load: redis-benchmark, 50 clients, SET and GET, straight at OLD and through the proxy"
for pipeline in 1 16; do
  bench "$old_port" "direct" "$pipeline"
  bench "$proxy_port" "proxy" "$pipeline"
done

old_keys=$(redis-cli -p "$old_port" DBSIZE)
new_keys=$(redis-cli -p "$new_port" DBSIZE)
errors=$(grep -c '"level":"ERROR"\|ERROR' "$work/proxy.log" || true)
echo
echo "== report"
echo "   primary:        OLD 127.0.0.1:$old_port ($(redis-cli -p "$old_port" INFO server | grep -o 'redis_version:[0-9.]*'))"
echo "   keys on OLD:    $old_keys"
echo "   keys on NEW:    $new_keys"
echo "   proxy errors:   $errors"
echo "   status:         $(curl -s "127.0.0.1:$admin_port/status" 2>/dev/null || echo unavailable)"
echo "   handover:       not implemented yet (the live-handover issue adds it); OLD stays primary"
