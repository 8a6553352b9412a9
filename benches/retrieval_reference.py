"""The Python reference beside benches/retrieval.rs, same documents and questions.

Chunks: LangChain's RecursiveCharacterTextSplitter (1000/200, what Tessera's
splitter reproduces). Vector: sentence-transformers all-MiniLM-L6-v2 (the local
model folder), exact inner product over normalised vectors. BM25: bm25s, Lucene
variant, k1 1.5, b 0.75, its own tokenizer. Hybrid: reciprocal rank fusion
(k 60) of the two chunk lists. Metrics at the document level, top 30 chunks,
as in the Rust bench; prints one table with Tessera's numbers from its JSON.
"""
import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import bm25s
import numpy as np
import torch
from langchain_text_splitters import RecursiveCharacterTextSplitter
from sentence_transformers import SentenceTransformer

TOP = 30


def doc_ranking(chunk_ids, owners):
    out = []
    for c in chunk_ids:
        d = owners[c]
        if d not in out:
            out.append(d)
    return out


def metrics(rankings, answers):
    r1 = r10 = mrr = 0.0
    for ranking, answer in zip(rankings, answers):
        top = ranking[:10]
        if answer in top:
            pos = top.index(answer)
            r10 += 1
            mrr += 1 / (pos + 1)
            r1 += pos == 0
    n = max(len(answers), 1)
    return r1 / n, r10 / n, mrr / n


def rrf(lists, k=60):
    scores = {}
    for lst in lists:
        for rank, c in enumerate(lst):
            scores[c] = scores.get(c, 0.0) + 1.0 / (k + rank + 1)
    return [c for c, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--tessera", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = json.load(open(args.data))
    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)
    chunks, owners = [], []
    for d in data["documents"]:
        for c in splitter.split_text(d["text"]):
            chunks.append(c)
            owners.append(d["id"])
    questions = [q["text"] for q in data["questions"]]
    answers = [q["doc_id"] for q in data["questions"]]
    model = SentenceTransformer(args.model, device="cpu")
    t = time.time()
    emb = model.encode(chunks, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    qemb = model.encode(questions, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    embed_s = time.time() - t
    sims = qemb @ emb.T
    vec_lists = [list(np.argsort(-row, kind="stable")[: max(TOP, 200)]) for row in sims]
    retriever = bm25s.BM25(method="lucene", k1=1.5, b=0.75, idf_method="lucene")
    retriever.index(bm25s.tokenize(chunks, show_progress=False), show_progress=False)
    bm_ids, _ = retriever.retrieve(bm25s.tokenize(questions, show_progress=False), k=min(200, len(chunks)),
                                   show_progress=False)
    bm_lists = [list(r) for r in bm_ids]
    ref = {
        "vector (exact, sentence-transformers)": [doc_ranking(l[:TOP], owners) for l in vec_lists],
        "bm25 (bm25s, lucene)": [doc_ranking(l[:TOP], owners) for l in bm_lists],
        "hybrid (RRF of the two)": [doc_ranking(rrf([v[:200], b[:200]])[:TOP], owners)
                                    for v, b in zip(vec_lists, bm_lists)],
    }
    tessera = json.load(open(args.tessera))
    print(f"{len(data['documents'])} documents; reference {len(chunks)} chunks (Tessera {tessera['chunks']}); "
          f"{len(questions)} questions; reference embedding took {embed_s:.0f}s")
    print()
    print("| mode | Tessera recall@1 | Tessera recall@10 | Tessera MRR@10 | reference | ref recall@1 | ref recall@10 | ref MRR@10 |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    pairs = [("vector", "vector (exact, sentence-transformers)"), ("vector exact", "vector (exact, sentence-transformers)"),
             ("bm25", "bm25 (bm25s, lucene)"), ("hybrid", "hybrid (RRF of the two)")]
    for mine, theirs in pairs:
        a = metrics(tessera[mine], answers)
        b = metrics(ref[theirs], answers)
        print(f"| {mine} | {a[0]:.3f} | {a[1]:.3f} | {a[2]:.3f} | {theirs} | {b[0]:.3f} | {b[1]:.3f} | {b[2]:.3f} |")
    same = sum(1 for x, y in zip(tessera["vector"], ref["vector (exact, sentence-transformers)"]) if x[:10] == y[:10])
    print()
    print(f"vector: {same} of {len(questions)} questions have the same top-10 documents, in the same order, as the reference")


if __name__ == "__main__":
    main()
