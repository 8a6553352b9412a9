"""llama.cpp (llama-cpp-python) on the same GGUF, prompt and thread count as
benches/generate.rs: prompt tokens/s, time to first token and decode tokens/s
of one greedy stream. Writes benches/results/generate_llamacpp.json, or with
MODEL=gemma the Gemma 3 270M GGUF on a raw prompt into generate_gemma_llamacpp.json."""
import json, os, time

import llama_cpp
import numpy as np
from llama_cpp import Llama

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
models = os.environ.get("TESSERA_MODELS", os.path.join(root, "models"))
threads = os.cpu_count() or 1
prompt_tokens = int(os.environ.get("PROMPT_TOKENS", "256"))
decode = int(os.environ.get("DECODE", "128"))
gemma = os.environ.get("MODEL", "smollm2") == "gemma"
model = "gemma-3-270m/gemma-3-270m-q4_k_m.gguf" if gemma else "SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
llm = Llama(os.path.join(models, model), n_threads=threads, n_ctx=2048, n_batch=512, flash_attn=False, verbose=False)
filler = "The shard index stores vectors and metadata for fast retrieval. " * 64
if gemma:
    ids = llm.tokenize(filler.encode(), add_bos=True, special=True)[:prompt_tokens]
else:
    ids = llm.tokenize(("<|im_start|>user\n" + filler).encode(), add_bos=False, special=True)[: prompt_tokens - 5]
    ids += llm.tokenize(b"<|im_end|>\n<|im_start|>assistant\n", add_bos=False, special=True)


def last_logits():
    """The last evaluated token's logits (llm.scores is empty without logits_all)."""
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def run():
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    tok = int(last_logits().argmax())
    first = time.perf_counter() - start
    n = 1
    while n < decode:
        llm.eval([tok])
        tok = int(last_logits().argmax())
        n += 1
    last = time.perf_counter() - start
    return first, last, n

run()  # warm-up
first, last, n = run()
row = {"threads": threads, "prompt_tokens": len(ids), "ttft_s": first, "prompt_tok_s": len(ids) / first,
       "decode_tok_s": (n - 1) / (last - first)}
print(f"llama-cpp-python {__import__('llama_cpp').__version__}, {threads} threads: "
      f"prompt {row['prompt_tok_s']:.0f} tok/s, TTFT {first * 1000:.0f} ms, decode {row['decode_tok_s']:.1f} tok/s")
out = "generate_gemma_llamacpp.json" if gemma else "generate_llamacpp.json"
os.makedirs(os.path.join(root, "benches/results"), exist_ok=True)
json.dump(row, open(os.path.join(root, "benches/results", out), "w"))
