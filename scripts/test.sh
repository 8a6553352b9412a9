#!/usr/bin/env bash
# The whole test suite: system packages, models, then every test of the workspace
# (unit tests, the embedder fixture test, and the integration tests in tests/ that
# start `tessera up` as a process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fetch-models.sh models
source scripts/env.sh
cargo test --workspace --no-fail-fast "$@"
