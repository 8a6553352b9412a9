#!/usr/bin/env bash
# The first run: fetch the default models, build, start `tessera up`, ingest the
# sample folder (examples/docs), run searches, a generation, two asks in one session and
# one OpenAI-style chat request with retrieval, and stop the server.
# Pass --keep to leave the server running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fetch-models.sh models
source scripts/env.sh
cargo build --bin tessera
DATA="${TESSERA_DATA_DIR:-./tessera-data}"
"$TESSERA_BIN" up --data-dir "$DATA" --models ./models > tessera-up.log 2>&1 &
PID=$!
trap '[ "${KEEP:-}" = 1 ] || { kill -INT $PID 2>/dev/null; wait $PID 2>/dev/null || true; }' EXIT
[ "${1:-}" = "--keep" ] && KEEP=1
for _ in $(seq 1 120); do
  curl -fsS http://127.0.0.1:8080/healthz >/dev/null 2>&1 && break
  kill -0 $PID 2>/dev/null || { cat tessera-up.log; exit 1; }
  sleep 0.5
done
"$TESSERA_BIN" ingest --collection docs examples/docs
"$TESSERA_BIN" search --collection docs --top-k 3 "how do I copy a directory"
"$TESSERA_BIN" search --collection docs --top-k 2 --mode hybrid "如何复制目录"
"$TESSERA_BIN" generate --temperature 0 --max-tokens 32 "What does the cp command do?"
"$TESSERA_BIN" ask --collection docs --session demo --max-tokens 48 "What does the -r flag of cp do?"
"$TESSERA_BIN" ask --collection docs --session demo --max-tokens 48 "And how do I keep file permissions?"
curl -fsS http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \
  -d '{"model":"default","max_tokens":32,"temperature":0,"collection":"docs","messages":[{"role":"user","content":"How do I delete a folder?"}]}'
echo
echo "server log: tessera-up.log${KEEP:+ (server still running, pid $PID)}"
