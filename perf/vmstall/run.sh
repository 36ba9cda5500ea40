#!/usr/bin/env bash
# Does touching fresh memory stall this machine's timers? Builds perf/vmstall/vmstall.c
# and runs it idle / fresh / reuse in turn (ROUNDS times, SECONDS each), printing one
# Markdown row per run. Run it on an otherwise idle machine; see vmstall.c for what
# each mode does and perf/RESULTS.md for what it showed on the development VM.
#
#   perf/vmstall/run.sh [SECONDS] [ROUNDS]      env: CHUNK_MIB (64), PERIOD_MS (200)
set -euo pipefail
cd "$(dirname "$0")/../.."
S=${1:-20}
ROUNDS=${2:-3}
BIN=$(mktemp /tmp/vmstall.XXXXXX)
trap 'rm -f "$BIN"' EXIT
cc -O2 -pthread -o "$BIN" perf/vmstall/vmstall.c
echo "| round | mode | MiB touched | wake-ups late > 2 / > 5 / > 10 ms (all CPUs) | worst ms | moments > 5 ms on two CPUs within 2 ms |"
echo "|---|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  for mode in idle fresh reuse; do
    "$BIN" "$mode" "$S" "${CHUNK_MIB:-64}" "${PERIOD_MS:-200}" | awk -v r="$r" -v m="$mode" '
      /^mode/ { mib = $(NF - 1) }
      /^cpu/ { gsub(",", ""); o2 += $8; o5 += $11; o10 += $14; w = $16 + 0; if (w > worst) worst = w }
      /^  cpu/ { n++; cpu[n] = $2; at[n] = $(NF - 1) + 0 }
      END {
        both = 0
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
          if (cpu[i] != cpu[j] && (at[i] - at[j] <= 2 && at[j] - at[i] <= 2)) both++
        printf "| %d | %s | %d | %d / %d / %d | %.2f | %d |\n", r, m, mib, o2, o5, o10, worst, both
      }'
  done
done
