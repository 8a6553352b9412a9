#!/usr/bin/env bash
# Fuzzes the parsers that take user input (fuzz/fuzz_targets): each target for
# SECONDS (default 30) with libFuzzer through cargo-fuzz on the nightly toolchain,
# starting from and adding to the committed corpus in fuzz/corpus/TARGET.
# Prints one line per target: executions, corpus size, crashes.
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
seconds="${1:-30}"
shift || true
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tessera-target}-fuzz"
cd fuzz
# -s none: libFuzzer's coverage without AddressSanitizer (the C++ parts of the
# dependency tree, usearch and the tokenizer's onig, do not build under ASan here);
# overflows, panics and aborts are still crashes.
cargo +nightly fuzz build -s none -O
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="$(mktemp)"
  if cargo +nightly fuzz run -s none -O "$t" "corpus/$t" -- -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
    crashes=0
  else
    crashes=1
    status=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  if [ -z "$execs" ]; then
    execs=$(grep -oE '#[0-9]+' "$log" | tail -1 | tr -d '#')
  fi
  echo "$t: executions ${execs:-?}, corpus $(ls "corpus/$t" | wc -l), crashes $crashes"
  if [ "$crashes" != 0 ]; then tail -40 "$log"; fi
  rm -f "$log"
done
exit $status
