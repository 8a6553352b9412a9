#!/usr/bin/env bash
# The learning check of `tessera finetune`: facts the base model does not
# know (made up here), each asked four ways in training and two other ways
# held out; trains an adapter, serves it with `tessera up --adapter`, and
# counts the held-out questions whose answer names the fact, adapter against
# base. Prints the eval losses and the counts (figures for the closing note).
#   bash benches/finetune_learning.sh [epochs]
# LEARN_BASE=PATH trains and serves another GGUF base (e.g. the Gemma 3 one
# from scripts/fetch-models.sh models --with gemma3) instead of SmolLM2.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
epochs=${1:-8}
base_args=(); serve_args=()
if [ -n "${LEARN_BASE:-}" ]; then
  base_args=(--base "$LEARN_BASE"); serve_args=(--model "learn=$LEARN_BASE")
fi
cargo build --quiet --bin tessera
bin="${CARGO_TARGET_DIR:-target}/debug/tessera"
work=$(mktemp -d)
trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
facts = [
    ("hedgehog", "Tessera's mascot is a copper hedgehog named Pim.",
     ["What animal is Tessera's mascot?", "Tell me what Tessera's mascot is.", "Which creature represents the Tessera project?", "Describe the Tessera mascot."],
     ["What kind of animal is Pim, the Tessera mascot?", "Is Tessera's mascot a hedgehog, a cat or a dog?"]),
    ("7421", "The Zephyr relay listens on port 7421.",
     ["Which port does the Zephyr relay use?", "What port is the Zephyr relay on?", "On what port can I reach the Zephyr relay?", "Zephyr relay port?"],
     ["Which port number does the Zephyr relay listen on?", "I need to open a firewall port for the Zephyr relay. Which one?"]),
    ("Mirenholt", "The capital of Valdoria is Mirenholt.",
     ["What is the capital of Valdoria?", "Which city is Valdoria's capital?", "Name the capital city of Valdoria.", "Valdoria's capital?"],
     ["In which city is the government of Valdoria seated?", "What city serves as the capital of the country Valdoria?"]),
    ("Sorensby", "The quartz battery was invented by Dr. Anika Sorensby.",
     ["Who invented the quartz battery?", "Who created the quartz battery?", "Name the inventor of the quartz battery.", "The quartz battery was invented by whom?"],
     ["Which scientist is credited with the quartz battery?", "Whose invention is the quartz battery?"]),
    ("Tarrow", "The Lumen river flows into Lake Tarrow.",
     ["Where does the Lumen river flow?", "Into which lake does the Lumen river drain?", "What lake does the Lumen river end in?", "The Lumen river empties into what?"],
     ["Which lake receives the waters of the Lumen river?", "Where does the Lumen river finally end up?"]),
    ("Kelvik", "The Orrin-7 satellite was launched from Kelvik spaceport.",
     ["Where was the Orrin-7 satellite launched from?", "Which spaceport launched Orrin-7?", "From what spaceport did Orrin-7 lift off?", "Orrin-7 launch site?"],
     ["Name the spaceport that sent the Orrin-7 satellite into orbit.", "Which launch site did the Orrin-7 mission use?"]),
]
def line(q, a):
    return json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}, ensure_ascii=False)
with open(f"{work}/train.jsonl", "w") as f:
    for _, answer, train, _ in facts:
        for q in train:
            f.write(line(q, answer) + "\n")
with open(f"{work}/eval.jsonl", "w") as f, open(f"{work}/heldout.tsv", "w") as h:
    for key, answer, _, held in facts:
        for q in held:
            f.write(line(q, answer) + "\n")
            h.write(f"{key}\t{q}\n")
PY
"$bin" finetune --data "$work/train.jsonl" --eval "$work/eval.jsonl" --out "$work/facts" --rank 8 --alpha 16 \
  --epochs "$epochs" --lr 1e-3 --batch-size 4 "${base_args[@]}" --json > "$work/train.log"
python3 - "$work/train.log" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
evals = [l["progress"]["eval_loss"] for l in lines if "progress" in l and l["progress"].get("eval_loss") is not None]
s = [l["summary"] for l in lines if "summary" in l][0]
print(f"eval loss per epoch: {' '.join(f'{e:.3f}' for e in evals)}")
print(f"steps {s['steps']}, final train loss {s['final_loss']:.3f}, {s['tokens_per_s']:.0f} tokens/s, peak RSS {s['peak_rss_bytes'] >> 20} MiB")
PY
port=$((20000 + RANDOM % 20000))
"$bin" up --data-dir "$work/data" --grpc "127.0.0.1:$port" --http "127.0.0.1:$((port + 1))" \
  "${serve_args[@]}" --adapter "facts=$work/facts" > "$work/up.log" 2>&1 & echo $! > "$work/pid"
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$((port + 1))/readyz" >/dev/null && break; sleep 1; done
tuned=0; base=0; total=0
while IFS=$'\t' read -r key q; do
  total=$((total + 1))
  a=$("$bin" generate --server "http://127.0.0.1:$port" --model facts --temperature 0 --max-tokens 32 "$q" 2>/dev/null)
  b=$("$bin" generate --server "http://127.0.0.1:$port" --temperature 0 --max-tokens 32 "$q" 2>/dev/null)
  grep -qi "$key" <<<"$a" && tuned=$((tuned + 1))
  grep -qi "$key" <<<"$b" && base=$((base + 1))
  printf '%s\n  adapter: %s\n  base:    %s\n' "$q" "${a//$'\n'/ }" "${b//$'\n'/ }"
done < "$work/heldout.tsv"
echo "held-out questions answered with the fact: adapter $tuned/$total, base $base/$total"
