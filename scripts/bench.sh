#!/usr/bin/env bash
# Benchmarks redis-handover against direct Redis 7.0 and twemproxy in one interleaved run (see scripts/bench.py).
# Usage: scripts/bench.sh [--rounds N] [--requests N] [--json FILE]
#        scripts/bench.sh --handover [--keys N] [--rate N] [--json FILE]   (the handover benchmark)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-redis.sh >/dev/null
cargo build --release --quiet
if [ "${1:-}" = "--handover" ]; then
  shift
  exec python3 scripts/bench_handover.py "$@"
fi
exec python3 scripts/bench.py "$@"
