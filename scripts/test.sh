#!/usr/bin/env bash
# Runs every test: installs the Redis versions and clients the tests use (scripts/install-redis.sh, node-redis
# from npm), then `cargo test`.
# Usage: scripts/test.sh [cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-redis.sh
# node-redis, which tests/resp3.rs drives through the proxy (versions pinned in the lockfile).
if [ ! -d tests/clients/node/node_modules/redis ]; then
  npm ci --prefix tests/clients/node --no-audit --no-fund --loglevel=error
fi
cargo test --all-targets "$@"
