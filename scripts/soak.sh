#!/usr/bin/env bash
# The soak run (not part of CI): mixed load through redis-handover for a long time, with a handover every few
# minutes back and forth between two Redis 6.2 servers. Reports handovers, error replies, lost writes (the
# consistency checker: must be 0), and the proxy's memory (RSS) and open file descriptors over time.
# Usage: scripts/soak.sh [--minutes 30] [--every 120] [--rate 5000]
#   every: seconds between handovers; rate: the consistency checker's writes per second (redis-benchmark adds more)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
minutes=30
every=120
rate=5000
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --every) every=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    *) echo "usage: scripts/soak.sh [--minutes N] [--every SECONDS] [--rate WRITES_PER_SECOND]" >&2; exit 2 ;;
  esac
done
scripts/install-redis.sh >/dev/null
cargo build --release --quiet
bin="$root/target/release/redis-handover"

. scripts/lib.sh

a=$(free_port); b=$(free_port); proxy=$(free_port); admin=$(free_port)
for port in $a $b; do
  mkdir -p "$work/$port"
  "$root/.cache/redis/6.2/redis-server" --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work/$port" \
    --logfile redis.log &
  pids+=($!)
  wait_port "$port"
done
RUST_LOG=warn "$bin" --listen "127.0.0.1:$proxy" --old "127.0.0.1:$a" --new "127.0.0.1:$b" --admin "127.0.0.1:$admin" \
  2>"$work/proxy.log" &
proxy_pid=$!
pids+=($proxy_pid)
wait_port "$proxy"
seconds=$((minutes * 60))
echo "soak: $minutes min, a handover every $every s, proxy :$proxy (pid $proxy_pid)"

# The checker is paced: at full speed a long soak would fill the servers' memory.
"$bin" check-consistency --addr "127.0.0.1:$proxy" --clients 8 --seconds "$seconds" --rate "$rate" --prefix soak --json \
  >"$work/consistency.json" 2>"$work/consistency.err" &
checker=$!
pids+=($checker)
( while :; do
    redis-benchmark -p "$proxy" -t get,set,incr,lpush,lrange_100 -n 100000 -c 20 -r 100000 -q -e 2>&1 |
      grep -E "ERR|Error" || true
  done ) >"$work/benchmark-errors.txt" &
pids+=($!)

echo "elapsed_s,rss_kib,fds,clients,phase" >"$work/samples.csv"
: >"$work/handover-errors.txt"
started=$(date +%s)
next_handover=$((started + every))
switched=0; aborted=0
while [ $(( $(date +%s) - started )) -lt "$seconds" ]; do
  now=$(date +%s)
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$proxy_pid/status")
  fds=$(ls "/proc/$proxy_pid/fd" | wc -l)
  status=$("$bin" ctl --admin "127.0.0.1:$admin" --json status)
  clients=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["clients"])' "$status")
  phase=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["phase"])' "$status")
  echo "$((now - started)),$rss,$fds,$clients,$phase" >>"$work/samples.csv"
  if [ "$now" -ge "$next_handover" ]; then
    if "$bin" ctl --admin "127.0.0.1:$admin" handover --max-pause-ms 2000 --wait >/dev/null 2>>"$work/handover-errors.txt"; then
      switched=$((switched + 1))
    else
      aborted=$((aborted + 1))
    fi
    next_handover=$((next_handover + every))
  fi
  sleep 10
done
wait "$checker" || true
python3 - "$work" "$switched" "$aborted" <<'REPORT'
import csv, json, sys
work, switched, aborted = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = list(csv.DictReader(open(f"{work}/samples.csv")))
rss = [int(r["rss_kib"]) for r in rows]
fds = [int(r["fds"]) for r in rows]
check = json.load(open(f"{work}/consistency.json"))
benchmark_errors = sum(1 for _ in open(f"{work}/benchmark-errors.txt"))
print("== soak report")
print(f"   handovers:            {switched} switched, {aborted} aborted")
for line in open(f"{work}/handover-errors.txt"):
    print(f"     aborted: {line.strip()}")
print(f"   acknowledged writes:  {check['acknowledged_writes']} checked, {check['lost']} lost, {check['extra']} extra")
print(f"   checker errors:       {check['failed_batches']} failed batches, {check['reconnects']} reconnects")
print(f"   benchmark errors:     {benchmark_errors}")
print(f"   proxy RSS (KiB):      first {rss[0]}, last {rss[-1]}, max {max(rss)}")
print(f"   proxy open fds:       first {fds[0]}, last {fds[-1]}, max {max(fds)}")
print("   over time (every 10 s): elapsed_s rss_kib fds")
for r in rows[:: max(1, len(rows) // 12)]:
    print(f"     {r['elapsed_s']:>6} {r['rss_kib']:>8} {r['fds']:>5}")
sys.exit(0 if check["lost"] == 0 and aborted == 0 and check["failed_batches"] == 0 and benchmark_errors == 0 else 1)
REPORT
