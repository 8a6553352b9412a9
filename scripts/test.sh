#!/usr/bin/env bash
# The whole test suite: system packages, models, then every test of the workspace
# (unit tests, the embedder and model fixture tests, and the integration tests in
# tests/ that start `tessera up` as a process). Ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# CI also fetches the optional Gemma 3 model, and makes the PEFT interop fixture
# (PyTorch CPU + PEFT in benches/.venv, ~2 min to install, ~1 min to train), so
# the tests that need them run there.
ci=0
if [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ]; then ci=1; fi
if [ "$ci" = 1 ]; then
  bash scripts/fetch-models.sh models --with gemma3
else
  bash scripts/fetch-models.sh models
fi
source scripts/env.sh
if [ "$ci" = 1 ] && [ ! -f benches/results/peft_fixture/logits.json ]; then
  bash scripts/make-peft-fixture.sh
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --lib --bins --tests --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
