#!/usr/bin/env bash
# Runs every test: installs the Redis versions the tests use (scripts/install-redis.sh), then `cargo test`.
# Usage: scripts/test.sh [cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-redis.sh
cargo test --all-targets "$@"
