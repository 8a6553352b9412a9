#!/usr/bin/env bash
# benches/.venv with PyTorch (CPU), transformers, PEFT and gguf (transformers
# reads the GGUF base through it), pinned; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=benches/.venv
pins=(torch==2.15.0 transformers==5.25.0 peft==0.21.2 gguf==0.19.0 accelerate==1.16.0)
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c "import peft, gguf, transformers, torch" 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
fi
