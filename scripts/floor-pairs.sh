#!/usr/bin/env bash
# Throughput against the hand-rolled floor (issue 9, targets 3 and 5), the way docs/BENCHMARKS.md
# measures it: the server pinned to cpu0, the client to cpu1, every pair in turn within a round,
# ROUNDS rounds, medians of req/s and of the per-round ratios to floor→floor.
#
#   scripts/floor-pairs.sh [ROUNDS] [ROWS]        e.g. scripts/floor-pairs.sh 15 "16384:5"
#
# ROWS: "SIZE:INFLIGHT ..." (default "100:64 100:5 16384:5"), C=10, 3 s measured after 1 s warm-up.
# PEERS: the folder holding the reference peer mio-floor (default ../shared/peers beside the repo).
# PORT: the first of the 127.0.0.1 ports used, one per pair (default 49000).
# Needs taskset (util-linux) and two cores. Measurement only: nothing here runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-7}
ROWS=${2:-"100:64 100:5 16384:5"}
PEERS=${PEERS:-../shared/peers}
PORT=${PORT:-49000}
FLOOR="$PEERS/mio-floor"
[ -x "$FLOOR" ] || { echo "no mio-floor at $FLOOR (set PEERS)" >&2; exit 2; }
cargo build --release -q -p mqnet-bench --bin mqnet-bench
BIN=target/release/mqnet-bench
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT

wait_port() {
  for _ in $(seq 1 100); do
    ss -ltn | grep -q ":$1 " && return 0
    sleep 0.1
  done
  return 1
}

# pair ROW LABEL SERVER... -- CLIENT...: one pinned run; appends "ROW LABEL RPS" to $OUT.
pair() {
  local row=$1 label=$2
  shift 2
  local server=() client=()
  while [ "$1" != "--" ]; do server+=("$1"); shift; done
  shift
  client=("$@")
  PORT=$((PORT + 1))
  taskset -c 0 "${server[@]//PORT/$PORT}" >/dev/null 2>&1 &
  local spid=$!
  local rps=""
  if wait_port "$PORT"; then
    rps=$(taskset -c 1 "${client[@]//PORT/$PORT}" 2>/dev/null | grep -o '"rps":[0-9.]*' | head -1 | cut -d: -f2)
  fi
  kill -INT "$spid" 2>/dev/null || true
  sleep 0.2
  kill "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
  [ -n "$rps" ] && echo "$row $label ${rps%%.*}" >>"$OUT"
  return 0
}

for round in $(seq 1 "$ROUNDS"); do
  for row in $ROWS; do
    size=${row%%:*}
    w=${row##*:}
    args=(-c 10 -w "$w" -s "$size" -d 3 --warmup 1 --json)
    pair "$row" floor-floor "$FLOOR" --listen 127.0.0.1:PORT --max-secs 30 -- "$FLOOR" --connect 127.0.0.1:PORT "${args[@]}"
    pair "$row" raw-raw "$BIN" echo --listen 127.0.0.1:PORT --impl raw -d 30 -- "$BIN" echo --connect 127.0.0.1:PORT --peer raw "${args[@]}"
    pair "$row" mqnet-mqnet "$BIN" echo --listen 127.0.0.1:PORT --impl mqnet -d 30 -- "$BIN" echo --connect 127.0.0.1:PORT --peer mqnet "${args[@]}"
    pair "$row" tokio-tokio "$BIN" echo --listen 127.0.0.1:PORT --impl tokio-mt -d 30 -- "$BIN" echo --connect 127.0.0.1:PORT --peer tokio "${args[@]}"
    pair "$row" tokio-mqnet "$BIN" echo --listen 127.0.0.1:PORT --impl mqnet -d 30 -- "$BIN" echo --connect 127.0.0.1:PORT --peer tokio "${args[@]}"
  done
  echo "round $round of $ROUNDS done" >&2
done

# Medians per row and pair, and the medians of the per-round ratios the targets read.
awk '
  function median(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { k = $1 SUBSEP $2; n[k]++; v[k, n[k]] = $3; rows[$1] = 1; pairs[$2] = 1 }
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
      # Per-round ratios: the i-th run of a pair against the i-th run of its reference.
      split("mqnet-mqnet/floor-floor raw-raw/floor-floor tokio-mqnet/tokio-tokio", ratios, " ")
      for (r = 1; r <= 3; r++) {
        split(ratios[r], ab, "/"); ka = row SUBSEP ab[1]; kb = row SUBSEP ab[2]
        m = n[ka] < n[kb] ? n[ka] : n[kb]; c = 0
        for (i = 1; i <= m; i++) if (v[kb, i] > 0) a[++c] = v[ka, i] / v[kb, i]
        printf "    %s: medians %.2f, per-round median %.2f\n", ratios[r], med[ab[2]] ? med[ab[1]] / med[ab[2]] : 0, c ? median(a, c) : 0
      }
    }
  }' "$OUT"
