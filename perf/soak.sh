#!/usr/bin/env bash
# Soak run: a release voxd (simulated agent) under `voxd loadgen` with call churn for
# DURATION, sampling voxd every SAMPLE_SECONDS: RSS, open fds, threads (/proc) and
# calls, tokio tasks and every error counter (/metrics). Writes a CSV, a summary and
# (with gnuplot) a PNG plot, prints the drift, and exits 1 when the run was not clean:
#
#   * RSS grew more than RSS_MAX_GROWTH_PCT (default 1) %: the mean of the first 3
#     samples after the ramp and the warm-up against the mean of the last 3 (single samples move
#     with the number of calls up at that instant; the warm-up lets the allocator
#     and the per-shard pools reach their working size),
#   * fds not constant after the warm-up: voxd's open fds minus its open AudioSocket
#     connections (one per call, which churn moves) varied by more than FD_SLACK
#     (default 4: the two gauges of one /metrics scrape are read a moment apart, and
#     with churn a few connections open or close in between; the 30-minute run at
#     500 calls saw 22..26), and, strictly, voxd's open fds once the load is over
#     differ from before it,
#   * threads changed after the warm-up,
#   * any error counter moved during the run: voxd_provider_errors_total,
#     voxd_provider_failures_total, voxd_sessions_failed_total, voxd_ring_drops_total,
#     voxd_caller_audio_dropped_total, voxd_refused_calls_total,
#     voxd_protocol_errors_total, voxd_media_refused_total,
#     voxd_rtp_dropped_packets_total, ai_agent_calls_total{reason="error"}, or the
#     load generator's connect failures, calls closed by voxd and call errors,
#   * voxd did not exit 0 on SIGTERM at the end, or calls were left up after the load.
#
# Underflows, RTP loss and late packets are recorded (CSV and summary) but do not
# fail the run: they measure timing on a shared box, not leaks.
#
# usage: perf/soak.sh DURATION CALLS TRANSPORT
#   DURATION   measured time after the ramp: seconds, or with s/m/h (120, 2m, 30m)
#   CALLS      concurrent calls (half the measured capacity: ~500 AudioSocket,
#              ~750 RTP on the 2-core box, perf/RESULTS.md)
#   TRANSPORT  audiosocket | rtp
# env: HOLD_MS (mean call length with churn, default 20000), RATE (calls/s while
#      ramping, default 50), THINK_MS (sim agent think time, default 300),
#      SAMPLE_SECONDS (default 10), WARMUP_SECONDS (default max(60, DURATION/5)),
#      RSS_MAX_GROWTH_PCT (default 1), FD_SLACK (default 4), OUT (directory for
#      results; default perf/soak), PLOT (auto|0; default auto: plot if gnuplot is
#      installed), BUILD (0: use target/release/voxd as it is), PORT_BASE (ports
#      PORT_BASE..+2; default a free range picked at start).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
[[ $# -eq 3 ]] || usage
DURATION=$1 CALLS=$2 TRANSPORT=$3
case $DURATION in
  *h) DUR=$(( ${DURATION%h} * 3600 )) ;;
  *m) DUR=$(( ${DURATION%m} * 60 )) ;;
  *s) DUR=${DURATION%s} ;;
  *) DUR=$DURATION ;;
esac
[[ $DUR =~ ^[0-9]+$ && $DUR -ge 30 ]] || { echo "DURATION must be at least 30 s" >&2; exit 2; }
[[ $CALLS =~ ^[0-9]+$ && $CALLS -ge 1 ]] || usage
[[ $TRANSPORT == audiosocket || $TRANSPORT == rtp ]] || usage

HOLD_MS=${HOLD_MS:-20000}
RATE=${RATE:-50}
THINK_MS=${THINK_MS:-300}
SAMPLE=${SAMPLE_SECONDS:-10}
WARMUP=${WARMUP_SECONDS:-$(( DUR / 5 > 60 ? DUR / 5 : 60 ))}
RSS_MAX=${RSS_MAX_GROWTH_PCT:-1}
FD_SLACK=${FD_SLACK:-4}
OUT=${OUT:-perf/soak}
PLOT=${PLOT:-auto}
mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
NAME="$OUT/$STAMP-$TRANSPORT"
CSV="$NAME.csv"
WORK=$(mktemp -d /tmp/voxd-soak.XXXXXX)

if [[ ${BUILD:-1} != 0 ]]; then
  cargo build --release --locked --bin voxd >&2
fi
BIN=target/release/voxd
[[ -x $BIN ]] || { echo "soak: no $BIN (BUILD=0 needs a release build first)" >&2; exit 1; }

# Ports: PORT_BASE..+2, or three that nothing uses now.
free_port() {
  local p
  for _ in $(seq 200); do
    p=$(( 20000 + RANDOM % 30000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null \
      && ! grep -qi ":$(printf '%04X' "$p") " /proc/net/tcp /proc/net/udp /proc/net/tcp6 /proc/net/udp6 2>/dev/null; then
      echo "$p"; return
    fi
  done
  echo "no free port found" >&2; exit 1
}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# GET a path from voxd's health port (no curl needed).
http_get() {
  local body
  exec 3<>"/dev/tcp/127.0.0.1/$HEALTH" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$1" >&3
  body=$(cat <&3)
  exec 3<&-
  printf '%s\n' "$body"
}

# Start voxd on PORT_BASE..+2, or on three ports nothing uses now; a port taken
# between the check and voxd's bind (another process, a test's lingering socket) is
# retried on new ports. Waits up to READY_SECONDS for /ready; on failure the log's
# tail goes to stderr so a CI run shows why.
READY_SECONDS=${READY_SECONDS:-30}
VOXD=
LOADGEN=
start_voxd() {
  if [[ -n ${PORT_BASE:-} ]]; then
    AS_PORT=$PORT_BASE RTP_PORT=$((PORT_BASE + 1)) HEALTH=$((PORT_BASE + 2))
  else
    AS_PORT=$(free_port) RTP_PORT=$(free_port) HEALTH=$(free_port)
    while [[ $RTP_PORT == "$AS_PORT" ]]; do RTP_PORT=$(free_port); done
    while [[ $HEALTH == "$AS_PORT" || $HEALTH == "$RTP_PORT" ]]; do HEALTH=$(free_port); done
  fi
  cat >"$WORK/voxd.yaml" <<EOF
default_provider: sim
audiosocket: {host: 127.0.0.1, port: $AS_PORT, format: slin16}
external_media: {rtp_host: 127.0.0.1, rtp_port: $RTP_PORT, codec: ulaw, idle_timeout_ms: 2000}
health: {host: 127.0.0.1, port: $HEALTH}
providers: {sim: {think_ms: $THINK_MS, reply_ms: 1500}}
limits: {max_calls: $(( CALLS * 2 + 100 ))}
logging: {level: warn}
shutdown: {drain_seconds: 10}
EOF
  "$BIN" serve --config "$WORK/voxd.yaml" >"$NAME.voxd.log" 2>&1 &
  VOXD=$!
  local deadline=$(( SECONDS + READY_SECONDS ))
  while (( SECONDS < deadline )); do
    http_get /ready 2>/dev/null | head -1 | grep -q ' 200' && return 0
    kill -0 "$VOXD" 2>/dev/null || { wait "$VOXD" || true; return 2; }
    sleep 0.05
  done
  return 1
}

cleanup() {
  [[ -n $LOADGEN ]] && kill "$LOADGEN" 2>/dev/null || true
  [[ -n $VOXD ]] && kill -TERM "$VOXD" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

started=0
for attempt in 1 2 3; do
  rc=0; start_voxd || rc=$?
  if (( rc == 0 )); then started=1; break; fi
  if (( rc == 2 )) && [[ -z ${PORT_BASE:-} ]] && grep -q 'already in use' "$NAME.voxd.log"; then
    echo "soak: attempt $attempt: a port was taken before voxd bound it; new ports" >&2
    continue
  fi
  break
done
if (( started == 0 )); then
  if kill -0 "$VOXD" 2>/dev/null; then
    echo "voxd not ready after ${READY_SECONDS}s (ports $AS_PORT/$RTP_PORT/$HEALTH); log: $NAME.voxd.log" >&2
    kill -TERM "$VOXD" 2>/dev/null || true
  else
    echo "voxd exited before it was ready (ports $AS_PORT/$RTP_PORT/$HEALTH); log: $NAME.voxd.log" >&2
  fi
  echo "---- tail of the voxd log" >&2
  tail -n 30 "$NAME.voxd.log" >&2
  exit 1
fi


# Sum of every series of a metric family (labels ignored; $2 a label filter).
metric() {
  awk -v n="$1" -v f="${2:-}" '
    $1 !~ /^#/ { split($1, a, "{"); if (a[1] == n && (f == "" || index($1, f))) s += $2 }
    END { printf "%.0f", s + 0 }' "$WORK/metrics"
}

ERRORS=(voxd_provider_errors_total voxd_provider_failures_total voxd_sessions_failed_total
  voxd_ring_drops_total voxd_caller_audio_dropped_total voxd_refused_calls_total
  voxd_protocol_errors_total voxd_media_refused_total voxd_rtp_dropped_packets_total)

sample() {
  http_get /metrics >"$WORK/metrics" 2>/dev/null || return 1
  local t=$1 rss threads fds_proc
  rss=$(awk '/^VmRSS:/{print $2}' "/proc/$VOXD/status")
  threads=$(awk '/^Threads:/{print $2}' "/proc/$VOXD/status")
  fds_proc=$(find "/proc/$VOXD/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  local errs=0 e
  for e in "${ERRORS[@]}"; do errs=$(( errs + $(metric "$e") )); done
  errs=$(( errs + $(metric ai_agent_calls_total 'reason="error"') ))
  local fds as calls
  fds=$(metric process_open_fds)
  as=$(metric ai_agent_audiosocket_active_connections)
  calls=$(metric ai_agent_active_calls)
  echo "$t,$rss,$fds_proc,$fds,$as,$(( fds - as )),$threads,$calls,$(metric voxd_tokio_alive_tasks),$errs,$(metric ai_agent_stream_underflow_events_total),$(metric voxd_rtp_lost_packets_total),$(metric voxd_rtp_late_packets_total),$(metric ai_agent_calls_total)"
}

echo "t_s,rss_kib,fds_proc,fds,audiosocket_conns,fds_other,threads,active_calls,tokio_tasks,errors,underflows,rtp_lost,rtp_late,calls_ended" >"$CSV"
IDLE=$(sample 0)
echo "$IDLE" >>"$CSV"

PORT=$AS_PORT
[[ $TRANSPORT == rtp ]] && PORT=$RTP_PORT
echo "soak: $TRANSPORT, $CALLS calls, churn mean ${HOLD_MS} ms, ${DUR} s after the ramp, warm-up ${WARMUP} s, sample every ${SAMPLE} s; voxd pid $VOXD" >&2
"$BIN" loadgen --transport "$TRANSPORT" --port "$PORT" --calls "$CALLS" --rate "$RATE" \
  --seconds "$DUR" --hold "$HOLD_MS" --think-ms "$THINK_MS" --pid "$VOXD" -q \
  --json "$NAME.loadgen.json" >"$NAME.loadgen.txt" 2>&1 &
LOADGEN=$!
START=$(date +%s)
NEXT=$(( START + SAMPLE ))
while kill -0 "$LOADGEN" 2>/dev/null; do
  NOW=$(date +%s)
  if (( NOW >= NEXT )); then
    if ! kill -0 "$VOXD" 2>/dev/null; then echo "voxd died; log: $NAME.voxd.log" >&2; exit 1; fi
    line=$(sample $(( NOW - START ))) && echo "$line" >>"$CSV"
    [[ -n ${line:-} ]] && echo "  $line" >&2
    NEXT=$(( NEXT + SAMPLE ))
  fi
  sleep 1
done
LG_STATUS=0
wait "$LOADGEN" || LG_STATUS=$?
LOADGEN=

# After the load: every call ends (RTP ones by idle timeout), then SIGTERM.
for _ in $(seq 100); do
  http_get /metrics >"$WORK/metrics" 2>/dev/null
  [[ $(metric ai_agent_active_calls) == 0 && $(metric ai_agent_audiosocket_active_connections) == 0 ]] && break
  sleep 0.1
done
AFTER=$(sample "$(( $(date +%s) - START ))")
LEFT=$(echo "$AFTER" | cut -d, -f8)
kill -TERM "$VOXD"
VOXD_STATUS=0
wait "$VOXD" || VOXD_STATUS=$?
trap 'rm -rf "$WORK"' EXIT

# Drift over the samples after the warm-up (the idle first row is t=0).
# The window: from the end of the ramp plus the warm-up to the end of the measured
# time (the load generator then closes every call).
RAMP=$(( (CALLS + RATE - 1) / RATE ))
read -r -a S <<<"$(awk -F, -v lo="$(( RAMP + WARMUP ))" -v hi="$(( RAMP + DUR ))" 'NR > 2 && $1 >= lo && $1 <= hi { print }' "$CSV" | tr '\n' ' ')"
N=${#S[@]}
if (( N < 2 )); then echo "too few samples after the warm-up ($N): lengthen DURATION" >&2; exit 1; fi
printf '%s\n' "${S[@]}" >"$WORK/post"
SUMMARY=$(awk -F, -v max="$RSS_MAX" -v slack="$FD_SLACK" -v n="$N" '
  { t[NR]=$1; rss[NR]=$2; fo[NR]=$6; th[NR]=$7; fd[NR]=$4; calls[NR]=$8; tasks[NR]=$9; err[NR]=$10; uf[NR]=$11; lost[NR]=$12; ended[NR]=$14 }
  END {
    k = (n >= 6) ? 3 : 1
    for (i = 1; i <= k; i++) { a += rss[i]; b += rss[n - k + i] }
    a /= k; b /= k
    g = (b - a) / a * 100
    fmin = fo[1]; fmax = fo[1]; tmin = th[1]; tmax = th[1]; rmin = rss[1]; rmax = rss[1]
    for (i = 1; i <= n; i++) {
      if (fo[i] < fmin) fmin = fo[i]; if (fo[i] > fmax) fmax = fo[i]
      if (th[i] < tmin) tmin = th[i]; if (th[i] > tmax) tmax = th[i]
      if (rss[i] < rmin) rmin = rss[i]; if (rss[i] > rmax) rmax = rss[i]
    }
    printf "post-warm-up samples: %d (t=%s..%s s)\n", n, t[1], t[n]
    printf "RSS KiB: first %d, last %d, min %d, max %d; mean of first %d %.0f, of last %d %.0f: drift %+.2f %% (limit %s %%)\n", rss[1], rss[n], rmin, rmax, k, a, k, b, g, max
    ce = ended[n] - ended[1]
    if (ce > 0) printf "RSS growth per call ended in the window: %+.0f KiB over %d calls = %+.2f KiB per call (an upper bound on a per-call leak)\n", b - a, ce, (b - a) / ce
    printf "fds (minus AudioSocket connections): min %d, max %d (slack %d); fds with calls: first %d, last %d\n", fmin, fmax, slack, fd[1], fd[n]
    printf "threads: min %d, max %d\n", tmin, tmax
    printf "calls up: first %d, last %d; tokio tasks: first %d, last %d\n", calls[1], calls[n], tasks[1], tasks[n]
    printf "underflows %d, rtp lost %d (recorded, not failing)\n", uf[n], lost[n]
    bad = 0
    if (g > max) { print "FAIL: RSS grew more than the limit"; bad = 1 }
    if (fmax - fmin > slack) { print "FAIL: fds not constant"; bad = 1 }
    if (tmax != tmin) { print "FAIL: thread count changed"; bad = 1 }
    exit bad
  }' "$WORK/post") && DRIFT_OK=1 || DRIFT_OK=0

FIRST_ERR=$(echo "$IDLE" | cut -d, -f10)
LAST_ERR=$(echo "$AFTER" | cut -d, -f10)
LG_LINE=$(grep -m1 '^loadgen: calls started' "$NAME.loadgen.txt" || true)
num() { echo "$LG_LINE" | grep -o "$1 [0-9]*" | awk '{print $NF}'; }
LG_ERR=$(( $(num 'connect failures' || echo 0) + $(num 'closed by voxd' || echo 0) + $(num 'call errors' || echo 0) ))
IDLE_FDS=$(echo "$IDLE" | cut -d, -f4)
AFTER_FDS=$(echo "$AFTER" | cut -d, -f4)

{
  echo "soak $STAMP: $TRANSPORT, $CALLS calls, churn mean $HOLD_MS ms, $DUR s after the ramp, warm-up $WARMUP s, samples every $SAMPLE s"
  echo "voxd $("$BIN" --version 2>/dev/null || echo '?'), $(nproc) cores, $(uname -r)"
  echo "$SUMMARY"
  echo "error counters: $FIRST_ERR at start, $LAST_ERR at the end; load generator: ${LG_LINE:-no summary line}"
  echo "after the load: calls up $LEFT, fds $AFTER_FDS (idle before the load: $IDLE_FDS); voxd exit status on SIGTERM: $VOXD_STATUS; loadgen exit status: $LG_STATUS"
} | tee "$NAME.txt"

FAIL=0
(( DRIFT_OK == 1 )) || FAIL=1
if (( LAST_ERR != FIRST_ERR || LG_ERR != 0 )); then echo "FAIL: error counters moved" | tee -a "$NAME.txt"; FAIL=1; fi
if [[ $AFTER_FDS != "$IDLE_FDS" ]]; then echo "FAIL: fds after the load differ from before it" | tee -a "$NAME.txt"; FAIL=1; fi
if [[ $LEFT != 0 ]]; then echo "FAIL: calls left up after the load" | tee -a "$NAME.txt"; FAIL=1; fi
if (( VOXD_STATUS != 0 || LG_STATUS != 0 )); then echo "FAIL: exit status" | tee -a "$NAME.txt"; FAIL=1; fi

if [[ $PLOT != 0 ]] && command -v gnuplot >/dev/null; then
  gnuplot <<EOF && echo "plot: $NAME.png" >&2
set terminal pngcairo size 1000,600 noenhanced
set output "$NAME.png"
set datafile separator ","
set title "voxd soak $STAMP: $TRANSPORT, $CALLS calls, churn mean $HOLD_MS ms"
set xlabel "seconds since the load started"
set ylabel "RSS MiB"
set y2label "count"
set y2tics
set ytics nomirror
set key outside bottom center horizontal
set arrow from $(( RAMP + WARMUP )), graph 0 to $(( RAMP + WARMUP )), graph 1 nohead dt 2
plot "$CSV" every ::2 using 1:(\$2/1024) with linespoints title "RSS MiB", \
     "" every ::2 using 1:6 axes x1y2 with lines title "fds minus AudioSocket conns", \
     "" every ::2 using 1:7 axes x1y2 with lines title "threads", \
     "" every ::2 using 1:9 axes x1y2 with lines title "tokio tasks", \
     "" every ::2 using 1:10 axes x1y2 with lines title "errors"
EOF
elif [[ $PLOT != 0 ]]; then
  echo "no gnuplot: no plot (apt-get install gnuplot-nox)" >&2
fi
echo "results: $NAME.{csv,txt,loadgen.json,loadgen.txt,voxd.log}" >&2
if (( FAIL )); then echo "soak: FAIL" >&2; exit 1; fi
echo "soak: pass" >&2
