#!/usr/bin/env bash
# Run every cargo-fuzz target in fuzz/ for FUZZ_SECONDS each (default 60) and print
# the executions per target. Needs the nightly toolchain (cargo-fuzz uses
# -Zsanitizer); installs cargo-fuzz if missing. A crash fails the script and leaves
# the reproducer in fuzz/artifacts/<target>/.
#
#   FUZZ_SECONDS=600 perf/fuzz.sh            # all targets, 10 min each
#   FUZZ_SECONDS=60 perf/fuzz.sh rtp         # one target
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${FUZZ_SECONDS:-60}"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal >/dev/null 2>&1 || true
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain on this machine and none can be installed;" \
       "the same parsers ran under proptest in the test suite. Skipping cargo-fuzz." >&2
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz >/dev/null
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log="$(mktemp)"
  # Seeds live in fuzz/corpus/<t>/seed-*; new inputs land there too (git-ignored).
  if ! (cd fuzz && cargo +nightly fuzz run "$t" -- -max_total_time="$SECS" -max_len=70000 \
        -rss_limit_mb=1024 2>"$log"); then
    tail -40 "$log" >&2
    echo "fuzz: target $t FAILED (see fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  runs="$(grep -Eo 'Done [0-9]+ runs' "$log" | tail -1 || true)"
  echo "fuzz: $t: ${runs:-?} in ${SECS}s, no crash"
  rm -f "$log"
done
