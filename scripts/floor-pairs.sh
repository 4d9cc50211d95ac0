#!/usr/bin/env bash
# Throughput against the hand-rolled floor (issue 9, targets 3 and 5), the way docs/BENCHMARKS.md
# measures it: the server pinned to cpu0, the client to cpu1, every pair in turn within a round,
# ROUNDS rounds, medians of req/s and of the per-round ratios to floor→floor.
#
#   scripts/floor-pairs.sh [ROUNDS] [ROWS]        e.g. scripts/floor-pairs.sh 15 "16384:5"
#
# ROWS: "SIZE:INFLIGHT ..." (default "100:64 100:5 16384:5"), C=10, 3 s measured after 1 s warm-up.
# PEERS: the folder holding the reference peer mio-floor (default ../shared/peers beside the repo).
# PORT: the first of the 127.0.0.1 ports used, one per pair (default 21000: below Linux's default
# ephemeral range, 32768–60999, where a listening port can collide with a connection's own port).
# A pair whose server did not start or whose client measured nothing (rps 0) is left out of its
# round and reported on stderr; per-round ratios use the rounds where both pairs have a figure.
# Needs taskset (util-linux) and two cores. Measurement only: nothing here runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-7}
ROWS=${2:-"100:64 100:5 16384:5"}
PEERS=${PEERS:-../shared/peers}
PORT=${PORT:-21000}
FLOOR="$PEERS/mio-floor"
[ -x "$FLOOR" ] || { echo "no mio-floor at $FLOOR (set PEERS)" >&2; exit 2; }
cargo build --release -q -p mqnet-bench --bin mqnet-bench
BIN=target/release/mqnet-bench
OUT=$(mktemp)
trap 'rm -f "$OUT" "$OUT.client"' EXIT

wait_port() {
  for _ in $(seq 1 100); do
    ss -ltn | grep -q ":$1 " && return 0
    sleep 0.1
  done
  return 1
}

# pair ROW LABEL ROUND SERVER... -- CLIENT...: one pinned run; appends "ROW LABEL ROUND RPS" to
# $OUT.
pair() {
  local row=$1 label=$2 round=$3
  shift 3
  local server=() client=()
  while [ "$1" != "--" ]; do server+=("$1"); shift; done
  shift
  client=("$@")
  PORT=$((PORT + 1))
  taskset -c 0 "${server[@]//PORT/$PORT}" >/dev/null 2>&1 &
  local spid=$!
  local rps=""
  local log="$OUT.client"
  if wait_port "$PORT"; then
    rps=$(taskset -c 1 "${client[@]//PORT/$PORT}" 2>"$log" | grep -o '"rps":[0-9.]*' | head -1 | cut -d: -f2)
  else
    echo "nothing listens on $PORT" >"$log"
  fi
  kill -INT "$spid" 2>/dev/null || true
  sleep 0.2
  kill "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
  rps=${rps%%.*}
  if [ -n "$rps" ] && [ "$rps" -gt 0 ]; then
    echo "$row $label $round $rps" >>"$OUT"
  else
    echo "round $round, $row, $label on port $PORT: no figure (left out); the client said:" >&2
    tail -n 3 "$log" >&2
  fi
  return 0
}

for round in $(seq 1 "$ROUNDS"); do
  for row in $ROWS; do
    size=${row%%:*}
    w=${row##*:}
    args=(-c 10 -w "$w" -s "$size" -d 3 --warmup 1 --json)
    pair "$row" floor-floor "$round" "$FLOOR" --listen 127.0.0.1:PORT --max-secs 30 -- "$FLOOR" --connect 127.0.0.1:PORT "${args[@]}"
    pair "$row" raw-raw "$round" "$BIN" echo --listen 127.0.0.1:PORT --impl raw -d 30 -- "$BIN" echo --connect 127.0.0.1:PORT --peer raw "${args[@]}"
    pair "$row" mqnet-mqnet "$round" "$BIN" echo --listen 127.0.0.1:PORT --impl mqnet -d 30 -- "$BIN" echo --connect 127.0.0.1:PORT --peer mqnet "${args[@]}"
    pair "$row" tokio-tokio "$round" "$BIN" echo --listen 127.0.0.1:PORT --impl tokio-mt -d 30 -- "$BIN" echo --connect 127.0.0.1:PORT --peer tokio "${args[@]}"
    pair "$row" tokio-mqnet "$round" "$BIN" echo --listen 127.0.0.1:PORT --impl mqnet -d 30 -- "$BIN" echo --connect 127.0.0.1:PORT --peer tokio "${args[@]}"
  done
  echo "round $round of $ROUNDS done" >&2
done

# Medians per row and pair, and the medians of the per-round ratios the targets read.
awk '
  function median(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { k = $1 SUBSEP $2; n[k]++; v[k, n[k]] = $4; at[k, $3] = $4; rows[$1] = 1; last = $3 > last ? $3 : last }
  END {
    split("floor-floor raw-raw mqnet-mqnet tokio-tokio tokio-mqnet", order, " ")
    for (row in rows) {
      printf "%s:", row
      for (p = 1; p <= 5; p++) {
        k = row SUBSEP order[p]; m = n[k]
        for (i = 1; i <= m; i++) a[i] = v[k, i]
        med[order[p]] = m ? median(a, m) : 0
        printf "  %s %.0f K (n=%d)", order[p], med[order[p]] / 1000, m
      }
      printf "\n"
      # Per-round ratios: a pair against its reference in the same round.
      split("mqnet-mqnet/floor-floor raw-raw/floor-floor tokio-mqnet/tokio-tokio", ratios, " ")
      for (r = 1; r <= 3; r++) {
        split(ratios[r], ab, "/"); ka = row SUBSEP ab[1]; kb = row SUBSEP ab[2]; c = 0
        for (i = 1; i <= last; i++) if ((ka, i) in at && (kb, i) in at) a[++c] = at[ka, i] / at[kb, i]
        printf "    %s: medians %.2f, per-round median %.2f (%d rounds)\n", ratios[r], med[ab[2]] ? med[ab[1]] / med[ab[2]] : 0, c ? median(a, c) : 0, c
      }
    }
  }' "$OUT"
