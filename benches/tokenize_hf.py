#!/usr/bin/env python3
"""The same measurement as benches/tokenize.rs through Hugging Face `tokenizers`, built from the
same GGUF vocabulary and merges (pip install gguf tokenizers). Byte-level BPE models only:
Qwen2.5 (qwen2 split) and SmolLM2 (GPT-2 split, as the golden reference builds it).

Usage: python3 benches/tokenize_hf.py [GOLDEN_DIR]   (models via scripts/fetch-model)
"""
import os
import subprocess
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import gguf  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def build(path, pre):
    r = gguf.GGUFReader(path)
    toks = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in r.fields["tokenizer.ggml.merges"].contents()]
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(toks)}, merges))
    if pre == "qwen2":
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(toks, types) if ty in (3, 4)])
    return tk


def main():
    golden = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "LLORCH_GOLDEN_DIR", os.path.join(ROOT, "tests", "golden"))
    base = open(os.path.join(golden, "Apache-2.0.txt"), encoding="utf-8").read()
    text = base
    while len(text.encode()) < 4 << 20:
        text += base
    mb = len(text.encode()) / 1e6
    print(f"text: Apache-2.0.txt x{len(text) // len(base)} = {mb:.2f} MB")
    for name, pre in [("qwen2.5-coder-0.5b", "qwen2"), ("smollm2-135m", "gpt2")]:
        path = subprocess.run([os.path.join(ROOT, "scripts", "fetch-model"), name],
                              check=True, capture_output=True, text=True).stdout.strip()
        t0 = time.perf_counter()
        tk = build(path, pre)
        load = time.perf_counter() - t0
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            n = len(tk.encode(text, add_special_tokens=False).ids)
            best = min(best, time.perf_counter() - t)
        print(f"HF tokenizers {name:20} build {load * 1e3:7.1f} ms (from Python lists)  "
              f"encode {mb / best:6.1f} MB/s  ({n} tokens, {best:.3f} s)")


if __name__ == "__main__":
    main()
