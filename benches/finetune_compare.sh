#!/usr/bin/env bash
# Training tokens/s: `tessera finetune` against PEFT + PyTorch (CPU) on the
# same machine, data, base (the SmolLM2 GGUF, dequantized on both sides),
# rank, targets (q,k,v,o), batch size and sequence length; one after the
# other, each with the same cores. Prints a Markdown table for BENCHMARKS.md.
#   bash benches/finetune_compare.sh [steps] [batch] [max_seq_len] [rank]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
steps=${1:-8}; batch=${2:-4}; len=${3:-128}; rank=${4:-8}
gguf=models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf
bash scripts/peft-venv.sh
mkdir -p benches/results
data=benches/results/finetune_data.jsonl
# 64 support chats of ~100-200 tokens, the same every run.
python3 - "$data" <<'PY'
import json, random, sys
random.seed(7)
topics = ["billing", "shard replication", "API keys", "the status page", "backups", "TLS certificates", "sessions"]
verbs = ["configure", "rotate", "inspect", "restore", "scale", "monitor", "debug"]
with open(sys.argv[1], "w") as f:
    for i in range(64):
        t, v = random.choice(topics), random.choice(verbs)
        q = f"How do I {v} {t} in a three-node cluster? Ticket {1000 + i}."
        a = " ".join(f"Step {k}: {v} {t} on node {k % 3} and check the log for entry {random.randint(1, 999)}."
                     for k in range(1, random.randint(4, 8)))
        f.write(json.dumps({"messages": [{"role": "system", "content": "You are the support assistant."},
                                         {"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
PY
cargo build --quiet --bin tessera
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
ours=$("${CARGO_TARGET_DIR:-target}/debug/tessera" finetune --data "$data" --out "$out/adapter" --base "$gguf" \
  --rank "$rank" --alpha $((2 * rank)) --dropout 0 --targets q,k,v,o --max-steps "$steps" --batch-size "$batch" \
  --max-seq-len "$len" --eval-split 0 --checkpoint-every 0 --json | grep '"summary"')
peft=$(HF_HUB_OFFLINE=1 benches/.venv/bin/python tests/python/peft_reference.py bench --gguf "$gguf" --data "$data" \
  --steps "$steps" --batch-size "$batch" --max-seq-len "$len" --rank "$rank" --threads "$(nproc)" 2>/dev/null | tail -1)
python3 - "$ours" "$peft" "$steps" "$batch" "$len" "$rank" <<'PY'
import json, sys
ours, peft = json.loads(sys.argv[1])["summary"], json.loads(sys.argv[2])
steps, batch, length, rank = sys.argv[3:7]
t, p = ours["tokens_per_s"], peft["peft_tokens_per_s"]
print(f"| steps | batch | max seq len | rank | Tessera tokens/s | PEFT + PyTorch {peft['torch']} tokens/s | ratio | Tessera peak RSS |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
print(f"| {steps} | {batch} | {length} | {rank} | {t:.0f} | {p:.0f} | {t / p:.2f}x | {ours['peak_rss_bytes'] >> 20} MiB |")
PY
