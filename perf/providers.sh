#!/usr/bin/env bash
# Capacity runs through a provider protocol simulator over real WebSockets: for each
# provider and call count, `voxd loadgen --provider P --spawn perf/configs/P.yaml`
# (a fresh voxd per run, the simulator inside the load generator, everything on
# this machine), one Markdown table row per run.
#
# usage: perf/providers.sh [CALLS...]          (default: 200 500 1000)
# env: PROVIDERS (default "openai_realtime"), TRANSPORT (audiosocket | rtp,
#      default audiosocket), SECONDS_PER_RUN (default 10), RATE (calls/s, default
#      200), THINK_MS (default 300), REPLY_MS (default 1500), SIM_THREADS (default 1),
#      OUT (directory for JSON and logs), HEADER (0: no table header), VOXD_BIN
#      (a voxd binary to run as both load generator and voxd, e.g. for an A/B of
#      two builds; default: build and use target/release/voxd).
# Columns as perf/loadgen.sh; "sim cores" is the load generator process, which
# also runs the provider simulator.
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS=${*:-200 500 1000}
PROVIDERS=${PROVIDERS:-openai_realtime}
TRANSPORT=${TRANSPORT:-audiosocket}
SECS=${SECONDS_PER_RUN:-10}
RATE=${RATE:-200}
THINK_MS=${THINK_MS:-300}
REPLY_MS=${REPLY_MS:-1500}
SIM_THREADS=${SIM_THREADS:-1}
HEADER=${HEADER:-1}
OUT=${OUT:-$(mktemp -d /tmp/voxd-providers.XXXXXX)}
mkdir -p "$OUT"

command -v jq >/dev/null || { echo "perf/providers.sh needs jq" >&2; exit 1; }
if [[ -n ${VOXD_BIN:-} ]]; then
  BIN=$VOXD_BIN
else
  cargo build --release --bin voxd >&2
  BIN=target/release/voxd
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

[[ $HEADER == 1 ]] && echo "| provider | transport | calls | p50 dev ms | p99 dev ms | p99.9 dev ms | gaps | turns unanswered | voxd cpu us/call-s | voxd cores | voxd rss KiB/call | loadgen+sim cores | loadgen late ticks | violations | SLO |"
[[ $HEADER == 1 ]] && echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for p in $PROVIDERS; do
  for n in $CALLS; do
    json="$OUT/$p-$TRANSPORT-$n.json"
    txt="$OUT/$p-$TRANSPORT-$n.txt"
    "$BIN" loadgen --provider "$p" --spawn "perf/configs/$p.yaml" --transport "$TRANSPORT" \
      --calls "$n" --rate "$RATE" --seconds "$SECS" --think-ms "$THINK_MS" \
      --reply-ms "$REPLY_MS" --sim-threads "$SIM_THREADS" --json "$json" -q >"$txt" 2>&1 \
      || { echo "| $p | $TRANSPORT | $n | run failed: see $txt |"; continue; }
    viol=$(grep -o 'protocol violations: [^ ]*' "$txt" | awk '{print $3}')
    jq -r --arg p "$p" --arg t "$TRANSPORT" --arg v "${viol:-?}" '
      def ms: . / 1000 | (. * 1000 | round) / 1000;
      "| \($p) | \($t) | \(.calls) | \(.inter_arrival_dev_us.p50 | ms) | \(.inter_arrival_dev_us.p99 | ms) | \(.inter_arrival_dev_us.p999 | ms) | \(.gaps) | \(.counts.turns_unanswered // "?") | \(.process.cpu_us_per_call_second // 0 | round) | \(.process.cores_busy // 0 | . * 100 | round / 100) | \((.process.after.rss_bytes // 0) / .calls / 1024 | round) | \(.loadgen.process.cores_busy // 0 | . * 100 | round / 100) | \(.counts.caller_late_ticks) | \($v) | \(if .slo.pass then "pass" else "FAIL" end) |"
    ' "$json"
    sleep 2
  done
done
echo "JSON and logs: $OUT" >&2
