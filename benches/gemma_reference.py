"""Reference token ids for the Gemma 3 GGUF, made with llama.cpp (llama-cpp-python).

Tokenizes a fixed set of prompts (English, Chinese, mixed, code, whitespace runs,
emoji, bytes outside the vocabulary, control tokens) the way llama.cpp does for a
raw prompt: special tokens parsed, BOS added when the GGUF says so. Tessera's
SentencePiece tokenizer must give identical ids (tests in node/src/model).

    benches/.venv/bin/python benches/gemma_reference.py models/gemma-3-270m/gemma-3-270m-q4_k_m.gguf OUT.json
"""
import json
import sys

from llama_cpp import Llama

PROMPTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, double  spaces and a trailing space ",
    "line one\nline two\n\n\tindented with a tab",
    "向量数据库把文本变成向量，然后按相似度检索。",
    "Mixed: Tessera 支持中文和 English in one sentence, 好吗?",
    "fn main() { println!(\"{}\", 1 + 2); } // code",
    "emoji 🦀🚀 and accents: café, naïve, Straße, Ωμέγα",
    "rare bytes: \u0000\u0007 \u2028 \U0001F9EC",
    "<start_of_turn>user\nWhat is RAG?<end_of_turn>\n<start_of_turn>model\n",
    "numbers 1234567890 3.14159 -42 1e-9",
    "",
    " ",
    "▁ already has the marker",
    "https://example.com/a/b?c=d&e=f#g",
    "Retrieval-augmented generation combines a search step with a language model: the question is "
    "embedded, the nearest chunks are fetched from a vector index, and the model answers from them. "
    "It reduces hallucination, keeps answers current without retraining, and lets a team cite sources.",
    "检索增强生成先把问题变成向量，在向量索引中找到最相近的文本块，再让模型根据这些文本回答。"
    "这样可以减少幻觉，不必重新训练就能保持答案的时效性，还能给出引用来源。",
    "## Install\n\n```bash\npip install tessera  # 安装\n```\n\n- item one\n- item two: naïve café ☕\n",
]


def main():
    model, out = sys.argv[1], sys.argv[2]
    llm = Llama(model_path=model, vocab_only=True, verbose=False)
    cases = []
    for p in PROMPTS:
        ids = llm.tokenize(p.encode("utf-8"), add_bos=True, special=True)
        cases.append({"text": p, "ids": ids})
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"model": model.split("/")[-1], "tool": "llama-cpp-python", "cases": cases}, f, ensure_ascii=False, indent=1)
    print(f"wrote {out}: {len(cases)} prompts")


if __name__ == "__main__":
    main()
