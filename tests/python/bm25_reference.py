"""Reference BM25 scores from bm25s (method "lucene") for node/tests/bm25_reference.rs.

Reads {"corpus": [[token, ...], ...], "queries": [[token, ...], ...], "k1": f, "b": f}
on stdin (tokens as Tessera's BM25 index makes them, so only the scoring is
compared) and prints {"scores": [[score per document] per query]}.
"""
import json
import sys

import bm25s


def main() -> None:
    req = json.load(sys.stdin)
    retriever = bm25s.BM25(method="lucene", k1=req["k1"], b=req["b"], idf_method="lucene")
    retriever.index(req["corpus"], show_progress=False)
    n = len(req["corpus"])
    scores = [retriever.get_scores(q).tolist() if q else [0.0] * n for q in req["queries"]]
    json.dump({"scores": scores, "bm25s": bm25s.__version__}, sys.stdout)


if __name__ == "__main__":
    main()
