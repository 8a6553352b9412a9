#!/usr/bin/env bash
# Retrieval quality in one run: Tessera through `tessera up` (benches/retrieval.rs)
# and the Python reference (benches/retrieval_reference.py: sentence-transformers
# exact search, bm25s, RRF) on the same documents and questions, made by
# benches/retrieval_data.py from the documentation CPython installs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-models.sh models
source scripts/env.sh
mkdir -p benches/results
if [ ! -x benches/.venv/bin/python ] || ! benches/.venv/bin/python -c "import sentence_transformers, bm25s, langchain_text_splitters" 2>/dev/null; then
  python3 -m venv benches/.venv
  benches/.venv/bin/pip install --quiet "sentence-transformers==6.2.0" "bm25s==0.3.16" "scipy==1.17.1" "langchain-text-splitters==1.1.3"
fi
benches/.venv/bin/python benches/retrieval_data.py --out benches/results/retrieval_data.json "$@"
cargo test --bench retrieval -- --data benches/results/retrieval_data.json --out benches/results/retrieval_tessera.json
echo
benches/.venv/bin/python benches/retrieval_reference.py --data benches/results/retrieval_data.json \
  --tessera benches/results/retrieval_tessera.json --model models/all-MiniLM-L6-v2
