#!/usr/bin/env bash
# Makes benches/results/peft_fixture/ (git-ignored: adapters are model files) from the upstream tools: an adapter trained by
# PEFT on PyTorch (CPU) with PEFT's logits for it, and an adapter trained by
# `tessera finetune` with PEFT's logits for it (node/tests/peft_fixture.rs
# checks Tessera's logits against both). PEFT, transformers, torch and gguf
# go into benches/.venv (pinned); the base is the SmolLM2 GGUF under models/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
gguf=models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$gguf" ] || bash scripts/fetch-models.sh models
bash scripts/peft-venv.sh
out=benches/results/peft_fixture
mkdir -p "$out"
data=tests/fixtures/peft_facts.jsonl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cargo build --quiet --bin tessera
"${CARGO_TARGET_DIR:-target}/debug/tessera" finetune --data "$data" --out "$tmp/ours" --base "$gguf" \
  --rank 1 --alpha 2 --dropout 0 --targets q,k,v,o --max-steps 12 --batch-size 4 --lr 2e-2 --eval-split 0 \
  --max-seq-len 64 --json > "$tmp/train.jsonl"
HF_HUB_OFFLINE=1 benches/.venv/bin/python tests/python/peft_reference.py fixture --gguf "$gguf" \
  --data "$data" --out "$out" --tessera-adapter "$tmp/ours"
rm -f "$out/peft_adapter/README.md"
