#!/usr/bin/env bash
# A/B two voxd builds under the same load: runs perf/loadgen.sh against each binary in
# turn (A, B, A, B, ...) so that drift on a shared machine hits both alike, with the
# same load generator (the current release build) every time, and prints every row
# plus the median of each column per binary and transport.
#
# usage: perf/ab.sh BIN_A BIN_B [CALLS] [RUNS]
#   CALLS  concurrent calls (default 500); RUNS pairs (default 3)
# env: as perf/loadgen.sh (SECONDS_PER_RUN default 10 here, RATE default 400,
#      TRANSPORTS default "audiosocket rtp", BACKEND, THINK_MS, EXTRA);
#      AB=loadgen: BIN_A and BIN_B are the binaries whose `loadgen` runs the load
#      (voxd is the current release build both times), to compare load generators;
#      EXTRA_A / EXTRA_B: loadgen arguments for one side only.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$(realpath "$1"); B=$(realpath "$2")
CALLS=${3:-500}
RUNS=${4:-3}
export SECONDS_PER_RUN=${SECONDS_PER_RUN:-10} RATE=${RATE:-400}
TRANSPORTS=${TRANSPORTS:-audiosocket rtp}
OUT=$(mktemp -d /tmp/voxd-ab.XXXXXX)
rows="$OUT/rows.md"
: >"$rows"
echo "| run | transport | backend | calls | p50 dev ms | p99 dev ms | p99.9 dev ms | gaps | voxd cpu us/call-s | voxd cores | voxd rss KiB/call | loadgen cores | loadgen late ticks | SLO |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for r in $(seq "$RUNS"); do
  for side in A B; do
    bin=$A; [[ $side == B ]] && bin=$B
    for t in $TRANSPORTS; do
      extra=${EXTRA_A:-}; [[ $side == B ]] && extra=${EXTRA_B:-}
      if [[ ${AB:-voxd} == loadgen ]]; then which=LOADGEN_BIN; else which=VOXD_BIN; fi
      env "$which=$bin" EXTRA="${EXTRA:-} $extra" TRANSPORTS=$t HEADER=0 OUT="$OUT/$side-$t-$r" \
        perf/loadgen.sh "" "$CALLS" \
        | sed "s/^|/| $side |/" | tee -a "$rows"
    done
  done
done
for t in $TRANSPORTS; do
  for side in A B; do
    grep -F "| $side | $t |" "$rows" | awk -F'|' -v t="$t" -v s="$side" -v n="$CALLS" '
      { for (c = 6; c <= 14; c++) v[c, NR] = $c + 0; rows = NR }
      END {
        if (rows == 0) exit
        printf "| %s median of %d | %s | | %s |", s, rows, t, n
        for (c = 6; c <= 14; c++) {
          for (i = 1; i <= rows; i++) a[i] = v[c, i]
          for (i = 2; i <= rows; i++) { x = a[i]; j = i - 1; while (j > 0 && a[j] > x) { a[j + 1] = a[j]; j-- } a[j + 1] = x }
          m = (rows % 2) ? a[(rows + 1) / 2] : (a[rows / 2] + a[rows / 2 + 1]) / 2
          printf " %s |", m
        }
        print " |"
      }'
  done
done
echo "A=$A B=$B rows and logs: $OUT" >&2
