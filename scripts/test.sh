#!/usr/bin/env bash
# Runs every test: installs the Redis versions and clients the tests use (scripts/install-redis.sh, node-redis
# from npm), runs the demo in its quick form and the fuzzers for a bounded time, then `cargo test`.
# Usage: scripts/test.sh [cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-redis.sh
# node-redis, which tests/resp3.rs drives through the proxy (versions pinned in the lockfile).
if [ ! -d tests/clients/node/node_modules/redis ]; then
  npm ci --prefix tests/clients/node --no-audit --no-fund --loglevel=error
fi
# The demo, shortened: it must switch under load with zero error replies (it exits non-zero otherwise).
scripts/demo.sh --quick
# The fuzzers of the request parser and the reply framer, 30 seconds each.
scripts/fuzz.sh 30
# Redis's own test suite (of the Debian package's version) through the proxy, in both backend_links modes.
cargo build --release --quiet
scripts/redis-suite.sh
scripts/redis-suite.sh --proxy-args "--backend-links dedicated"
# The criterion benchmarks once each (that they run); the integration tests with every proxy on dedicated links
# (backend_links = "dedicated"); then every test in the default mode (shared), whose summary closes the output.
cargo test --benches --quiet
REDIS_HANDOVER_TEST_BACKEND_LINKS=dedicated cargo test --tests "$@"
cargo test --lib --bins --tests "$@"
