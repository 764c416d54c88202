#!/usr/bin/env bash
# Every test, from a fresh machine: installs the build dependencies, builds, runs the whole
# suite (unit, property, storage conformance, end-to-end with real processes), and prints the
# totals. Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
# One test at a time: the end-to-end tests each start a three-node cluster, and two of them at
# once on a 2-core machine missed their timing bounds (Raft timeouts, SIGTERM waits) in 2 of 5
# full runs; alone they pass. Set RUST_TEST_THREADS to run more at once.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-1}"
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "\nall tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
