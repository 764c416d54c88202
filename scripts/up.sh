#!/usr/bin/env bash
# Runs Umbra from a fresh machine: installs the build dependencies, builds, and starts a local
# three-node cluster (data in ./umbra-data; Ctrl-C stops it). Arguments go to `umbra up`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
cargo build --locked --bin umbra
exec "$CARGO_TARGET_DIR/debug/umbra" up "$@"
