#!/usr/bin/env bash
# Make a Python venv with the reference engine ("Asterisk AI Voice Agent", AVA)
# installed from a checkout the user already has. Nothing of AVA is vendored here.
#
#   perf/compare/setup_reference.sh <path-to-AVA-checkout>
#
# Environment:
#   AVA_VENV  where the venv goes (default: ~/.cache/voxd-compare/ava-venv)
#   PYTHON    interpreter to build it with (default: python3.11, else python3 >= 3.10)
#
# Installs the checkout's requirements.txt (the engine's own dependencies: ARI,
# WebSockets, config, audio utils, cloud SDK clients). The local-model server
# (local_ai_server/, GPU/Vosk/Piper/llama) is NOT installed: the comparison drives
# the engine only. Network use: pip against PyPI, nothing else.
set -euo pipefail

die() { echo "setup_reference: $*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: $0 <path-to-AVA-checkout>"
AVA="$(cd "$1" 2>/dev/null && pwd)" || die "no such directory: $1"
for f in main.py src/engine.py src/ari_client.py config/ai-agent.yaml requirements.txt; do
  [ -f "$AVA/$f" ] || die "$AVA does not look like an AVA checkout (missing $f)"
done

VENV="${AVA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/voxd-compare/ava-venv}"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if command -v python3.11 >/dev/null; then PY=python3.11; else PY=python3; fi
fi
command -v "$PY" >/dev/null || die "interpreter '$PY' not found (set PYTHON=...)"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || die "$PY is $("$PY" -V 2>&1); AVA needs Python >= 3.10 (its Docker image uses 3.11)"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup_reference: creating venv $VENV with $("$PY" -V 2>&1)"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV" || die "cannot create the venv (is the python venv module installed?)"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
echo "setup_reference: installing $AVA/requirements.txt into $VENV"
"$VENV/bin/python" -m pip install -q -r "$AVA/requirements.txt" \
  || die "pip install -r requirements.txt failed (see above)"

# Smoke test: the engine module and its config loader import in this venv.
( cd "$AVA" && "$VENV/bin/python" -c 'import src.engine, src.ari_client, aiohttp, websockets' ) \
  || die "AVA's engine does not import in $VENV (see the traceback above)"

echo "setup_reference: ok: venv $VENV ($("$VENV/bin/python" -V 2>&1)), AVA $(git -C "$AVA" rev-parse --short HEAD 2>/dev/null || echo '(not a git checkout)')"
echo "next: AVA_VENV=$VENV perf/compare/run_reference_vs_emulator.sh $AVA [calls]"
