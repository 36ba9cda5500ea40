#!/usr/bin/env bash
# The test command: every unit, property and integration test, in release mode (the
# quality and property tests run many cases; debug builds make them slow).
set -euo pipefail
cd "$(dirname "$0")"
exec cargo test --release --locked "$@"
