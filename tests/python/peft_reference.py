"""PEFT on PyTorch (CPU) against Tessera's LoRA, on the same SmolLM2 GGUF.

Two uses:

  fixture: trains a small adapter with PEFT (rank 1 on q,k,v,o), saves it in
  PEFT's layout, and records PEFT's logits for it on fixed token ids; loads
  the adapter Tessera trained (--tessera-adapter) in PEFT and records PEFT's
  logits for that one too. node/tests/peft_fixture.rs checks that Tessera
  gives the same logits for both adapters.

  bench: times PEFT training (tokens/s) on a JSON Lines file with the same
  rank, targets, batch and sequence length `tessera finetune` uses.

The base is read from the GGUF by transformers (dequantized to f32), so both
sides start from the same weights.
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
import time

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "<|im_start|>user\nWhat is the mascot of the Tessera project?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\n什么是 Tessera 的吉祥物？<|im_end|>\n<|im_start|>assistant\n",
]
STRIDE = 16  # every 16th vocabulary entry of the last position's logits


def load(gguf):
    d, f = os.path.dirname(gguf), os.path.basename(gguf)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    return model, tok


def examples(tok, path, max_len):
    """Token ids and loss masks as Tessera builds them: chats through the
    chat template (assistant turns learned), prompt/completion pairs raw."""
    out = []
    for line in open(path, encoding="utf-8"):
        if not line.strip():
            continue
        v = json.loads(line)
        ids, mask = [], []
        if "messages" in v:
            msgs = v["messages"]
            done = ""
            pieces = []
            for i, m in enumerate(msgs):
                if m["role"] != "assistant":
                    continue
                before = tok.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True)
                through = tok.apply_chat_template(msgs[: i + 1], tokenize=False)
                pieces += [(before[len(done):], 0), (through[len(before):], 1)]
                done = through
        else:
            pieces = [(v["prompt"], 0), (v["completion"] + tok.eos_token, 1)]
        for text, learn in pieces:
            part = tok(text, add_special_tokens=False).input_ids
            ids += part
            mask += [learn] * len(part)
        out.append((ids[:max_len], mask[:max_len]))
    return out


def train(model, data, steps, batch, lr, seed):
    random.seed(seed)
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    tokens, losses = 0, []
    started = time.time()
    order = []
    for step in range(steps):
        if len(order) < batch:
            order += random.sample(range(len(data)), len(data))
        picked = [data[order.pop()] for _ in range(batch)]
        n = max(len(ids) for ids, _ in picked) - 1
        x = torch.tensor([(ids + [0] * n)[:n] for ids, _ in picked])
        y = torch.tensor([(ids[1:] + [0] * n)[:n] for ids, _ in picked])
        w = torch.tensor([[float(m) for m in (mask[1:] + [0] * n)[:n]] for _, mask in picked])
        tokens += sum(len(ids) - 1 for ids, _ in picked)
        logits = model(input_ids=x).logits
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        loss = (nll * w.reshape(-1)).sum() / w.sum().clamp(min=1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for g in opt.param_groups:
            g["lr"] = lr * (1 - step / steps)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return tokens / (time.time() - started), losses


@torch.no_grad()
def last_logits(model, tok):
    model.eval()
    out = []
    for p in PROMPTS:
        ids = tok(p, add_special_tokens=False).input_ids
        l = model(input_ids=torch.tensor([ids])).logits[0, -1]
        out.append({"ids": ids, "stride": STRIDE, "logits": [round(v, 5) for v in l[::STRIDE].tolist()],
                    "argmax": int(l.argmax())})
    return out


def fixture(args):
    base, tok = load(args.gguf)
    data = examples(tok, args.data, 64)
    cfg = LoraConfig(r=1, lora_alpha=2, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                     task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    _, losses = train(model, data, steps=12, batch=4, lr=2e-2, seed=1)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(os.path.join(args.out, "peft_adapter"))
    result = {"peft_adapter": {"losses": losses, "prompts": last_logits(model, tok)}}
    base = model.unload()
    result["base"] = {"prompts": last_logits(base, tok)}
    if args.tessera_adapter:
        ours = os.path.join(args.out, "tessera_adapter")
        shutil.rmtree(ours, ignore_errors=True)
        os.makedirs(ours)
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy(os.path.join(args.tessera_adapter, f), ours)
        loaded = PeftModel.from_pretrained(base, ours)
        result["tessera_adapter"] = {"prompts": last_logits(loaded, tok)}
    with open(os.path.join(args.out, "logits.json"), "w") as f:
        json.dump(result, f)
    print(f"wrote {args.out}: PEFT losses {losses[0]:.3f} -> {losses[-1]:.3f}")


def bench(args):
    torch.set_num_threads(args.threads)
    base, tok = load(args.gguf)
    data = examples(tok, args.data, args.max_seq_len)
    cfg = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    train(model, data, steps=1, batch=args.batch_size, lr=2e-4, seed=2)  # warm-up
    tps, losses = train(model, data, steps=args.steps, batch=args.batch_size, lr=2e-4, seed=3)
    print(json.dumps({"peft_tokens_per_s": tps, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "losses": losses}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["fixture", "bench"])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out")
    ap.add_argument("--tessera-adapter")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-seq-len", type=int, default=128)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    fixture(args) if args.mode == "fixture" else bench(args)


if __name__ == "__main__":
    sys.exit(main())
