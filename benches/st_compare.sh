#!/usr/bin/env bash
# Embedder comparison on this machine, in one run: Tessera's own BERT encoder
# (benches/embedder.rs) and sentence-transformers on PyTorch CPU (benches/st_embed.py,
# installed into benches/.venv by this script), same model, texts, batch sizes and
# thread count. Prints both tables and the candle / PyTorch throughput ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-models.sh models
source scripts/env.sh
if [ ! -x benches/.venv/bin/python ] || ! benches/.venv/bin/python -c "import sentence_transformers" 2>/dev/null; then
  python3 -m venv benches/.venv
  benches/.venv/bin/pip install --quiet "sentence-transformers==6.2.0"
fi
cargo test --bench embedder -- "$@"
echo
HF_HUB_OFFLINE=1 benches/.venv/bin/python benches/st_embed.py
echo
python3 - <<'PY'
import json
c = json.load(open("benches/results/embedder_candle.json"))
s = {(r["texts"], r["batch"]): r for r in json.load(open("benches/results/embedder_st.json"))}
print("| texts | batch | Tessera chunks/s | PyTorch chunks/s | Tessera / PyTorch |")
print("|---|---:|---:|---:|---:|")
for r in c:
    o = s[(r["texts"], r["batch"])]
    print(f"| {r['texts']} | {r['batch']} | {r['chunks_per_s']:.1f} | {o['chunks_per_s']:.1f} | {r['chunks_per_s'] / o['chunks_per_s']:.2f} |")
PY
