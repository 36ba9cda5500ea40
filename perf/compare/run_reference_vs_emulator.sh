#!/usr/bin/env bash
# Drive the reference engine (AVA) with voxd's ARI emulator and report what happened.
#
#   perf/compare/run_reference_vs_emulator.sh <path-to-AVA-checkout> [calls]
#
# What runs (all on loopback, all stopped at the end):
#   voxd loadgen --via ari   the ARI emulator (+ the load driver playing the callers,
#                            + a provider simulator unless PROVIDER=none)
#   ari_proxy.py             a logging proxy in front of the emulator: every REST call
#                            with its status -> rest.jsonl, every event -> events.jsonl
#   AVA (main.py)            from a scratch copy of the checkout (the checkout is not
#                            modified) with config/ai-agent.local.yaml pointing it at
#                            the proxy, its AudioSocket/RTP ports and the simulator
# then summarize.py prints the call flow seen from both sides.
#
# Environment (all optional):
#   AVA_VENV    venv made by setup_reference.sh (default ~/.cache/voxd-compare/ava-venv)
#   VOXD        voxd binary (default: <repo>/target/release/voxd)
#   TRANSPORT   audiosocket (default) | externalmedia
#   AS_FORMAT   AVA's audiosocket.format: slin (default, 8 kHz) | slin16
#   PROVIDER    openai_realtime (default: AVA's openai_realtime provider against voxd's
#               OpenAI Realtime simulator) | local (AVA's local provider against voxd's
#               local-ai-server simulator) | none (openai_realtime at a dead URL)
#   WINDOW      loadgen's measured window in s once all calls are up (default 20)
#   RATE        calls started per second (default 1)
#               (calls last the whole window: voxd loadgen has no --hold with --via ari)
#   OUT_DIR     where logs go (default: a new /tmp/voxd-vs-ava.XXXXXX)
#   ARI_PORT EMU_PORT AS_PORT RTP_PORT HEALTH_PORT SIM_PORT
#               ports (defaults 28088 28089 28090 28100(-28119) 28150 28765)
# No network beyond loopback.
set -euo pipefail

die() { echo "run_reference_vs_emulator: $*" >&2; exit 1; }
say() { echo "run_reference_vs_emulator: $*" >&2; }

[ $# -ge 1 ] || die "usage: $0 <path-to-AVA-checkout> [calls]"
AVA="$(cd "$1" 2>/dev/null && pwd)" || die "no such directory: $1"
CALLS="${2:-3}"
[[ "$CALLS" =~ ^[1-9][0-9]*$ ]] || die "calls must be a positive integer, got '$CALLS'"
for f in main.py src/engine.py config/ai-agent.yaml; do
  [ -f "$AVA/$f" ] || die "$AVA does not look like an AVA checkout (missing $f)"
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${AVA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/voxd-compare/ava-venv}"
PY="$VENV/bin/python"
[ -x "$PY" ] || die "no venv at $VENV: run perf/compare/setup_reference.sh $AVA first (or set AVA_VENV)"
VOXD="${VOXD:-$REPO/target/release/voxd}"
[ -x "$VOXD" ] || die "voxd binary not found at $VOXD (cargo build --release, or set VOXD)"

TRANSPORT="${TRANSPORT:-audiosocket}"
AS_FORMAT="${AS_FORMAT:-slin}"
PROVIDER="${PROVIDER:-openai_realtime}"
WINDOW="${WINDOW:-20}"
RATE="${RATE:-1}"
ARI_PORT="${ARI_PORT:-28088}"; EMU_PORT="${EMU_PORT:-28089}"; AS_PORT="${AS_PORT:-28090}"
RTP_PORT="${RTP_PORT:-28100}"; HEALTH_PORT="${HEALTH_PORT:-28150}"; SIM_PORT="${SIM_PORT:-28765}"
RTP_LAST=$((RTP_PORT + 19))

case "$TRANSPORT" in
  audiosocket)
    case "$AS_FORMAT" in
      slin) LG_MEDIA=(--transport audiosocket --rate-hz 8000); PROFILE=telephony_ulaw_8k ;;
      slin16) LG_MEDIA=(--transport audiosocket --rate-hz 16000); PROFILE=wideband_pcm_16k ;;
      *) die "AS_FORMAT must be slin or slin16, got '$AS_FORMAT'" ;;
    esac ;;
  externalmedia) LG_MEDIA=(--transport rtp --codec ulaw); PROFILE=telephony_ulaw_8k ;;
  *) die "TRANSPORT must be audiosocket or externalmedia, got '$TRANSPORT'" ;;
esac
case "$PROVIDER" in
  openai_realtime) LG_PROV=(--provider openai_realtime --sim-listen "127.0.0.1:$SIM_PORT")
                   PROV_NAME=openai_realtime; OPENAI_URL="ws://127.0.0.1:$SIM_PORT/v1/realtime"
                   LOCAL_URL="ws://127.0.0.1:1" ;;
  local)           LG_PROV=(--provider local --sim-listen "127.0.0.1:$SIM_PORT")
                   PROV_NAME=local; OPENAI_URL="ws://127.0.0.1:1/v1/realtime"
                   LOCAL_URL="ws://127.0.0.1:$SIM_PORT" ;;
  none)            LG_PROV=(); PROV_NAME=openai_realtime; OPENAI_URL="ws://127.0.0.1:1/v1/realtime"
                   LOCAL_URL="ws://127.0.0.1:1" ;;
  *) die "PROVIDER must be openai_realtime, local or none, got '$PROVIDER'" ;;
esac

# Every port we listen on must be free (another engine/Asterisk would confuse the run).
"$PY" - "$ARI_PORT" "$EMU_PORT" "$AS_PORT" "$HEALTH_PORT" "$SIM_PORT" <<'EOF' || die "a port is in use; set ARI_PORT/EMU_PORT/AS_PORT/HEALTH_PORT/SIM_PORT"
import socket, sys
bad = []
for p in map(int, sys.argv[1:]):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no conflict
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        bad.append(p)
    finally:
        s.close()
if bad:
    print("ports in use: %s" % bad, file=sys.stderr)
    sys.exit(1)
EOF

OUT="${OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/voxd-vs-ava.XXXXXX")}"
mkdir -p "$OUT/logs" "$OUT/data"
# A reused OUT_DIR starts clean (the proxy appends).
rm -f "$OUT"/logs/{rest.jsonl,events.jsonl,ava.log,loadgen.out,loadgen.err,loadgen.json,proxy.out,run.txt} \
      "$OUT"/data/*.db
say "logs in $OUT/logs"

# Scratch copy of the engine (AVA reads config/ai-agent.yaml relative to its tree
# and merges config/ai-agent.local.yaml over it).
rm -rf "$OUT/ava"; mkdir -p "$OUT/ava"
cp -r "$AVA/main.py" "$AVA/src" "$AVA/config" "$OUT/ava/"
rm -f "$OUT/ava/config/ai-agent.local.yaml"
cat > "$OUT/ava/config/ai-agent.local.yaml" <<EOF
# Written by voxd perf/compare/run_reference_vs_emulator.sh
asterisk:
  app_name: asterisk-ai-voice-agent
audio_transport: $TRANSPORT
audiosocket:
  host: 127.0.0.1
  port: $AS_PORT
  format: $AS_FORMAT
external_media:
  rtp_host: 127.0.0.1
  rtp_port: $RTP_PORT
  port_range: '$RTP_PORT:$RTP_LAST'
  codec: ulaw
  direction: both
  allowed_remote_hosts: [127.0.0.1]
default_provider: $PROV_NAME
# AVA picks the AudioSocket dial format c(...) from the call's audio profile, not
# from audiosocket.format: keep them in step with what loadgen plays.
profiles:
  default: $PROFILE
health:
  host: 127.0.0.1
  port: $HEALTH_PORT
providers:
  openai_realtime:
    enabled: true
    base_url: $OPENAI_URL
EOF
echo "$TRANSPORT($AS_FORMAT) $PROVIDER calls=$CALLS window=$WINDOW rate=$RATE" > "$OUT/logs/run.txt"
git -C "$AVA" rev-parse HEAD >> "$OUT/logs/run.txt" 2>/dev/null || true

PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && wait "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$PY" "$HERE/ari_proxy.py" --listen "127.0.0.1:$ARI_PORT" --upstream "127.0.0.1:$EMU_PORT" \
  --log "$OUT/logs" > "$OUT/logs/proxy.out" 2>&1 &
PROXY_PID=$!; PIDS+=("$PROXY_PID")

nice -n 10 "$VOXD" loadgen --via ari --ari-listen "127.0.0.1:$EMU_PORT" \
  --ari-app asterisk-ai-voice-agent "${LG_MEDIA[@]}" --calls "$CALLS" --rate "$RATE" \
  --seconds "$WINDOW" "${LG_PROV[@]}" --json "$OUT/logs/loadgen.json" \
  > "$OUT/logs/loadgen.out" 2> "$OUT/logs/loadgen.err" &
LG_PID=$!; PIDS+=("$LG_PID")
sleep 1
kill -0 "$LG_PID" 2>/dev/null || { cat "$OUT/logs/loadgen.err" >&2; die "voxd loadgen exited at once"; }
kill -0 "$PROXY_PID" 2>/dev/null || { cat "$OUT/logs/proxy.out" >&2; die "ari_proxy.py exited at once"; }

(
  cd "$OUT/ava"
  export ASTERISK_HOST=127.0.0.1 ASTERISK_ARI_PORT="$ARI_PORT" ASTERISK_ARI_SCHEME=http \
         ASTERISK_ARI_USERNAME=asterisk ASTERISK_ARI_PASSWORD=asterisk \
         HEALTH_BIND_HOST=127.0.0.1 HEALTH_BIND_PORT="$HEALTH_PORT" \
         AGENTS_DB_PATH="$OUT/data/agents.db" CALL_HISTORY_DB_PATH="$OUT/data/call_history.db" \
         VICIDIAL_DB_PATH="$OUT/data/vicidial.db" \
         LOCAL_WS_URL="$LOCAL_URL" LOCAL_WS_AUTH_TOKEN=voxd-sim-key \
         OPENAI_API_KEY=voxd-sim-key PYTHONUNBUFFERED=1 LOG_LEVEL="${AVA_LOG_LEVEL:-info}"
  exec nice -n 10 "$PY" main.py
) > "$OUT/logs/ava.log" 2>&1 &
AVA_PID=$!; PIDS+=("$AVA_PID")
say "AVA pid $AVA_PID, loadgen pid $LG_PID, proxy pid $PROXY_PID; running $CALLS call(s) over $TRANSPORT, provider $PROVIDER"

# loadgen waits up to 40 s for the app, ramps, runs the window, tears down (<= 10 s).
LIMIT=$(awk -v c="$CALLS" -v r="$RATE" -v w="$WINDOW" 'BEGIN { printf "%d", 80 + c / r + w }')
waited=0
while kill -0 "$LG_PID" 2>/dev/null; do
  if ! kill -0 "$AVA_PID" 2>/dev/null; then
    say "AVA exited early (see $OUT/logs/ava.log)"; break
  fi
  if [ "$waited" -ge "$LIMIT" ]; then say "loadgen still running after ${LIMIT}s; stopping it"; break; fi
  sleep 1; waited=$((waited + 1))
done
wait "$LG_PID" 2>/dev/null && LG_RC=0 || LG_RC=$?
echo "loadgen exit $LG_RC" >> "$OUT/logs/run.txt"
# Let AVA log its cleanup, then stop it (SIGTERM: its own graceful shutdown).
sleep 2
kill "$AVA_PID" 2>/dev/null || true
for _ in $(seq 1 15); do kill -0 "$AVA_PID" 2>/dev/null || break; sleep 1; done
kill -9 "$AVA_PID" 2>/dev/null || true
kill "$PROXY_PID" 2>/dev/null || true

"$PY" "$HERE/summarize.py" "$OUT/logs"
