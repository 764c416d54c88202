# Sourced by the scripts: one cargo target directory outside the clone, reused between runs
# and clones (CI builds only what changed).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/umbra-target}"
