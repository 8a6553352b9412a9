# Sourced by the project's scripts: one build directory for tests, binaries and
# benchmarks, outside the clone so repeated CI runs on one machine reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tessera-target}"
export TESSERA_MODELS="${TESSERA_MODELS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/models}"
TESSERA_BIN="$CARGO_TARGET_DIR/debug/tessera"
export TESSERA_BIN
