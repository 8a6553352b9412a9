#!/usr/bin/env bash
# Model comparison on this machine, in one run: Tessera's candle model group
# (benches/generate.rs) and llama.cpp through llama-cpp-python (compiled from its
# PyPI source distribution into benches/.venv by this script), same GGUF, prompt,
# greedy decoding and thread count. Prints both and the candle / llama.cpp ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-models.sh models
source scripts/env.sh
[ -x benches/.venv/bin/python ] || python3 -m venv benches/.venv
benches/.venv/bin/python -c "import llama_cpp" 2>/dev/null || benches/.venv/bin/pip install --quiet "llama-cpp-python==0.3.36" numpy
cargo test --bench generate -- "$@"
echo
benches/.venv/bin/python benches/llamacpp_bench.py
echo
python3 - <<'PY'
import json
c = json.load(open("benches/results/generate_candle.json"))
l = json.load(open("benches/results/generate_llamacpp.json"))
one = [r for r in c if r["streams"] == 1]
print("| one stream | tp | candle | llama.cpp | candle / llama.cpp |")
print("|---|---:|---:|---:|---:|")
for r in one:
    print(f"| prompt tok/s | {r['tp']} | {r['prompt_tok_s']:.0f} | {l['prompt_tok_s']:.0f} | {r['prompt_tok_s'] / l['prompt_tok_s']:.2f} |")
    print(f"| decode tok/s | {r['tp']} | {r['decode_tok_s_per_stream']:.1f} | {l['decode_tok_s']:.1f} | {r['decode_tok_s_per_stream'] / l['decode_tok_s']:.2f} |")
    print(f"| TTFT ms | {r['tp']} | {r['ttft_s'] * 1000:.0f} | {l['ttft_s'] * 1000:.0f} | {r['ttft_s'] / l['ttft_s']:.2f} |")
PY
