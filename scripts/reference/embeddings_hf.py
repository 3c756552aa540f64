#!/usr/bin/env python3
"""Reference sentence embeddings: HF transformers' LlamaModel (float32, CPU, eager attention)
on the weights of the real SmolLM2-135M GGUF, dequantized to f32 by the `gguf` package.

  /work/venv-ref/bin/python scripts/reference/embeddings_hf.py --out tests/fixtures/embed/

The GGUF -> HF state dict mapping is tiny_models.py's (Q/K rows un-permuted for llama). Before
writing anything it checks the mapping: golden prompt 0's last-position top-10 logits within
--tol of tests/golden/smollm2_135m.json. Then for each input (tokenized by transformers' own
GGUF tokenizer, no special tokens added: the SmolLM2 file adds no BOS) it takes HF's
`last_hidden_state` (after the final RMSNorm) and pools it three ways: mean over the
positions, the last position, the first position (CLS). Output: `smollm2-135m.json` (texts,
ids, facts) and `smollm2-135m.bin`: little-endian f32, [input][mean, last, cls][n_embd], not
normalized.
"""
import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from tiny_models import state_dict_from_gguf  # noqa: E402  (the inverse of the converter's mapping)

MODEL = "smollm2-135m"
APACHE = REPO / "tests" / "golden" / "Apache-2.0.txt"


def inputs():
    """A few short texts, one of a single token, and one longer than the CPU's 256-token
    prefill chunk (so a pooled row spans two forward steps)."""
    apache = APACHE.read_text()
    return [
        "The capital of France is Paris.",
        "Embeddings map text to vectors; similar texts land close together.",
        "fn main() { println!(\"hello\"); }",
        "Hello",
        apache[:1400],
    ]


def meta(reader, key):
    return reader.fields[key].contents()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", help="default: scripts/fetch-model smollm2-135m")
    ap.add_argument("--out", help="directory for the fixtures (without it: check only)")
    ap.add_argument("--tol", type=float, default=1e-3)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    path = args.gguf or subprocess.run(
        [str(REPO / "scripts" / "fetch-model"), MODEL], check=True, capture_output=True, text=True
    ).stdout.strip()

    import gguf

    r = gguf.GGUFReader(path)
    a = "llama."
    cfg = LlamaConfig(
        vocab_size=len(r.fields["tokenizer.ggml.tokens"].data),
        hidden_size=int(meta(r, a + "embedding_length")),
        intermediate_size=int(meta(r, a + "feed_forward_length")),
        num_hidden_layers=int(meta(r, a + "block_count")),
        num_attention_heads=int(meta(r, a + "attention.head_count")),
        num_key_value_heads=int(meta(r, a + "attention.head_count_kv")),
        rms_norm_eps=float(meta(r, a + "attention.layer_norm_rms_epsilon")),
        rope_parameters={"rope_type": "default", "rope_theta": float(meta(r, a + "rope.freq_base"))},
        max_position_embeddings=int(meta(r, a + "context_length")),
        tie_word_embeddings=True,
        attn_implementation="eager",
        torch_dtype=torch.float32,
    )
    sd, _, _ = state_dict_from_gguf(path, cfg)
    model = LlamaForCausalLM(cfg).eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        sys.exit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()

    golden = json.loads((REPO / "tests" / "golden" / "smollm2_135m.json").read_text())
    p0 = golden["prompts"][0]
    with torch.no_grad():
        logits = model(torch.tensor([p0["ids"]])).logits[0, -1]
    dev = max(abs(float(logits[i]) - v) for i, v in zip(p0["top10_ids"], p0["top10_logits"]))
    print(f"golden prompt 0: top-10 logits within {dev:.2e}")
    if dev > args.tol:
        sys.exit("FAIL: the mapped weights do not reproduce the golden logits")

    tok = AutoTokenizer.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name)
    assert tok(p0["text"], add_special_tokens=False).input_ids == p0["ids"]
    rows, cases = [], []
    for text in inputs():
        ids = tok(text, add_special_tokens=False).input_ids
        with torch.no_grad():
            h = model.model(torch.tensor([ids])).last_hidden_state[0].double()
        pooled = [h.mean(0), h[-1], h[0]]
        rows += [p.float().numpy() for p in pooled]
        cases.append({"text": text, "ids": ids, "n_tokens": len(ids)})
        print(f"{len(ids):4} tokens: |mean| {float(pooled[0].norm()):.3f} |last| {float(pooled[1].norm()):.3f}")
    data = np.stack(rows).astype("<f4")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{MODEL}.bin").write_bytes(data.tobytes())
        index = {
            "model": MODEL,
            "gguf_file": Path(path).name,
            "gguf_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            "n_embd": cfg.hidden_size,
            "pooling_order": ["mean", "last", "cls"],
            "layout": "f32 little-endian [input][pooling][n_embd], not normalized",
            "computed": "HF transformers LlamaModel last_hidden_state (after the final RMSNorm), float32 "
            "weights dequantized from the GGUF by gguf.quants.dequantize; mean over positions in float64",
            "golden_prompt0_top10_deviation": dev,
            "versions": {
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "gguf": gguf.__version__ if hasattr(gguf, "__version__") else "0.19.0",
                "numpy": np.__version__,
            },
            "inputs": cases,
        }
        (out / f"{MODEL}.json").write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {out / MODEL}.json and .bin ({data.nbytes} bytes)")


if __name__ == "__main__":
    main()
