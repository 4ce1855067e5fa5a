#!/usr/bin/env bash
# Instructions pgrelay spends per pgbench transaction, counted by callgrind:
# repeatable to about 1 % whatever else the machine does, so two builds can be
# compared on a shared machine.
#
#   benches/callgrind.sh [BINARY] [-- PGBENCH-ARGS...]
#
# BINARY defaults to target/release/pgrelay (build it first). PGBENCH-ARGS
# default to "-S" (select only); e.g. "-- -S -M prepared" or "-- -S -M extended".
# Runs `pgrelay demo` (a throw-away primary + 2 replicas, pgrelay in front)
# under callgrind, loads pgbench's tables through it, warms up with 200
# transactions, zeroes the counters, runs 4 clients x 500 transactions and
# prints the instructions per transaction. Stops everything it started.
# CALLGRIND_KEEP=DIR keeps the dump there, for callgrind_annotate.
# CALLGRIND_LISTENER=ro runs the measured transactions through the read-only
# port (reads on the replicas; the tables are still loaded through rw).
# The demo runs [pool] workers at its default (the cores available), and the
# count covers every thread: compare builds that share that default.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/release/pgrelay
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  bin=$1
  shift
fi
[ "${1:-}" = "--" ] && shift
pgbench_args=("$@")
[ ${#pgbench_args[@]} -eq 0 ] && pgbench_args=(-S)
[ -x "$bin" ] || { echo "$bin is missing: run cargo build --release" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind is required" >&2; exit 1; }

work=$(mktemp -d)
chmod 755 "$work"
demo_pid=
cleanup() {
  if [ -n "$demo_pid" ] && kill -0 "$demo_pid" 2>/dev/null; then
    kill -INT "$demo_pid" 2>/dev/null || true
    for _ in $(seq 1 600); do kill -0 "$demo_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$demo_pid" 2>/dev/null || true
  fi
  if [ -n "${CALLGRIND_KEEP:-}" ]; then cp "$work"/callgrind.out.* "$CALLGRIND_KEEP"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

: >"$work/demo.log"
valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" "$bin" demo >"$work/demo.log" 2>&1 &
demo_pid=$!
port=
ro_port=
for _ in $(seq 1 1200); do
  port=$(sed -n 's/.*through the read-write port \([0-9]*\):.*/\1/p' "$work/demo.log" | head -1)
  ro_port=$(sed -n 's/.*through the read-only port \([0-9]*\):.*/\1/p' "$work/demo.log" | head -1)
  [ -n "$port" ] && [ -n "$ro_port" ] && break
  kill -0 "$demo_pid" 2>/dev/null || { cat "$work/demo.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "pgrelay demo did not start within 120 s" >&2; cat "$work/demo.log" >&2; exit 1; }

export PGPASSWORD=app PGSSLMODE=disable
pg=(-h 127.0.0.1 -p "$port" -U app)
pgbench "${pg[@]}" -i -q -s 1 app >/dev/null 2>&1
if [ "${CALLGRIND_LISTENER:-rw}" = ro ]; then
  pg=(-h 127.0.0.1 -p "$ro_port" -U app)
  sleep 2 # the replicas replay the tables
fi
pgbench "${pg[@]}" -n -c 4 -j 1 -t 50 "${pgbench_args[@]}" app >/dev/null
callgrind_control -z "$demo_pid" >/dev/null
transactions=$((4 * 500))
pgbench "${pg[@]}" -n -c 4 -j 1 -t 500 "${pgbench_args[@]}" app >/dev/null
callgrind_control -d "$demo_pid" >/dev/null
dump=$(ls -t "$work"/callgrind.out.* | head -1)
instructions=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$dump")
[ -n "$instructions" ] || instructions=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$dump")
echo "$bin pgbench ${pgbench_args[*]}: $((instructions / transactions)) instructions per transaction ($instructions over $transactions)"
