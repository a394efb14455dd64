#!/usr/bin/env bash
# Benchmarks redis-handover against direct Redis 7.0 and twemproxy in one interleaved run (see scripts/bench.py).
# Usage: scripts/bench.sh [--rounds N] [--requests N] [--json FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-redis.sh >/dev/null
cargo build --release --quiet
exec python3 scripts/bench.py "$@"
