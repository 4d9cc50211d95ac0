#!/usr/bin/env bash
# Instructions per request against the hand-rolled floor (issue 9, target 1), as docs/BENCHMARKS.md
# measures them: one side under callgrind, the other side the floor (not under valgrind); the
# callgrind total (start-up included) ÷ requests; then the floor's own figure the same way.
#
#   scripts/floor-instr.sh SIDE C W [SIZE] [IMPL]     e.g. scripts/floor-instr.sh server 10 64
#
# SIDE: server (mqnet-bench echo --listen --impl IMPL) or client (mqnet-bench echo --connect
# --peer IMPL); IMPL mqnet (default) or raw. Requests: C × 20,000 (20,000 per connection).
# SIZE: request payload bytes (default 100).
# PEERS: the folder holding mio-floor (default ../shared/peers beside the repo). PORT: first port.
# Needs valgrind. Measurement only: nothing here runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
SIDE=${1:?server or client}
C=${2:?connections}
W=${3:?in flight per connection}
SIZE=${4:-100}
IMPL=${5:-mqnet}
PEERS=${PEERS:-../shared/peers}
PORT=${PORT:-47800}
PER_CONN=20000
FLOOR="$PEERS/mio-floor"
[ -x "$FLOOR" ] || { echo "no mio-floor at $FLOOR (set PEERS)" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is needed" >&2; exit 2; }
cargo build --release -q -p mqnet-bench --bin mqnet-bench
BIN=target/release/mqnet-bench
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
REQUESTS=$((C * PER_CONN))

wait_port() {
  for _ in $(seq 1 300); do
    ss -ltn | grep -q ":$1 " && return 0
    sleep 0.2
  done
  echo "nothing listens on $1" >&2
  return 1
}

# measure NAME CMD...: runs CMD (PORT in it replaced by the port) under callgrind on the side
# named by $SIDE, the floor on the other side; prints instructions per request.
measure() {
  local name=$1 out="$DIR/$1.out" spid
  shift
  PORT=$((PORT + 1))
  local cmd=("${@//PORT/$PORT}")
  if [ "$SIDE" = server ]; then
    valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}" >/dev/null 2>&1 &
    spid=$!
    wait_port "$PORT"
    "$FLOOR" --connect "127.0.0.1:$PORT" -c "$C" -w "$W" -s "$SIZE" --count "$PER_CONN" -d 600 --warmup 0 >/dev/null
    kill -TERM "$spid"
    wait "$spid" 2>/dev/null || true
  else
    "$FLOOR" --listen "127.0.0.1:$PORT" --max-secs 900 >/dev/null 2>&1 &
    spid=$!
    wait_port "$PORT"
    valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}" >/dev/null 2>&1
    kill "$spid"
    wait "$spid" 2>/dev/null || true
  fi
  local total
  total=$(grep -h '^summary:\|^totals:' "$out" | head -1 | awk '{print $2}')
  echo "$name $SIDE C=$C W=$W S=$SIZE: $total instructions, $((total / REQUESTS)) per request"
}

if [ "$SIDE" = server ]; then
  measure "$IMPL" "$BIN" echo --listen 127.0.0.1:PORT --impl "$IMPL" -d 600
  measure floor "$FLOOR" --listen 127.0.0.1:PORT --max-secs 900
else
  measure "$IMPL" "$BIN" echo --connect 127.0.0.1:PORT --peer "$IMPL" -c "$C" -w "$W" -s "$SIZE" --count "$REQUESTS" -d 600 --warmup 0
  measure floor "$FLOOR" --connect 127.0.0.1:PORT -c "$C" -w "$W" -s "$SIZE" --count "$PER_CONN" -d 600 --warmup 0
fi
