#!/usr/bin/env bash
# The main job: starts OLD (Redis 6.2) and NEW (Redis 7.0) on free local ports with redis-handover in front,
# loads data, measures throughput, performs a live handover while 20 clients write through the proxy, writes
# more on NEW, then rolls back to OLD over the rollback window under the same load, and prints a report (both
# timelines and pauses, the window, longest client wait, errors, and the consistency checker's count of
# acknowledged writes, checked across both moves). Stops everything it started when it ends, also on Ctrl-C.
# Exits non-zero if a move did not switch, a client saw an error, or an acknowledged write was lost.
# Usage: scripts/demo.sh [--quick] [--fleet N] [--screenshot FILE]
#   --quick:    smaller load, for CI
#   --screenshot FILE: after the handover, a PNG of the admin page (GET /) in headless Chromium
#   --fleet N:  N proxies in front of the same servers, the load spread over them, the handover started on the
#               first one and carried out by all; the report is per proxy
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

requests=200000
during=1500000
keys=100000
fleet=1
screenshot=
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) requests=20000; keys=10000 ;;
    --fleet) fleet="$2"; shift ;;
    --screenshot) screenshot=$(realpath -m "$2"); shift ;;
    *) echo "usage: scripts/demo.sh [--quick] [--fleet N] [--screenshot FILE]" >&2; exit 2 ;;
  esac
  shift
done

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

old_port=$(free_port); new_port=$(free_port)
proxy_ports=(); admin_ports=(); peers=()
for i in $(seq 1 "$fleet"); do
  proxy_ports+=("$(free_port)"); admin_ports+=("$(free_port)")
  peers+=(--peer "127.0.0.1:${admin_ports[-1]}")
done
proxy_port=${proxy_ports[0]}; admin_port=${admin_ports[0]}
echo "== starting OLD Redis 6.2 on :$old_port, NEW Redis 7.0 on :$new_port"
start_redis "$root/.cache/redis/6.2/redis-server" "$old_port"
start_redis "$(command -v redis-server)" "$new_port"
for i in $(seq 0 $((fleet - 1))); do
  echo "== starting redis-handover $((i + 1)) of $fleet on :${proxy_ports[$i]} (admin :${admin_ports[$i]})"
  fleet_args=()
  if [ "$fleet" -gt 1 ]; then fleet_args=("${peers[@]}" --proxy-id "proxy-$((i + 1))"); fi
  "$proxy_bin" --listen "127.0.0.1:${proxy_ports[$i]}" --old "127.0.0.1:$old_port" --new "127.0.0.1:$new_port" \
    --admin "127.0.0.1:${admin_ports[$i]}" "${fleet_args[@]}" 2>"$work/proxy-$((i + 1)).log" &
  pids+=($!)
  wait_port "${proxy_ports[$i]}"
done

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

echo "== readiness: an application's clients (redis-py naming itself), then ctl check with 5% shadow reads on NEW"
python3 - "$proxy_port" <<'APP'
import sys, redis
for name in ("billing", "search"):
    r = redis.Redis(port=int(sys.argv[1]), protocol=2, client_name=name)
    r.hset(f"user:{name}", mapping={"plan": "pro", "seats": 3})
    r.rpush(f"recent:{name}", "a", "b", "c")
    r.xadd("events", {"kind": "signup", "who": name})
    assert r.hgetall(f"user:{name}")[b"plan"] == b"pro"
APP
shadow_for=$([ "$requests" -gt 20000 ] && echo 10s || echo 4s)
(
  end=$((SECONDS + 30))
  while [ $SECONDS -lt $end ]; do
    for _ in $(seq 50); do echo "XINFO STREAM events"; echo "HGETALL user:billing"; done |
      redis-cli -p "$proxy_port" >/dev/null
    redis-benchmark -p "$proxy_port" -t get,lrange_100 -n 2000 -c 10 -r "$keys" -q >/dev/null 2>&1 || true
  done
) &
readers=$!
"$proxy_bin" ctl --admin "127.0.0.1:$admin_port" check --shadow 0.05 --for "$shadow_for" >"$work/readiness.txt" \
  2>"$work/readiness.err" || true
kill "$readers" 2>/dev/null || true
wait "$readers" 2>/dev/null || true
"$proxy_bin" ctl --admin "127.0.0.1:$admin_port" check --json >"$work/readiness.json" 2>/dev/null || true
sed 's/^/   /' "$work/readiness.txt"

# The consistency checker writes through the first proxy for the whole live part, and checks every write it was
# told succeeded once it is stopped, after both moves.
"$proxy_bin" check-consistency --addr "127.0.0.1:$proxy_port" --clients 4 --rate 5000 --seconds 3600 --prefix demo --json \
  >"$work/consistency.json" 2>"$work/consistency.err" &
checker=$!
pids+=($checker)

clients=$(( 20 / fleet > 0 ? 20 / fleet : 1 ))
move() { # name ctl-command... : redis-benchmark load through every proxy while ctl runs the move and follows it
  local name=$1; shift
  local loads=()
  for i in $(seq 0 $((fleet - 1))); do
    redis-benchmark -p "${proxy_ports[$i]}" -t set,incr -n $((during / fleet)) -c "$clients" -P 4 -r "$keys" --csv -e \
      >"$work/$name-during-$((i + 1)).csv" 2>&1 &
    loads+=($!)
  done
  sleep 1
  "$proxy_bin" ctl --admin "127.0.0.1:$admin_port" "$@" --max-pause-ms 1000 --wait --json >"$work/$name.json" || true
  for i in $(seq 0 $((fleet - 1))); do
    wait "${loads[$i]}" || true
    "$proxy_bin" ctl --admin "127.0.0.1:${admin_ports[$i]}" status --json >"$work/$name-status-$((i + 1)).json"
  done
}
echo "== live handover: $((clients * fleet)) clients write through $fleet proxies (SET and INCR, pipelined) while it runs"
move forward handover
"$proxy_bin" ctl --admin "127.0.0.1:$admin_port" status --json >"$work/window.json"
if [ -n "$screenshot" ]; then
  echo "== the admin page (http://127.0.0.1:$admin_port/) in headless Chromium, into $screenshot"
  chromium --headless --no-sandbox --disable-gpu --no-first-run --user-data-dir="$work/chromium" \
    --virtual-time-budget=4000 --window-size=1280,1900 --screenshot="$screenshot" "http://127.0.0.1:$admin_port/" \
    >/dev/null 2>&1 || echo "   (no screenshot: is chromium installed? scripts/install-redis.sh installs it)"
fi

echo "== throughput after the handover, through the proxy (now in front of NEW)"
bench "$proxy_port" "proxy" 1
bench "$proxy_port" "proxy" 16

echo "== rollback: OLD followed NEW all along; back to it under the same load"
move back rollback
echo "== stopping the consistency checker and checking every acknowledged write"
kill -TERM "$checker"
wait "$checker" || true

python3 - "$work" "$fleet" <<'REPORT'
import csv, json, sys, time
work, fleet = sys.argv[1], int(sys.argv[2])
errors = 0
ok = True
print()
print("== report")

def window_line(w):
    if not w:
        return "none"
    if w.get("state") == "closed":
        return f"closed: {w.get('reason')}"
    if w.get("state") == "off":
        return "off"
    left = (w["until_unix_ms"] - time.time() * 1000) / 1000
    return (f"{w['state']}, {w['follower'].upper()} {w['follower_addr']} (Redis {w['follower_version']}) follows "
            f"with link {'up' if w['link_up'] else 'down'}, lag {w['lag_bytes']} bytes, "
            f"{w['commands_checked']} commands of the primary's stream checked, {left:.0f} s left")

for name, title, side in (("forward", "handover", "new"), ("back", "rollback", "old")):
    status = json.load(open(f"{work}/{name}.json"))
    last = status["last_handover"] or {}
    ok &= last.get("outcome") == "switched"
    print(f"   {title + ':':<20}{last.get('outcome')} ({last.get('from')} -> {last.get('to')})")
    if last.get("reason"):
        print(f"   reason:             {last['reason']}")
    for span in last.get("timeline", []):
        ended = span["ended_ms"] if span["ended_ms"] is not None else span["started_ms"]
        print(f"     {span['phase']:<12} {span['started_ms']:9.1f} ms -> {ended:9.1f} ms  ({ended - span['started_ms']:.1f} ms)")
    pause = last.get("pause_ms")
    print(f"   write pause:        {pause:.1f} ms" if pause is not None else "   write pause:        none")
    print(f"   writes held:        {last.get('writes_held')}")
    for line in last.get("fleet", []):
        print(f"   fleet:              {line}")
    for warning in last.get("warnings", []):
        print(f"   warning:            {warning}")
    for i in range(1, fleet + 1):
        during = open(f"{work}/{name}-during-{i}.csv").read().splitlines()
        rows = [r for r in csv.reader(during) if r and r[0] in ("SET", "INCR")]
        proxy_errors = sum(1 for line in during if "ERR" in line or "Error" in line)
        errors += proxy_errors
        proxy_status = json.load(open(f"{work}/{name}-status-{i}.json"))
        now = proxy_status["primary"]["side"]
        ok &= now == side
        label = f"proxy {i}" if fleet > 1 else "proxy"
        for row in rows:
            print(f"   {label}, {row[0]:<5}     {float(row[1]):10.0f} req/s during, longest client wait {row[7]} ms")
        print(f"   {label}:            primary {now.upper()}, {proxy_errors} error replies")
    if name == "forward":
        print(f"   rollback window:    {window_line(json.load(open(f'{work}/window.json'))['rollback_window'])}")
        print(f"   OLD fenced:         {status['fence']}")

final = json.load(open(f"{work}/back-status-1.json"))
print(f"   primary now:        {final['primary']['side'].upper()} {final['primary']['addr']} (Redis {final['primary']['version']})")
print(f"   rollback window:    {window_line(final['rollback_window'])} (the way forward again)")
print(f"   error replies:      {errors}")
try:
    check = json.load(open(f"{work}/consistency.json"))
    print(f"   consistency:        {check['acknowledged_writes']} acknowledged writes from {check['writers']} writers, "
          f"written across both moves and checked: {check['lost']} lost, {check['failed_batches']} failed batches, "
          f"{check['reconnects']} reconnects, longest wait {check['longest_wait_ms']:.1f} ms")
    ok &= check["lost"] == 0 and check["failed_batches"] == 0
    for example in check.get("lost_examples", []):
        print(f"     lost: {example}")
except (OSError, ValueError, KeyError) as error:
    print(f"   consistency:        no report ({error}): {open(f'{work}/consistency.err').read().strip()}")
    ok = False
readiness = json.load(open(f"{work}/readiness.json"))
shadow = readiness.get("shadow") or {}
print(f"   readiness:          {'READY' if readiness['ready'] else 'NOT READY'} before the handover "
      f"({len(readiness['reasons'])} reason(s), {len(readiness['warnings'])} warning(s); report above)")
print(f"   shadow reads:       {shadow.get('compared', 0)} compared, {shadow.get('mismatched', 0)} different "
      f"({', '.join(c['command'] for c in shadow.get('by_command', []) if c['mismatched']) or 'none'}), "
      f"{shadow.get('lagged', 0)} equal on a second look, {shadow.get('inconclusive', 0)} undecided, "
      f"{shadow.get('dropped', 0)} dropped")
plain = [c for c in shadow.get("by_command", []) if c["command"] in ("GET", "LRANGE", "HGETALL") and c["mismatched"]]
ok &= shadow.get("compared", 0) > 0 and not plain
sys.exit(0 if ok and errors == 0 else 1)
REPORT
