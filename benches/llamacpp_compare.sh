#!/usr/bin/env bash
# Model comparison on this machine, in one run: Tessera's model group
# (benches/generate.rs) and llama.cpp through llama-cpp-python (compiled from its
# PyPI source distribution into benches/.venv by this script), same GGUF, prompt,
# greedy decoding and thread count. Prints both tables and the ratios.
#
#   bash benches/llamacpp_compare.sh            # the whole table
#   bash benches/llamacpp_compare.sh --perf     # also: where a decode step's time goes (perf, one stream)
#   bash benches/llamacpp_compare.sh --gemma    # the Gemma 3 270M GGUF instead (raw prompt)
set -euo pipefail
cd "$(dirname "$0")/.."
perf_summary=0
if [ "${1:-}" = "--perf" ]; then perf_summary=1; shift; fi
prefix=generate
if [ "${1:-}" = "--gemma" ]; then
  shift
  bash scripts/fetch-models.sh models --with gemma3
  export MODEL=gemma
  prefix=generate_gemma
  set -- --gemma "$@"
else
  bash scripts/fetch-models.sh models
fi
source scripts/env.sh
[ -x benches/.venv/bin/python ] || python3 -m venv benches/.venv
benches/.venv/bin/python -c "import llama_cpp" 2>/dev/null || benches/.venv/bin/pip install --quiet "llama-cpp-python==0.3.36" numpy
cargo test --bench generate -- "$@"
echo
benches/.venv/bin/python benches/llamacpp_bench.py
echo
PREFIX=$prefix python3 - <<'PY'
import json, os
prefix = os.environ["PREFIX"]
c = json.load(open(f"benches/results/{prefix}_candle.json"))
l = json.load(open(f"benches/results/{prefix}_llamacpp.json"))
one = {r["tp"]: r for r in c if r["streams"] == 1}
print("| measure | tp | Tessera | llama.cpp | Tessera / llama.cpp |")
print("|---|---:|---:|---:|---:|")
for tp, r in sorted(one.items()):
    print(f"| prompt tok/s | {tp} | {r['prompt_tok_s']:.0f} | {l['prompt_tok_s']:.0f} | {r['prompt_tok_s'] / l['prompt_tok_s']:.2f} |")
    print(f"| decode tok/s, one stream | {tp} | {r['decode_tok_s_per_stream']:.1f} | {l['decode_tok_s']:.1f} | {r['decode_tok_s_per_stream'] / l['decode_tok_s']:.2f} |")
    print(f"| TTFT ms | {tp} | {r['ttft_s'] * 1000:.0f} | {l['ttft_s'] * 1000:.0f} | {r['ttft_s'] / l['ttft_s']:.2f} |")
for r in c:
    if r["streams"] > 1:
        base = one[r["tp"]]["decode_tok_s_per_stream"]
        print(f"| decode tok/s, {r['streams']} streams together | {r['tp']} | {r['decode_tok_s_all_streams']:.1f} "
              f"| {l['decode_tok_s']:.1f} (one slot) | {r['decode_tok_s_all_streams'] / l['decode_tok_s']:.2f} "
              f"({r['decode_tok_s_all_streams'] / base:.1f}x Tessera's one stream) |")
if 2 in one and 1 in one:
    print(f"\ntp 2 / tp 1 decode: {one[2]['decode_tok_s_per_stream'] / one[1]['decode_tok_s_per_stream']:.2f}")
r = one[min(one)]
print(f"weights streamed per token (tp {min(one)}): {r['weight_bytes_per_rank'] / 1e6:.1f} MB; one-stream decode reads "
      f"{r['weights_gb_s']:.1f} GB/s of weights; the machine reads {r['machine_gb_s']:.1f} GB/s "
      f"({r['weights_gb_s'] / r['machine_gb_s'] * 100:.0f} % of it)")
PY
if [ "$perf_summary" = 1 ]; then
  echo
  echo "perf: where one stream's time goes (prefill of 256 tokens, then 512 decode steps), by symbol"
  bin=$(ls -t "$CARGO_TARGET_DIR"/debug/deps/generate-* | grep -v '\.d$' | head -1)
  perf record -q -F 499 -o benches/results/generate.perf "$bin" --tp 1 --streams 1 --decode 512 >/dev/null 2>&1 || true
  perf report -i benches/results/generate.perf --no-children --sort symbol 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15
fi
