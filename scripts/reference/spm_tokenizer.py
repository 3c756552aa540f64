#!/usr/bin/env python3
"""A Phi-3-style SentencePiece tokenizer, converted by scripts/hf-to-gguf, and HF's token ids.

    python3 scripts/reference/spm_tokenizer.py [--out tests/fixtures/spm]

Needs sentencepiece, transformers, tokenizers, safetensors, gguf and numpy (not torch); CI does
not run this, it only reads what it writes. Deterministic (one training thread, fixed seeds).

OUT/phi3/ (the test `tests/spm_convert.rs` reads it):
  1. tokenizer.model: a real SentencePiece BPE model (vocab 1000) trained on Apache-2.0.txt and
     the lines of the 30 golden tokenizer strings with Llama 2's / Phi-3's trainer settings:
     byte_fallback, identity normalizer, extra spaces kept, dummy prefix, split digits,
     whitespace-only pieces. Newlines, tabs, emoji and most CJK are not pieces: byte fallback.
  2. tokenizer.json / tokenizer_config.json as Phi-3 ships them: transformers converts the model
     to a fast tokenizer (BPE + merges, byte_fallback) and the normalizer is then set to
     Phi-3's (Prepend "▁", Replace " " -> "▁", no pre-tokenizer); Phi-3's added tokens
     (<|endoftext|>, <|assistant|>, <|placeholder1..6|>, <|system|>, <|end|>, <|user|> with
     its rstrip flags) at 1000..1010; config vocab 1024 (padded, like Phi-3's 32064).
  3. a tiny random Phi3ForCausalLM checkpoint (1 layer, hidden 64; written with numpy, only so
     that the converter has a model to convert; not committed), converted twice by our
     converter: phi3-spm.gguf (pieces, scores and types from tokenizer.model) and
     phi3-spm-json.gguf (the same directory without tokenizer.model: from tokenizer.json) and
     phi3-spm-metaspace.gguf (tokenizer.json as transformers 5 saves a Llama tokenizer: a
     Metaspace pre-tokenizer, prepend_scheme "first", instead of Phi-3's normalizer).
  4. reference.json: for each test string, HF's ids (AutoTokenizer on the saved directory,
     i.e. tokenizer.json) with and without BOS for both tokenizer.json forms, and
     sentencepiece's own ids for comparison (they differ where HF cuts out added tokens, and
     for the Metaspace form on text starting with a space).
OUT/unigram/: a tiny checkpoint whose tokenizer.model is a SentencePiece *Unigram* model,
which the converter must refuse with a clear message.
"""

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import sentencepiece as spm
import transformers
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers
from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parents[2]
CONVERTER = REPO / "scripts" / "hf-to-gguf"
GOLDEN_DIR = Path(os.environ.get("LLORCH_GOLDEN_DIR", "/work/shared/golden"))
N_PIECES = 1000
N_VOCAB = 1024

# Phi-3's added tokens (ids 32000.. there; 1000.. here) with their flags.
PHI3_ADDED = [("<|endoftext|>", False)] + [
    (t, True)
    for t in [
        "<|assistant|>",
        "<|placeholder1|>",
        "<|placeholder2|>",
        "<|placeholder3|>",
        "<|placeholder4|>",
        "<|system|>",
        "<|end|>",
        "<|placeholder5|>",
        "<|placeholder6|>",
        "<|user|>",
    ]
]

PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


def golden_strings():
    seen, out = set(), []
    for name in ("gemma3", "q05", "smol"):
        for e in json.loads((GOLDEN_DIR / f"tokenize_{name}.json").read_text(encoding="utf-8"))["tokenize"]:
            if e["text"] not in seen:
                seen.add(e["text"])
                out.append(e["text"])
    return out


EXTRA = [
    "",
    " ",
    "Hello",
    " leading space",
    "trailing space ",
    "  two leading, three trailing   ",
    "\nnewline first",
    "<s>",
    "</s>",
    "<unk>",
    "a<s>b",
    "Hello</s>",
    "<|endoftext|>",
    "<|user|>",
    "<|end|>",
    "<|user|>\nHello<|end|>\n<|assistant|>\n",
    "<|system|>\nYou are helpful.<|end|>\n<|user|>\nHi there<|end|>\n<|assistant|>\nHello!<|end|>\n",
    "text<|end|>more text",
    "text <|end|> more text",
    "<|endoftext|>after",
    "before <|endoftext|> after",
    "<|placeholder3|>",
    "<|notatoken|>",
    "▁ a literal ▁ meta space",
    "<0x0A> written out",
    "1234567890",
    "x" * 40,
    "The Licensor provides the Work (and each Contributor provides its Contributions)",
]


def train(lines, model_type, vocab, **kw):
    m = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=m,
        model_type=model_type,
        vocab_size=vocab,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        max_sentencepiece_length=16,
        num_threads=1,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=0.9995,
        minloglevel=2,
        **kw,
    )
    return m.getvalue()


def checkpoint(d, vocab, hidden, seed):
    """A tiny random Phi3ForCausalLM: config.json and model.safetensors (numpy, no torch)."""
    cfg = transformers.Phi3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=1000 if vocab > 1000 else 2,
        pad_token_id=1000 if vocab > 1000 else 2,
    )
    cfg.architectures = ["Phi3ForCausalLM"]
    cfg.save_pretrained(d)
    rng = np.random.default_rng(seed)
    r = lambda *s: (rng.standard_normal(s) * 0.05).astype(np.float32)  # noqa: E731
    h = hidden
    t = {
        "model.embed_tokens.weight": r(vocab, h),
        "model.norm.weight": np.ones(h, np.float32),
        "model.layers.0.input_layernorm.weight": np.ones(h, np.float32),
        "model.layers.0.post_attention_layernorm.weight": np.ones(h, np.float32),
        "model.layers.0.self_attn.qkv_proj.weight": r(3 * h, h),
        "model.layers.0.self_attn.o_proj.weight": r(h, h),
        "model.layers.0.mlp.gate_up_proj.weight": r(2 * h, h),
        "model.layers.0.mlp.down_proj.weight": r(h, h),
    }
    save_file(t, str(d / "model.safetensors"))


def convert(d, out):
    r = subprocess.run(
        [sys.executable, str(CONVERTER), str(d), "-o", str(out), "--type", "f16", "-q"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        sys.exit(f"converter failed on {d}: {r.stderr}")
    print(r.stdout.strip())


def phi3_dir(d, model_bytes):
    """tokenizer.model, tokenizer.json, tokenizer_config.json as Phi-3 ships them."""
    (d / "tokenizer.model").write_bytes(model_bytes)
    tcfg = {
        "tokenizer_class": "LlamaTokenizer",
        "legacy": False,
        "bos_token": "<s>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "pad_token": "<|endoftext|>",
        "add_bos_token": True,  # transformers writes the BOS into tokenizer.json's post-processor
    }
    (d / "tokenizer_config.json").write_text(json.dumps(tcfg))
    # transformers converts tokenizer.model to a fast tokenizer (vocab, merges, byte fallback).
    fast = AutoTokenizer.from_pretrained(str(d))
    tmp = d / "fast"
    fast.save_pretrained(str(tmp))
    tok = Tokenizer.from_file(str(tmp / "tokenizer.json"))
    shutil.rmtree(tmp)
    # Phi-3's tokenizer.json: the legacy normalizer, no pre-tokenizer.
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.add_special_tokens(
        [AddedToken(t, rstrip=rs, lstrip=False, normalized=False, single_word=False, special=True) for t, rs in PHI3_ADDED]
    )
    tok.save(str(d / "tokenizer.json"))
    tcfg.update(
        {
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "chat_template": PHI3_TEMPLATE,
            "model_max_length": 512,
        }
    )
    (d / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2, ensure_ascii=False))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "spm")
    args = ap.parse_args()
    golden = golden_strings()
    apache = (GOLDEN_DIR / "Apache-2.0.txt").read_text(encoding="utf-8")
    lines = [x for x in apache.splitlines() + [y for g in golden for y in g.splitlines()] if x.strip()]

    out = args.out / "phi3"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "phi3"
        d.mkdir()
        model_bytes = train(lines, "bpe", N_PIECES, byte_fallback=True)
        phi3_dir(d, model_bytes)
        checkpoint(d, N_VOCAB, 64, seed=15)
        convert(d, out / "phi3-spm.gguf")
        hf = AutoTokenizer.from_pretrained(str(d))
        nj = d.parent / "phi3-json"  # the same without tokenizer.model
        shutil.copytree(d, nj, ignore=shutil.ignore_patterns("tokenizer.model"))
        convert(nj, out / "phi3-spm-json.gguf")
        # The same with tokenizer.json as transformers 5 saves a Llama tokenizer: no
        # normalizer, a Metaspace pre-tokenizer that prepends "▁" to the text's start only.
        ms = d.parent / "phi3-metaspace"
        shutil.copytree(d, ms)
        tok = Tokenizer.from_file(str(ms / "tokenizer.json"))
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tok.save(str(ms / "tokenizer.json"))
        convert(ms, out / "phi3-spm-metaspace.gguf")
        hf_ms = AutoTokenizer.from_pretrained(str(ms))
        for f in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "config.json"):
            shutil.copy(d / f, out / f)

    backend = json.loads(hf.backend_tokenizer.to_str())
    assert backend["normalizer"]["normalizers"][0]["type"] == "Prepend", "HF did not load tokenizer.json as saved"
    assert hf("x")["input_ids"][0] == 1 and hf_ms("x")["input_ids"][0] == 1, "HF adds no BOS"
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    # The converter reads tokenizer.model's protobuf itself: check it against the package's.
    conv = load_converter()
    pieces, _, norm = conv.read_spm_model(out / "tokenizer.model")
    assert [p[0] for p in pieces] == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert [p[1] for p in pieces] == [sp.get_score(i) for i in range(sp.get_piece_size())]
    assert norm["name"] == "identity" and norm["dummy"] and not norm["extra_ws"]

    cases = []
    same_sp = 0
    for text in golden + EXTRA + [apache]:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        ms_ids = hf_ms(text, add_special_tokens=False)["input_ids"]
        ids_bos = hf(text)["input_ids"]
        sp_ids = sp.encode(text)
        same_sp += sp_ids == ids
        cases.append(
            {
                "text": text,
                "ids": ids,
                "ids_bos": ids_bos,
                "metaspace_ids": ms_ids,
                "metaspace_ids_bos": hf_ms(text)["input_ids"],
                "metaspace_decoded": hf_ms.decode(ms_ids),
                "sentencepiece_ids": sp_ids,
                "hf_decoded": hf.decode(ids),
            }
        )
    ref = {
        "tokenizer": "Phi-3-style SentencePiece BPE, vocab 1000 + 11 added tokens, padded to 1024",
        "hf": f"transformers {transformers.__version__} AutoTokenizer (tokenizer.json); "
        f"sentencepiece {spm.__version__} for sentencepiece_ids",
        "files": {
            "phi3-spm.gguf": "converted from tokenizer.model (+ tokenizer.json's added tokens)",
            "phi3-spm-json.gguf": "converted from tokenizer.json alone",
            "phi3-spm-metaspace.gguf": "tokenizer.json with a Metaspace pre-tokenizer (prepend_scheme first): "
            "metaspace_ids, metaspace_ids_bos",
        },
        "cases": cases,
    }
    (out / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    same_ms = sum(c["ids"] == c["metaspace_ids"] for c in cases)
    print(f"{len(cases)} strings; sentencepiece agrees with HF on {same_sp}, the Metaspace form on {same_ms}")

    # A Unigram SentencePiece model: the converter must refuse it.
    un = args.out / "unigram"
    shutil.rmtree(un, ignore_errors=True)
    un.mkdir(parents=True)
    (un / "tokenizer.model").write_bytes(train(lines, "unigram", 600, byte_fallback=True))
    (un / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "T5Tokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    )
    checkpoint(un, 600, 16, seed=16)
    r = subprocess.run([sys.executable, str(CONVERTER), str(un), "-o", os.devnull], capture_output=True, text=True)
    print(f"unigram: exit {r.returncode}: {r.stderr.strip()}")
    assert r.returncode != 0 and "Unigram" in r.stderr


def load_converter():
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("hf_to_gguf", str(CONVERTER))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


if __name__ == "__main__":
    main()
