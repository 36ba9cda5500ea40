#!/usr/bin/env bash
# Criterion benches of the hot functions, compared with the last recorded baseline.
#
#   perf/bench.sh [compare|save|show] [BENCH...]
#
#   compare (default)  run the benches and print each one's mean against the
#                      baseline (criterion --baseline-lenient NAME); the baseline is
#                      not changed. With no baseline recorded yet, records one.
#   save               run the benches and record them as the baseline
#                      (criterion --save-baseline NAME).
#   show               no run: print the last run against the baseline again.
#   BENCH              bench targets (benches/*.rs: call codec media provider
#                      resample ring); default: all of them.
#
# Environment:
#   BASELINE=last      the baseline's name (target/criterion/*/NAME/).
#   QUICK=1            short runs (0.5 s warm-up, 1 s measurement, 20 samples,
#                      5,000 bootstrap resamples; about 2 minutes for all): for
#                      a quick look; the full run (criterion's defaults) for records.
#   THRESHOLD=10       a change of the mean above this many percent is marked
#                      REGRESSION (slower) or faster.
#   STRICT=1           exit 1 when any bench regressed past THRESHOLD.
#   NICE=10            niceness of the build and the runs.
#
# Timing on a shared machine is noisy: repeat a run before believing a regression,
# and record baselines and comparisons on the same idle machine. Targets per bench
# are in shared targets.md; recorded figures go to perf/RESULTS.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE="${1:-compare}"
case "$MODE" in
  compare | save | show) shift || true ;;
  -h | --help)
    sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *) MODE=compare ;;
esac
BASELINE="${BASELINE:-last}"
THRESHOLD="${THRESHOLD:-10}"
NICE="${NICE:-10}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
CRIT="$TARGET_DIR/criterion"

ALL=()
for f in benches/*.rs; do ALL+=("$(basename "$f" .rs)"); done
BENCHES=("$@")
if [ ${#BENCHES[@]} -eq 0 ]; then BENCHES=("${ALL[@]}"); fi
for b in "${BENCHES[@]}"; do
  if [ ! -f "benches/$b.rs" ]; then
    echo "perf/bench.sh: no bench \`$b\` (have: ${ALL[*]})" >&2
    exit 2
  fi
done

have_baseline() {
  [ -d "$CRIT" ] && find "$CRIT" -type d -name "$BASELINE" -print -quit | grep -q .
}

CRIT_ARGS=(--noplot)
if [ "${QUICK:-0}" = 1 ]; then
  CRIT_ARGS+=(--warm-up-time 0.5 --measurement-time 1 --sample-size 20 --nresamples 5000)
fi

STAMP="$TARGET_DIR/.bench-run-started"
if [ "$MODE" != show ]; then
  if [ "$MODE" = compare ] && ! have_baseline; then
    echo "== no baseline \`$BASELINE\` recorded yet: this run records it"
    MODE=save
  fi
  if [ "$MODE" = save ]; then
    CRIT_ARGS+=(--save-baseline "$BASELINE")
  else
    CRIT_ARGS+=(--baseline-lenient "$BASELINE")
  fi
  BENCH_FLAGS=()
  for b in "${BENCHES[@]}"; do BENCH_FLAGS+=(--bench "$b"); done
  mkdir -p "$TARGET_DIR"
  touch "$STAMP"
  echo "== cargo bench ${BENCH_FLAGS[*]} -- ${CRIT_ARGS[*]}"
  # --bench per target: the library's own test harness would refuse criterion's
  # arguments.
  nice -n "$NICE" cargo bench --locked "${BENCH_FLAGS[@]}" -- "${CRIT_ARGS[@]}"
fi

if [ ! -f "$STAMP" ]; then
  echo "perf/bench.sh: no run to show yet" >&2
  exit 2
fi
echo
echo "== mean time per iteration: this run (target/criterion/*/new) against baseline \`$BASELINE\`"
python3 - "$CRIT" "$BASELINE" "$THRESHOLD" "$STAMP" "${STRICT:-0}" "$MODE" <<'PY'
import json, os, sys

crit, baseline, threshold, stamp, strict, mode = sys.argv[1:7]
threshold = float(threshold)
since = os.path.getmtime(stamp) - 1
rows = []
for root, dirs, files in os.walk(crit):
    if os.path.basename(root) != "new" or "estimates.json" not in files:
        continue
    est = os.path.join(root, "estimates.json")
    if os.path.getmtime(est) < since:
        continue  # not run this time
    bench = os.path.dirname(root)
    try:
        with open(os.path.join(root, "benchmark.json")) as f:
            name = json.load(f)["full_id"]
    except (OSError, KeyError, ValueError):
        name = os.path.relpath(bench, crit)
    with open(est) as f:
        new = json.load(f)["mean"]["point_estimate"]
    old = None
    base = os.path.join(bench, baseline, "estimates.json")
    if os.path.isfile(base):
        with open(base) as f:
            old = json.load(f)["mean"]["point_estimate"]
    rows.append((name, old, new))

def fmt(ns):
    if ns is None:
        return "-"
    if ns < 1e3:
        return f"{ns:.1f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.2f} us"
    return f"{ns / 1e6:.2f} ms"

regressed = 0
if mode == "save":
    print(f"| bench | recorded as `{baseline}` |")
    print("|---|---|")
    for name, _, new in sorted(rows):
        print(f"| {name} | {fmt(new)} |")
    if not rows:
        print("(no bench ran)")
    sys.exit(0)
print(f"| bench | {baseline} | now | change | |")
print("|---|---|---|---|---|")
for name, old, new in sorted(rows):
    if old is None or old <= 0:
        print(f"| {name} | - | {fmt(new)} | | new |")
        continue
    ch = (new - old) / old * 100.0
    if ch > threshold:
        mark = "REGRESSION"
        regressed += 1
    elif ch < -threshold:
        mark = "faster"
    else:
        mark = ""
    print(f"| {name} | {fmt(old)} | {fmt(new)} | {ch:+.1f}% | {mark} |")
if not rows:
    print("(no bench ran)")
print(f"\n{len(rows)} benches, {regressed} slower by more than {threshold:g}%")
sys.exit(1 if regressed and strict == "1" else 0)
PY
