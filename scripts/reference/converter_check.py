#!/usr/bin/env python3
"""End-to-end check of scripts/hf-to-gguf on the architectures the engine already runs.

    python3 scripts/reference/converter_check.py [--llorch target/release/llorch]

Builds tiny random Qwen2 (with q/k/v biases) and Llama (plain RoPE) checkpoints the way
tiny_models.py does, converts each with scripts/hf-to-gguf at f32, q8_0 and q4_k, and compares
the engine's perplexity over Apache-2.0.txt (`llorch perplexity`, the golden method) with HF
transformers' on the weights each file holds. The engine shares no code with the converter,
so agreement checks the file layout, tensor names, the llama Q/K row permutation, the
metadata and the tokenizer together. Also checks that the engine's tokenizer, built from the
converted metadata, gives HF's token ids for the whole text.
"""

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_models as tm  # noqa: E402

WINDOW, MAX_WINDOWS = 512, 8


def config(fam, tok):
    common = dict(
        vocab_size=tm.VOCAB,
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        max_position_embeddings=2048,
    )
    if fam == "qwen2":
        return transformers.Qwen2Config(
            **common,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        )
    return transformers.LlamaConfig(
        **common,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=tok.convert_tokens_to_ids("<|begin_of_text|>"),
    )


@torch.no_grad()
def hf_perplexity(model, ids):
    n = min(len(ids) // WINDOW, MAX_WINDOWS)
    nll, count = 0.0, 0
    for c in range(n):
        w = ids[c * WINDOW : (c + 1) * WINDOW]
        logits = model(torch.tensor([w]), use_cache=False).logits[0].double()
        logp = torch.log_softmax(logits[WINDOW // 2 : WINDOW - 1], dim=-1)
        tgt = torch.tensor(w[WINDOW // 2 + 1 :])
        nll -= float(logp[torch.arange(len(tgt)), tgt].sum())
        count += len(tgt)
    return math.exp(nll / count)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llorch", default=str(tm.REPO / "target" / "release" / "llorch"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    text_path = tm.GOLDEN_DIR / "Apache-2.0.txt"
    text = text_path.read_text(encoding="utf-8")
    ok = True
    for fam, tok_fam in (("qwen2", "qwen3"), ("llama", "llama3")):
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp) / fam
            tok = tm.build_tokenizer(tok_fam, d)
            cfg = config(fam, tok)
            model = tm.randomize(tm.build_model(cfg), fam, seed=77)
            tm.save_checkpoint(model, cfg, d)
            ids = tok(text, add_special_tokens=False).input_ids
            for vname, vargs in (
                ("f32", ["--type", "f32"]),
                ("q8_0", ["--type", "q8_0"]),
                ("q4_k", ["--type", "q4_k"]),
            ):
                path = Path(tmp) / f"{fam}-{vname}.gguf"
                subprocess.run(
                    [sys.executable, str(tm.CONVERTER), str(d), "-o", str(path), "-q", *vargs],
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                sd, _, _ = tm.state_dict_from_gguf(path, cfg)
                vmodel = tm.build_model(cfg)
                vmodel.load_state_dict(sd, strict=False)
                ref = hf_perplexity(vmodel, ids)
                r = subprocess.run(
                    [args.llorch, "perplexity", "-m", str(path), "-f", str(text_path), "-t", "2"],
                    capture_output=True,
                    text=True,
                )
                if r.returncode != 0:
                    print(f"{fam} {vname}: llorch failed: {r.stderr.strip()}")
                    ok = False
                    continue
                ours = float(re.search(r"perplexity: ([0-9.]+)", r.stdout).group(1))
                rel = abs(ours - ref) / ref
                toks = subprocess.run(
                    [args.llorch, "tokenize", "-m", str(path), "-"],
                    input=text,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                same_ids = json.loads(toks.stdout.splitlines()[0]) == ids
                print(
                    f"{fam} {vname}: HF perplexity {ref:.4f}, engine {ours:.4f} (relative {rel:.1e}); "
                    f"engine token ids {'equal' if same_ids else 'DIFFERENT'} ({len(ids)} tokens)"
                )
                ok &= rel < 5e-3 and same_ids
    ok &= fixture_tokenizers(args.llorch)
    sys.exit(0 if ok else 1)


def fixture_tokenizers(llorch):
    """The engine's tokenizer, built from each tiny fixture GGUF's metadata, against the ids HF
    gave in reference.json (the tricky strings and the prompts)."""
    ok = True
    for ref_path in sorted((tm.REPO / "tests" / "fixtures" / "tiny").glob("*/reference.json")):
        ref = json.loads(ref_path.read_text())
        path = ref_path.parent / ref["variants"][0]["gguf"]
        bos = ref["tokenizer"]["add_bos"]
        cases = [(c["text"], c["ids"]) for c in ref["tokenize"]]
        cases += [(s["text"], s["ids"][1:] if bos else s["ids"]) for s in ref["sequences"] if s["name"] != "long"]
        equal = 0
        for text, ids in cases:
            r = subprocess.run([llorch, "tokenize", "-m", str(path), "-"], input=text, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{ref['model']}: engine tokenizer unavailable: {r.stderr.strip()}")
                break
            equal += json.loads(r.stdout.splitlines()[0]) == ids
        else:
            print(
                f"{ref['model']} ({ref['tokenizer']['pre']}): engine token ids equal to HF's for {equal}/{len(cases)} strings"
            )
            ok &= equal == len(cases)
    return ok


if __name__ == "__main__":
    main()
