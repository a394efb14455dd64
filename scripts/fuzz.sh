#!/usr/bin/env bash
# Fuzzes the client request parser and the reply framer with libFuzzer (cargo-fuzz), each for a bounded time,
# starting from the seed corpus in fuzz/corpus (new inputs go to a temporary folder, not the repository).
# Usage: scripts/fuzz.sh [seconds per target, default 30]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
# cargo-fuzz passes the compiler flags of libFuzzer's instrumentation, which stable Rust accepts with this.
export RUSTC_BOOTSTRAP=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in requests replies; do
  mkdir -p "$work/$target"
  echo "fuzz: $target for ${seconds}s"
  if ! cargo fuzz run "$target" "$work/$target" "fuzz/corpus/$target" -- -max_total_time="$seconds" \
      -print_final_stats=1 >"$work/$target.log" 2>&1; then
    tail -n 40 "$work/$target.log" >&2
    echo "fuzz: $target failed; the input that broke it is in fuzz/artifacts/$target" >&2
    exit 1
  fi
  grep -E "^(Done|stat::number_of_executed_units|stat::new_units_added)" "$work/$target.log"
done
