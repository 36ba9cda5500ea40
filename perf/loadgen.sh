#!/usr/bin/env bash
# Capacity runs: start a release voxd with a config, run `voxd loadgen` against it for
# each call count and both transports, print one Markdown table row per run.
#
# usage: perf/loadgen.sh [CONFIG] [CALLS...]
#   CONFIG   voxd config (default: a generated sim-agent config, ports 18490/18491)
#   CALLS    call counts (default: 100 500 1000 2000)
# env: SECONDS_PER_RUN (default 30), RATE (calls/s, default 200), TRANSPORTS
#      (default "audiosocket rtp"), THINK_MS (default 300), THREADS (default 1),
#      BACKEND (engine.io_backend of the generated config: auto, io_uring, epoll;
#      default auto), EXTRA (extra loadgen arguments), OUT (directory for JSON and
#      logs), HEADER (0: no table header), VOXD_BIN (the voxd binary to serve with;
#      default the fresh release build), LOADGEN_BIN (the binary whose `loadgen`
#      runs the load; default the fresh release build).
#
# The config's audiosocket.format must be slin16 (or pass EXTRA="--rate-hz 8000" with
# format: slin) and external_media.codec ulaw (or EXTRA="--codec alaw").
# Columns: deviation of voxd's frame inter-arrival from 20 ms (ms), gaps caused by
# voxd, voxd CPU us per call-second, voxd RSS growth per call over the window, and
# the load generator's own CPU (share of one core) and late ticks (nonzero: the load
# generator fell behind and the figures are suspect).
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${1:-}
shift || true
CALLS=${*:-100 500 1000 2000}
SECS=${SECONDS_PER_RUN:-30}
RATE=${RATE:-200}
TRANSPORTS=${TRANSPORTS:-audiosocket rtp}
THINK_MS=${THINK_MS:-300}
THREADS=${THREADS:-1}
BACKEND=${BACKEND:-auto}
HEADER=${HEADER:-1}
EXTRA=${EXTRA:-}
OUT=${OUT:-$(mktemp -d /tmp/voxd-loadgen.XXXXXX)}
mkdir -p "$OUT"

command -v jq >/dev/null || { echo "perf/loadgen.sh needs jq" >&2; exit 1; }
cargo build --release --bin voxd >&2
BIN=target/release/voxd
SERVE_BIN=${VOXD_BIN:-$BIN}
LG_BIN=${LOADGEN_BIN:-$BIN}

if [[ -z "$CONFIG" ]]; then
  CONFIG="$OUT/voxd.yaml"
  cat >"$CONFIG" <<EOF
default_provider: sim
audiosocket: {host: 127.0.0.1, port: 18490, format: slin16}
external_media: {rtp_host: 127.0.0.1, rtp_port: 18491, codec: ulaw, idle_timeout_ms: 2000}
health: {host: 127.0.0.1, port: 18492}
providers: {sim: {think_ms: $THINK_MS, reply_ms: 1500}}
logging: {level: warn}
engine: {io_backend: $BACKEND}
EOF
fi
AS_PORT=$("$BIN" check --config "$CONFIG" 2>/dev/null | awk '/^audiosocket:/{a=1} a&&/^  port:/{print $2; exit}')
RTP_PORT=$("$BIN" check --config "$CONFIG" 2>/dev/null | awk '/^  rtp_port:/{print $2; exit}')

# Enough fds for every call on both sides.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

"$SERVE_BIN" serve --config "$CONFIG" >"$OUT/voxd.log" 2>&1 &
VOXD=$!
trap 'kill -TERM $VOXD 2>/dev/null; wait $VOXD 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$AS_PORT") 2>/dev/null && break
  sleep 0.1
done

BK=$(grep -o 'io backend [a-z_]*' "$OUT/voxd.log" | head -1 | awk '{print $3}')
[[ $HEADER == 1 ]] && echo "| transport | backend | calls | p50 dev ms | p99 dev ms | p99.9 dev ms | gaps | voxd cpu us/call-s | voxd cores | voxd rss KiB/call | loadgen cores | loadgen late ticks | SLO |"
[[ $HEADER == 1 ]] && echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for n in $CALLS; do
  for t in $TRANSPORTS; do
    port=$AS_PORT
    [[ $t == rtp ]] && port=$RTP_PORT
    json="$OUT/$t-$n.json"
    # shellcheck disable=SC2086
    "$LG_BIN" loadgen --transport "$t" --port "$port" --calls "$n" --rate "$RATE" \
      --seconds "$SECS" --think-ms "$THINK_MS" --threads "$THREADS" --pid "$VOXD" \
      --json "$json" -q $EXTRA >"$OUT/$t-$n.txt" 2>&1 || { echo "| $t | $BK | $n | run failed: see $OUT/$t-$n.txt |"; continue; }
    jq -r --arg t "$t" --arg bk "$BK" '
      def ms: . / 1000 | (. * 1000 | round) / 1000;
      "| \($t) | \($bk) | \(.calls) | \(.inter_arrival_dev_us.p50 | ms) | \(.inter_arrival_dev_us.p99 | ms) | \(.inter_arrival_dev_us.p999 | ms) | \(.gaps) | \(.process.cpu_us_per_call_second // 0 | round) | \(.process.cores_busy // 0 | . * 100 | round / 100) | \((.process.after.rss_bytes // 0) / .calls / 1024 | round) | \(.loadgen.process.cores_busy // 0 | . * 100 | round / 100) | \(.counts.caller_late_ticks) | \(if .slo.pass then "pass" else "FAIL" end) |"
    ' "$json"
    # Let voxd end the previous calls (RTP calls end by idle timeout).
    sleep 3
  done
done
echo "JSON and logs: $OUT" >&2
