"""sentence-transformers (PyTorch, CPU) on the same texts and batch sizes as
benches/embedder.rs; writes benches/results/embedder_st.json."""
import json, os, sys, time

import torch
from sentence_transformers import SentenceTransformer

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
models = os.environ.get("TESSERA_MODELS", os.path.join(root, "models"))
threads = os.cpu_count() or 1
torch.set_num_threads(threads)
model = SentenceTransformer(os.path.join(models, "all-MiniLM-L6-v2"), device="cpu")
model.max_seq_length = 256
texts = json.load(open(os.path.join(root, "benches/results/embed_texts.json")))
rows = []
print(f"sentence-transformers {__import__('sentence_transformers').__version__}, torch {torch.__version__}, {threads} CPU threads")
print()
print("| texts | batch | chunks/s | tokens/s |")
print("|---|---:|---:|---:|")
for key, label in (("chunk", "chunk (~1000 chars)"), ("short", "short (~10 words)")):
    items = texts[key]
    tokens = sum(len(ids) for ids in model.tokenizer(items, truncation=True, max_length=256)["input_ids"])
    model.encode(items[:8], batch_size=8)
    for batch in (1, 8, 32):
        start = time.perf_counter()
        model.encode(items, batch_size=batch, normalize_embeddings=True)
        secs = time.perf_counter() - start
        rows.append({"texts": label, "batch": batch, "chunks_per_s": len(items) / secs, "tokens_per_s": tokens / secs})
        print(f"| {label} | {batch} | {len(items) / secs:.1f} | {tokens / secs:.0f} |")
json.dump(rows, open(os.path.join(root, "benches/results/embedder_st.json"), "w"))
