#!/usr/bin/env bash
# epoll vs io_uring: the same load against voxd with each I/O backend, repeated, and
# the median of each column. Runs perf/loadgen.sh (so it needs jq).
#
# usage: perf/backends.sh [CALLS] [RUNS]
#   CALLS  concurrent calls (default 500); RUNS per backend and transport (default 3)
# env: SECONDS_PER_RUN (default 10), RATE (default 400), TRANSPORTS (default
#      "audiosocket rtp").
# Prints one Markdown row per run and a median row per backend and transport.
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${1:-500}
RUNS=${2:-3}
export SECONDS_PER_RUN=${SECONDS_PER_RUN:-10} RATE=${RATE:-400}
TRANSPORTS=${TRANSPORTS:-audiosocket rtp}
OUT=$(mktemp -d /tmp/voxd-backends.XXXXXX)
rows="$OUT/rows.md"
: >"$rows"
echo "| transport | backend | calls | p50 dev ms | p99 dev ms | p99.9 dev ms | gaps | voxd cpu us/call-s | voxd cores | voxd rss KiB/call | loadgen cores | loadgen late ticks | SLO |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for r in $(seq "$RUNS"); do
  for b in epoll io_uring; do
    for t in $TRANSPORTS; do
      # Alternate the backends run by run so drift in the machine hits both alike.
      BACKEND=$b TRANSPORTS=$t HEADER=0 OUT="$OUT/$b-$t-$r" perf/loadgen.sh "" "$CALLS" | tee -a "$rows"
    done
  done
done
# Median per (transport, backend) of the numeric columns 4..12.
for t in $TRANSPORTS; do
  for b in epoll io_uring; do
    grep -F "| $t | $b |" "$rows" | awk -F'|' -v t="$t" -v b="$b" -v n="$CALLS" '
      { for (c = 5; c <= 13; c++) v[c, NR] = $c + 0; rows = NR }
      END {
        printf "| %s | %s | %s (median of %d) |", t, b, n, rows
        for (c = 5; c <= 13; c++) {
          for (i = 1; i <= rows; i++) a[i] = v[c, i]
          # insertion sort
          for (i = 2; i <= rows; i++) { x = a[i]; j = i - 1; while (j > 0 && a[j] > x) { a[j + 1] = a[j]; j-- } a[j + 1] = x }
          m = (rows % 2) ? a[(rows + 1) / 2] : (a[rows / 2] + a[rows / 2 + 1]) / 2
          printf " %s |", m
        }
        print " |"
      }'
  done
done
