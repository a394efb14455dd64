#!/usr/bin/env bash
# Runs Redis's own test suite, of the version Debian 12 ships (redis 7.0.15), through the proxy, in the suite's
# external-server mode (`--host/--port`): for each unit file a fresh Redis 7.0 (/usr/bin/redis-server) and a fresh
# proxy in front of it, on free 127.0.0.1 ports. Tests tagged external:skip (skipped by the suite itself in that
# mode), needs:repl (SYNC from the server) and slow are left out, as Redis's own external-server CI does
# (.github/workflows/external.yml: `--tags -slow`, server with the debug/protected-config/module commands on).
# tests/redis-suite/skip.txt lists tests that lack such a tag, skip-for-time.txt the slowest fuzzers (see there).
# A failure listed in tests/redis-suite/exceptions.txt (with its reason; an entry can be for one backend_links mode)
# is expected; any other makes this exit 1. A test that hangs counts as failed and its unit runs again without it.
# The whole run takes ~2.5 min on 2 cores when nothing hangs.
#
# Usage: scripts/redis-suite.sh [--direct] [--proxy-args "ARGS"] [--units "unit/a unit/b"] [--full] [--verbose]
#   --direct          run against Redis itself, no proxy (to tell the suite's own failures from the proxy's)
#   --proxy-args A    extra arguments for the proxy, e.g. "--backend-links dedicated"  (env REDIS_SUITE_PROXY_ARGS)
#   --units "U..."    only these unit files (names as `runtest --list-tests` prints them)  (env REDIS_SUITE_UNITS)
#   --full            also the tests tagged slow and those in tests/redis-suite/skip-for-time.txt (~9 min)
#   --verbose         print every unit's full runtest output
# Env: REDIS_HANDOVER_BIN (default target/release/redis-handover; not built here), REDIS_SUITE_EXCEPTIONS
# (extra exception files, space-separated, e.g. for one proxy mode). Logs of the last run (runtest output, proxy
# and Redis logs per unit) stay in .cache/redis-suite/last-run/.
# First run: fetches the Debian source package (apt-get source, adding a deb-src entry for the configured Debian
# mirrors if there is none) into .cache/redis-suite/; needs root or sudo for that. Nothing is compiled: the suite
# is Tcl, and the few tests that call src/redis-cli or src/redis-benchmark get Debian's binaries via symlinks.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

direct=0
proxy_args=${REDIS_SUITE_PROXY_ARGS:-}
units=${REDIS_SUITE_UNITS:-}
tags="-needs:repl -slow"
hang_s=30
full=0
verbose=0
while [ $# -gt 0 ]; do
  case "$1" in
    --direct) direct=1 ;;
    --proxy-args) proxy_args=$2; shift ;;
    --units) units=$2; shift ;;
    --full) full=1; tags="-needs:repl"; hang_s=100 ;;
    --verbose) verbose=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "redis-suite: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  # Keep a package's own service from starting (as scripts/install-redis.sh does).
  local policy=/usr/sbin/policy-rc.d made=
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"; made=1; fi
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
  if [ -n "$made" ]; then as_root rm -f "$policy"; fi
}

# --- what the run needs: Redis 7.0, tclsh, the proxy binary, the suite's source -------------------------------
command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || apt_install redis-server redis-tools
tclsh=$(command -v tclsh8.6 || command -v tclsh || true)
[ -n "$tclsh" ] || { apt_install tcl; tclsh=$(command -v tclsh8.6); }
proxy_bin=${REDIS_HANDOVER_BIN:-$root/target/release/redis-handover}
if [ "$direct" = 0 ] && [ ! -x "$proxy_bin" ]; then
  echo "redis-suite: $proxy_bin is missing (cargo build --release)" >&2; exit 2
fi

# The source of the installed redis-server package, Debian's patches applied (they touch tests too).
version=$(dpkg-query -W -f='${source:Version}' redis-server)
cache=$root/.cache/redis-suite
src=$cache/redis-${version#*:}
if [ ! -f "$src/tests/test_helper.tcl" ]; then
  echo "redis-suite: fetching the source of Debian's redis $version into $src"
  command -v dpkg-source >/dev/null 2>&1 || apt_install dpkg-dev
  [ -n "$(apt-cache showsrc redis 2>/dev/null)" ] || as_root apt-get update -qq
  if [ -z "$(apt-cache showsrc redis 2>/dev/null)" ]; then
    # A deb-src twin of every configured deb entry (deb822 .sources files and one-line .list files).
    echo "redis-suite: adding deb-src entries (/etc/apt/sources.list.d/redis-suite-deb-src.*)"
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] && [ "${f##*/}" != redis-suite-deb-src.sources ] && sed -n '/^Types:/s/^Types:.*/Types: deb-src/;p' "$f"; echo
    done | as_root tee /etc/apt/sources.list.d/redis-suite-deb-src.sources >/dev/null
    lines=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | sed -n 's/^deb /deb-src /p' || true)
    [ -z "$lines" ] || echo "$lines" | as_root tee /etc/apt/sources.list.d/redis-suite-deb-src.list >/dev/null
    as_root apt-get update -qq
  fi
  mkdir -p "$cache"
  dl=$(mktemp -d "$cache/download.XXXXXX")
  (cd "$dl" && { apt-get source -qq --download-only "redis=$version" 2>/dev/null ||
    { echo "redis-suite: redis=$version not in the archive; taking its newest version"; apt-get source -qq --download-only redis; }; })
  rm -rf "$src.tmp"
  dpkg-source -x "$dl"/redis_*.dsc "$src.tmp" >"$cache/dpkg-source.log" 2>&1 ||
    { echo "redis-suite: dpkg-source -x failed (see $cache/dpkg-source.log)" >&2; exit 1; }
  rm -rf "$dl" "$src" "$cache"/redis_*.orig.tar.*
  mv "$src.tmp" "$src"
fi
# Debian's binaries where the suite looks for its own (external mode starts no server; a few tests run the CLIs).
for b in redis-server redis-cli redis-benchmark redis-check-aof redis-check-rdb; do
  [ -e "$src/src/$b" ] || ln -sf "$(command -v $b)" "$src/src/$b"
done

# --- the exceptions: "unit/file: test name" lines, each followed by an indented reason line -------------------
exception_files="$root/tests/redis-suite/exceptions.txt ${REDIS_SUITE_EXCEPTIONS:-}"
# Tests not run: skip.txt (they lack a tag this run excludes), skip-for-time.txt (unless --full).
skip_files=("$root/tests/redis-suite/skip.txt")
[ "$full" = 1 ] || skip_files+=("$root/tests/redis-suite/skip-for-time.txt")

[ -n "$units" ] || units=$(cd "$src" && "$tclsh" tests/test_helper.tcl --list-tests)
# One run at a time (they share the source tree's tests/tmp and the log folder): a second one waits.
exec 9>"$cache/lock"
flock 9
. scripts/lib.sh
logs=$cache/last-run
rm -rf "$logs"; mkdir -p "$logs"

# Four ports nothing listens on, below the kernel's ephemeral range (which the suite's many connections draw from,
# so a port free a moment ago may be taken by the time Redis binds it) and away from the suite's own 21079-21110.
# A port taken anyway makes Redis or the proxy fail to start, and the unit starts again on other ports.
free_ports() {
  local ports=() p
  while [ ${#ports[@]} -lt 4 ]; do
    p=$((12000 + RANDOM % 9000))
    [[ " ${ports[*]} " == *" $p "* ]] && continue
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || ports+=("$p")
  done
  echo "${ports[@]}"
}
# The test names listed for unit $1 in the skip files (see the exceptions format above).
skipped_tests() { [ ${#skip_files[@]} -eq 0 ] || sed -n "s|^$1: ||p" "${skip_files[@]}"; }
# Waits (5 s at most) until something listens on 127.0.0.1:PORT; fails early if process PID has exited.
port_up() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
# Stops this unit's Redis, proxy and runtest (pids holds them), and forgets them. Redis gets SIGKILL: it is a
# scratch server, and one stuck in a script that nobody killed would ignore SIGTERM until the script ends.
redis_pid=
stop_unit() {
  for pid in "${pids[@]}"; do [ "$pid" = "$redis_pid" ] || kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do [ "$pid" = "$redis_pid" ] || wait "$pid" 2>/dev/null || true; done
  if [ -n "$redis_pid" ]; then kill -9 "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
  pids=(); redis_pid=
}
trap 'stop_unit; cleanup' EXIT

mode="through the proxy${proxy_args:+ ($proxy_args)}"
[ "$direct" = 1 ] && mode="directly against Redis (no proxy)"
# The proxy's backend_links setting ("direct" without the proxy): an exception marked [shared] applies only then.
links=direct
if [ "$direct" = 0 ]; then
  # shellcheck disable=SC2086
  links=$("$proxy_bin" $proxy_args --check-config 2>/dev/null | sed -n 's/^backend_links = "\(.*\)"/\1/p')
  links=${links:-dedicated}
fi
# Tests that hang on shared links (head of line, README "Shared backend links") are left out in that mode.
[ "$links" = shared ] && skip_files+=("$root/tests/redis-suite/skip-shared.txt")
echo "redis-suite: Redis $("$(command -v redis-server)" --version | grep -o 'v=[0-9.]*') test suite $mode," \
  "$(echo $units | wc -w) unit files, tags: $tags"
# Runs unit $1 once, against a fresh Redis (and proxy), skipping the tests named in the array skips; its output
# goes to $d/runtest.log, its exit code to $d/rc.
run_unit() {
  local unit=$1 attempt
  for attempt in 1 2 3 4 5; do
    read -r rport pport aport nport < <(free_ports)
    redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$d/data" --logfile "$d/redis.log" \
      --enable-protected-configs yes --enable-debug-command yes --enable-module-command yes &
    pids+=($!); redis_pid=$!
    target=$rport
    if port_up "$rport" $! && [ "$direct" = 0 ]; then
      # shellcheck disable=SC2086  # proxy_args is a list of arguments
      "$proxy_bin" --listen "127.0.0.1:$pport" --old "127.0.0.1:$rport" --new "127.0.0.1:$nport" \
        --admin "127.0.0.1:$aport" $proxy_args >>"$d/proxy.log" 2>&1 &
      pids+=($!)
      target=$pport
    fi
    port_up "$target" "${pids[-1]}" && break
    stop_unit
    [ "$attempt" -lt 5 ] || { echo "redis-suite: could not start Redis and the proxy for $unit (logs in $d)" >&2; exit 1; }
  done
  # timeout runs the suite in its own process group and stops all of it (the test server and its client).
  TERM=dumb timeout -k 5 1200 env -C "$src" "$tclsh" tests/test_helper.tcl --host 127.0.0.1 --port "$target" \
    --single "$unit" --tags "$tags" "${skips[@]}" --durable --timeout "$hang_s" --clients 1 >"$d/runtest.log" 2>&1 &
  local suite=$!
  pids+=($suite)
  local rc=0; wait "$suite" || rc=$?
  echo "$rc" >"$d/rc"
  # Whatever is still up now must have stayed up for the whole unit.
  for pid in "${pids[@]:0:$((${#pids[@]} - 1))}"; do
    kill -0 "$pid" 2>/dev/null || echo "a server or the proxy exited during the unit" >>"$d/died"
  done
  stop_unit
}

start=$(date +%s)
for unit in $units; do
  d=$logs/${unit//\//_}
  mkdir -p "$d/data"
  skips=()
  while IFS= read -r name; do skips+=(--skiptest "$name"); done < <(skipped_tests "$unit")
  # A test that hangs (no progress for $hang_s s; the slowest test not left out takes ~10 s) ends the unit: it goes
  # on $d/hung, and the unit runs again without it, so that the tests after it still run.
  for round in 1 2 3 4 5 6 7 8; do
    run_unit "$unit"
    hung=$(grep -a '^\[TIMEOUT\]' -A3 "$d/runtest.log" | sed -n 's/.*=> (IN PROGRESS) //p' | head -1 || true)
    [ -n "$hung" ] && [ "$round" -lt 8 ] || break
    echo "$hung" >>"$d/hung"
    mv "$d/runtest.log" "$d/runtest-hung-$round.log"
    skips+=(--skiptest "$hung")
  done
  [ "$verbose" = 1 ] && cat "$d/runtest.log"
  printf '  %-40s %s\n' "$unit" "$(grep -c '^\[ok\]' "$d/runtest.log" || true) ok, $(grep -c '^\[err\]' "$d/runtest.log" || true) err$([ -f "$d/hung" ] && echo ", $(wc -l <"$d/hung") hung")$(rc=$(cat "$d/rc"); [ "$rc" = 0 ] || echo ", runtest exit $rc")"
done
elapsed=$(( $(date +%s) - start ))

# --- the summary ------------------------------------------------------------------------------------------------
python3 - "$logs" "$elapsed" "$links" $units -- $exception_files -- "${skip_files[@]}" <<'EOF'
import os, re, sys
logs, elapsed, links = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sep = sys.argv.index("--")
sep2 = sys.argv.index("--", sep + 1)
units, exc_files, skip_files = sys.argv[4:sep], sys.argv[sep + 1:sep2], sys.argv[sep2 + 1:]
to_skip = {l.rstrip("\n") for f in skip_files for l in open(f) if re.match(r"^\S+: ", l)}

expected, problems = {}, []
for path in exc_files:
    if not os.path.exists(path):
        continue
    entry = None
    for n, line in enumerate(open(path), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if line[0] in " \t":
            if entry is None:
                problems.append(f"{path}:{n}: a reason without a test")
            else:
                expected[entry] += line.strip() + " "
            continue
        m = re.match(r"^(?:\[([a-z]+)\] )?(\S+: .*)$", line.rstrip("\n"))
        if not m:
            problems.append(f"{path}:{n}: not '[mode] unit/file: test name'")
            continue
        entry = m.group(2) if m.group(1) in (None, links) else f"(for {m.group(1)}) {m.group(2)}"
        expected[entry] = ""
problems += [f"exception without a reason: {e}" for e, why in expected.items() if not why]

passed, failed, skipped, unexpected, seen, ran = 0, 0, 0, [], set(), set()
ansi = re.compile(r"\x1b\[[0-9;]*m")
for unit in units:
    d = os.path.join(logs, unit.replace("/", "_"))
    out = ansi.sub("", open(os.path.join(d, "runtest.log"), errors="replace").read())
    rc = open(os.path.join(d, "rc")).read().strip()
    fails = []
    for line in out.splitlines():
        if line.startswith("[ok]: "):
            passed += 1
            ran.add(f"{unit}: {re.sub(r' [(][0-9]+ ms[)]$', '', line[6:])}")
        elif line.startswith("[skip]: "):
            skipped += 1
            to_skip.discard(f"{unit}: {line[8:]}")
        elif line.startswith("[err]: "):
            m = re.match(r"\[err\]: (.*) in tests/\S+\.tcl$", line)
            fails.append(m.group(1) if m else "(outside a test) " + line[7:])
        elif line.startswith("[exception]: "):
            fails.append("(unit aborted) " + line[13:])
        elif "=> (IN PROGRESS) " in line and "[TIMEOUT]" in out:  # a hang in the last round
            fails.append(line.split("=> (IN PROGRESS) ", 1)[1] + " (hung: no progress)")
    hung = os.path.join(d, "hung")
    if os.path.exists(hung):
        for name in open(hung).read().splitlines():
            fails.append(f"{name} (hung: no progress, the unit ran again without it)")
            skipped -= 1
    if rc != "0" and not fails:
        fails.append(f"(unit aborted: runtest exit {rc}{', timed out' if rc == '124' else ''})")
    if os.path.exists(os.path.join(d, "died")):
        fails.append("(a server or the proxy exited during the unit)")
    for name in fails:
        failed += 1
        key = f"{unit}: {name}"
        if key in expected:
            seen.add(key)
        else:
            unexpected.append(key)

print(f"redis-suite: {len(units)} unit files in {elapsed} s (backend links: {links}); logs in {logs}")
for key in sorted(seen):
    print(f"  expected failure: {key}\n      ({expected[key].strip()})")
for key in sorted((set(expected) - seen) & ran):  # (entries for another mode never match ran)
    print(f"  listed but passed: {key}")
for key in unexpected:
    print(f"  UNEXPECTED FAILURE: {key}")
for key in sorted(to_skip):
    if key.split(":")[0] in units:
        print(f"  skip entry that matched no test: {key}")
for p in problems:
    print(f"  exceptions file: {p}")
print(f"redis-suite: {skipped} tests left out by tests/redis-suite/skip*.txt")
print(f"redis-suite: {passed} passed, {failed} failed")
sys.exit(1 if unexpected or problems else 0)
EOF
