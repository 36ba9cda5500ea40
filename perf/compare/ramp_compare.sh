#!/usr/bin/env bash
# The same call ramp against the reference engine (AVA, Python) and voxd, both driven
# by voxd's ARI emulator and talking to voxd's OpenAI Realtime simulator; one table.
#
#   perf/compare/ramp_compare.sh <path-to-AVA-checkout> [STEPS...]     (default 5 10 20 40 80)
#
# Per engine (AVA first, then voxd) and per step (concurrent calls), all on loopback:
#   1. the engine starts as soon as the emulator's port opens (a subshell that waits
#      for it and then execs the engine, so its pid is known up front);
#   2. `voxd loadgen --via ari --transport audiosocket --rate-hz 8000 --provider
#      openai_realtime --calls N --rate RATE --seconds WINDOW --pid <engine> --json`
#      places the callers into the engine's Stasis app, plays and measures the media
#      legs the engine originates, runs the OpenAI Realtime simulator, and reads the
#      engine's CPU and RSS from /proc over the measured window;
#   3. tcpdump (when installed; PCAP=0 to skip) records the engine -> caller AudioSocket
#      stream so the frame timing can be taken while the agent speaks (AVA sends audio
#      only then; voxd sends silence frames between utterances; see ramp_report.py);
#   4. everything is stopped, ports are waited free, and the step's figures go to
#      $OUT_DIR/<engine>/<calls>/result.json.
# An engine's ramp stops EXTRA (default 1) steps after its first failing step (SLO
# missed, calls that never reached media or heard no agent audio; STOP=hard: only the
# latter). At the end
# ramp_report.py writes $OUT_DIR/table.md (per-step table + summary) and prints it.
#
# Both engines get the same job: AudioSocket slin (8 kHz) legs, OpenAI Realtime with
# 24 kHz PCM both ways (AVA's default; voxd set to pcm24k), server VAD with 1,000 ms
# silence (AVA's default; voxd set to match), the same greeting, barge-in and log level
# at each engine's defaults (on / info).
#
# Environment (all optional):
#   WINDOW=30 RATE=4      measured window (s) and calls started per second
#   ENGINES="ava voxd"    which engines, in this order
#   EXTRA=1               steps run after an engine's first failing step
#   STOP=slo|hard         what ends an engine's ramp (after EXTRA more steps): slo = the
#                         first step that misses the SLO; hard = the first step where calls
#                         never reached media or never heard the agent (timing misses go on:
#                         use it on a noisy shared machine to find the knee)
#   OUT_DIR               logs and results (default: a new /tmp/voxd-ramp-compare.XXXXXX)
#   VOXD                  voxd binary (default <repo>/target/release/voxd)
#   AVA_VENV              venv from setup_reference.sh (default ~/.cache/voxd-compare/ava-venv)
#   PCAP=auto|0|1         capture the engine's audio with tcpdump (auto: if installed)
#   SPLIT_MS=250          capture intervals longer than this are pauses between utterances
#   AVA_LOG_LEVEL=info    AVA's LOG_LEVEL (its default; voxd stays at its default, info)
#   EMU_PORT AS_PORT HEALTH_PORT SIM_PORT RTP_PORT   ports (28089 28090 28150 28765 28100;
#                         RTP_PORT is voxd's unused external_media port)
# The load generator and the engines run at normal priority; nothing else is pinned.
set -euo pipefail

die() { echo "ramp_compare: $*" >&2; exit 1; }
say() { echo "ramp_compare: $*" >&2; }

[ $# -ge 1 ] || die "usage: $0 <path-to-AVA-checkout> [STEPS...]"
AVA="$(cd "$1" 2>/dev/null && pwd)" || die "no such directory: $1"
shift
STEPS=("$@"); [ ${#STEPS[@]} -gt 0 ] || STEPS=(5 10 20 40 80)
for s in "${STEPS[@]}"; do [[ "$s" =~ ^[1-9][0-9]*$ ]] || die "steps must be positive integers, got '$s'"; done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VOXD="${VOXD:-$REPO/target/release/voxd}"
[ -x "$VOXD" ] || die "voxd binary not found at $VOXD (cargo build --release, or set VOXD)"
VENV="${AVA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/voxd-compare/ava-venv}"
PY="$VENV/bin/python"
ENGINES="${ENGINES:-ava voxd}"
if [[ " $ENGINES " == *" ava "* ]]; then
  for f in main.py src/engine.py config/ai-agent.yaml; do
    [ -f "$AVA/$f" ] || die "$AVA does not look like an AVA checkout (missing $f)"
  done
  [ -x "$PY" ] || die "no venv at $VENV: run perf/compare/setup_reference.sh $AVA first (or set AVA_VENV)"
else
  PY="$(command -v python3)" || die "python3 not found"
fi
WINDOW="${WINDOW:-30}"; RATE="${RATE:-4}"; EXTRA="${EXTRA:-1}"; SPLIT_MS="${SPLIT_MS:-250}"
STOP="${STOP:-slo}"
case "$STOP" in slo|hard) ;; *) die "STOP must be slo or hard, got '$STOP'" ;; esac
EMU_PORT="${EMU_PORT:-28089}"; AS_PORT="${AS_PORT:-28090}"
HEALTH_PORT="${HEALTH_PORT:-28150}"; SIM_PORT="${SIM_PORT:-28765}"; RTP_PORT="${RTP_PORT:-28100}"
AVA_LOG_LEVEL="${AVA_LOG_LEVEL:-info}"
PCAP="${PCAP:-auto}"
if [ "$PCAP" = auto ]; then command -v tcpdump >/dev/null && PCAP=1 || PCAP=0; fi
[ "$PCAP" = 0 ] || command -v tcpdump >/dev/null || die "PCAP=1 but tcpdump is not installed"
GREETING="Hello, how can I help you today?"

OUT="${OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/voxd-ramp-compare.XXXXXX")}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
say "results in $OUT"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "voxd: $VOXD ($("$VOXD" --version 2>/dev/null || true)) repo $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "ava: $AVA $(git -C "$AVA" rev-parse HEAD 2>/dev/null || echo '(not a git checkout)')"
  echo "cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1), $(nproc) cpus; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "steps: ${STEPS[*]}; engines: $ENGINES; window $WINDOW s; rate $RATE/s; stop $STOP + $EXTRA; pcap $PCAP; AVA LOG_LEVEL $AVA_LOG_LEVEL"
} >> "$OUT/run.txt"

# ----------------------------------------------------------------- process hygiene
PIDS=()
stop_pid() {  # stop_pid PID SIGNAL GRACE_S
  local p="$1" sig="$2" grace="$3" i
  kill -0 "$p" 2>/dev/null || { wait "$p" 2>/dev/null || true; return 0; }
  kill -"$sig" "$p" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
cleanup() {
  local p
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && stop_pid "$p" TERM 5; done
  PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ports_free() {
  "$PY" - "$@" <<'EOF'
import socket, sys
for p in map(int, sys.argv[1:]):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        sys.exit(1)
    finally:
        s.close()
EOF
}
wait_ports_free() {
  local i
  for i in $(seq 1 30); do ports_free "$EMU_PORT" "$AS_PORT" "$HEALTH_PORT" "$SIM_PORT" "$RTP_PORT" && return 0; sleep 1; done
  die "ports $EMU_PORT/$AS_PORT/$HEALTH_PORT/$SIM_PORT/$RTP_PORT still in use after 30 s"
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# ----------------------------------------------------------------- engine configs
write_ava_tree() {  # scratch copy of the checkout with our local override
  local dir="$1"
  rm -rf "$dir"; mkdir -p "$dir" "$dir/../data"
  cp -r "$AVA/main.py" "$AVA/src" "$AVA/config" "$dir/"
  rm -f "$dir/config/ai-agent.local.yaml"
  cat > "$dir/config/ai-agent.local.yaml" <<EOF
# Written by voxd perf/compare/ramp_compare.sh
asterisk:
  app_name: asterisk-ai-voice-agent
audio_transport: audiosocket
audiosocket:
  host: 127.0.0.1
  port: $AS_PORT
  format: slin
default_provider: openai_realtime
profiles:
  default: telephony_ulaw_8k
health:
  host: 127.0.0.1
  port: $HEALTH_PORT
providers:
  openai_realtime:
    enabled: true
    base_url: ws://127.0.0.1:$SIM_PORT/v1/realtime
EOF
}

write_voxd_config() {
  cat > "$1" <<EOF
# Written by voxd perf/compare/ramp_compare.sh: the same job as the reference engine.
asterisk: {enabled: true, host: 127.0.0.1, port: $EMU_PORT, app_name: asterisk-ai-voice-agent}
audio_transport: audiosocket
audiosocket: {host: 127.0.0.1, port: $AS_PORT, format: slin}
external_media: {rtp_host: 127.0.0.1, rtp_port: $RTP_PORT}   # unused; off voxd's default 18080
health: {host: 127.0.0.1, port: $HEALTH_PORT}
limits: {max_calls: 4000}
default_provider: openai_realtime
providers:
  sim: {enabled: false}
  openai_realtime:
    enabled: true
    base_url: ws://127.0.0.1:$SIM_PORT/v1/realtime
    greeting: "$GREETING"
    instructions: "You are a voice assistant. Always speak your responses out loud."
    input_format: pcm24k
    output_format: pcm24k
    turn_detection: {type: server_vad, threshold: 0.5, prefix_padding_ms: 300, silence_duration_ms: 1000, create_response: true, interrupt_response: true}
EOF
}

# Start the engine once the emulator listens; prints the engine's pid.
start_engine() {  # start_engine ENGINE STEPDIR
  local eng="$1" d="$2"
  (
    for _ in $(seq 1 600); do
      (exec 3<>"/dev/tcp/127.0.0.1/$EMU_PORT") 2>/dev/null && break
      sleep 0.1
    done
    export ASTERISK_ARI_USERNAME=asterisk ASTERISK_ARI_PASSWORD=asterisk \
           OPENAI_API_KEY=voxd-sim-key
    if [ "$eng" = ava ]; then
      cd "$d/ava"
      export ASTERISK_HOST=127.0.0.1 ASTERISK_ARI_PORT="$EMU_PORT" ASTERISK_ARI_SCHEME=http \
             HEALTH_BIND_HOST=127.0.0.1 HEALTH_BIND_PORT="$HEALTH_PORT" \
             AGENTS_DB_PATH="$d/data/agents.db" CALL_HISTORY_DB_PATH="$d/data/call_history.db" \
             VICIDIAL_DB_PATH="$d/data/vicidial.db" \
             LOCAL_WS_URL="ws://127.0.0.1:1" LOCAL_WS_AUTH_TOKEN=voxd-sim-key PYTHONUNBUFFERED=1 \
             LOG_LEVEL="$AVA_LOG_LEVEL"
      exec "$PY" main.py
    else
      exec "$VOXD" serve --config "$d/voxd.yaml"
    fi
  ) > "$d/engine.log" 2>&1 &
  echo $!
}

# ----------------------------------------------------------------- one step
run_step() {  # run_step ENGINE CALLS -> 0 pass, 1 fail
  local eng="$1" n="$2" d="$OUT/$1/$2"
  rm -rf "$d"; mkdir -p "$d/data"
  wait_ports_free
  if [ "$eng" = ava ]; then write_ava_tree "$d/ava"; else write_voxd_config "$d/voxd.yaml"; fi

  local tcpd_pid="" eng_pid lg_pid
  if [ "$PCAP" = 1 ]; then
    tcpdump -i lo -n -s 0 -B 16384 -U -w "$d/engine_audio.pcap" \
      "(tcp src port $AS_PORT or tcp src port $EMU_PORT) and (((ip[2:2] - ((ip[0]&0xf)<<2)) - ((tcp[12]&0xf0)>>2)) != 0)" \
      > "$d/tcpdump.log" 2>&1 &
    tcpd_pid=$!; PIDS+=("$tcpd_pid")
    sleep 1
  fi
  eng_pid=$(start_engine "$eng" "$d"); PIDS+=("$eng_pid")
  "$VOXD" loadgen --via ari --ari-listen "127.0.0.1:$EMU_PORT" --ari-app asterisk-ai-voice-agent \
    --transport audiosocket --rate-hz 8000 --calls "$n" --rate "$RATE" --seconds "$WINDOW" \
    --provider openai_realtime --sim-listen "127.0.0.1:$SIM_PORT" --pid "$eng_pid" \
    --json "$d/loadgen.json" > "$d/loadgen.out" 2> "$d/loadgen.err" &
  lg_pid=$!; PIDS+=("$lg_pid")
  say "$eng $n calls: engine pid $eng_pid, loadgen pid $lg_pid"

  # Idle RSS: the engine's RSS when the load driver starts (the app registered, the
  # first calls are being placed).
  local limit waited=0 rss_idle=""
  limit=$(awk -v c="$n" -v r="$RATE" -v w="$WINDOW" 'BEGIN { printf "%d", 60 + c / r + w + 30 }')
  while kill -0 "$lg_pid" 2>/dev/null; do
    if [ -z "$rss_idle" ] && grep -q '^\[' "$d/loadgen.err" 2>/dev/null; then rss_idle=$(rss_kib "$eng_pid"); fi
    if ! kill -0 "$eng_pid" 2>/dev/null; then say "$eng exited early (see $d/engine.log)"; break; fi
    if [ "$waited" -ge "$((limit * 2))" ]; then say "loadgen still running after ${limit}s; stopping it"; break; fi
    sleep 0.5; waited=$((waited + 1))
  done
  stop_pid "$lg_pid" INT 10
  stop_pid "$eng_pid" TERM 20
  [ -z "$tcpd_pid" ] || stop_pid "$tcpd_pid" INT 10
  PIDS=()
  if [ "$eng" = ava ]; then rm -rf "$d/ava"; fi

  cat > "$d/meta.json" <<EOF
{"engine": "$eng", "calls": $n, "window": $WINDOW, "rate": $RATE, "rss_idle_kib": ${rss_idle:-null}, "load_after": "$(cut -d' ' -f1-3 /proc/loadavg)", "ava_log_level": "$AVA_LOG_LEVEL"}
EOF
  if [ -s "$d/engine_audio.pcap" ]; then
    "$PY" "$HERE/ramp_report.py" pcap "$d/engine_audio.pcap" --port "$AS_PORT" --ari-port "$EMU_PORT" --rate 8000 \
      --split-ms "$SPLIT_MS" > "$d/pcap.json" || say "pcap analysis failed for $eng $n"
    rm -f "$d/engine_audio.pcap"   # large; the figures are in pcap.json
  fi
  "$PY" "$HERE/ramp_report.py" step "$d" > "$d/result.json"
  local verdict
  verdict=$(PYTHONPATH="$HERE" "$PY" -c 'import json,sys,ramp_report as r; ok,why=r.verdict(json.load(open(sys.argv[1]))); print(("pass" if ok else "FAIL " + why))' "$d/result.json")
  say "$eng $n calls: $verdict"
  echo "$eng $n: $verdict" >> "$OUT/run.txt"
  [[ "$verdict" == pass ]] && return 0
  # Hard failure: calls that never reached media or never heard the agent, or no report.
  [[ "$verdict" == *"never reached media"* || "$verdict" == *"without agent audio"* || "$verdict" == *"no report"* ]] && return 2
  return 1
}

for eng in $ENGINES; do
  case "$eng" in ava|voxd) ;; *) die "ENGINES may name ava and voxd, got '$eng'" ;; esac
  first_fail=""; after=0
  for n in "${STEPS[@]}"; do
    if [ -n "$first_fail" ]; then
      after=$((after + 1)); [ "$after" -le "$EXTRA" ] || break
    fi
    rc=0; run_step "$eng" "$n" || rc=$?
    if [ "$rc" -eq 2 ] || { [ "$rc" -eq 1 ] && [ "$STOP" = slo ]; }; then first_fail="${first_fail:-$n}"; fi
  done
done

"$PY" "$HERE/ramp_report.py" table "$OUT" > "$OUT/table.md"
cat "$OUT/table.md"
say "tables in $OUT/table.md, per-step logs under $OUT/<engine>/<calls>/"
