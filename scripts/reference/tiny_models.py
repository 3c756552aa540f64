#!/usr/bin/env python3
"""Tiny random Hugging Face models, their GGUF files and HF transformers' reference outputs.

    python3 scripts/reference/tiny_models.py [--out tests/fixtures/tiny] [--only NAME,...]

For each family (llama3, qwen3, phi3, gpt-oss) it builds, from fixed seeds:
  1. a small byte-level BPE tokenizer (vocab 512, trained with `tokenizers` on the Apache-2.0
     text and the golden prompts) with the family's split pattern and special tokens;
  2. a tiny HF checkpoint (`*ForCausalLM`, 2 layers, hidden 256, the family's real head size and
     features) with weights at a realistic scale (norm weights around 1, small biases, non-zero
     sinks, gate values large enough for gpt-oss's clamp);
  3. GGUF files made by our converter `scripts/hf-to-gguf` (f16, q8_0, q4_k; gpt-oss also q8_0
     with MXFP4 experts);
  4. for each GGUF: the weights it holds (read back and dequantized by the reference reader
     `gguf.quants.dequantize`), loaded into the HF model, run by HF's own forward (eager
     attention, float32, CPU) on the 6 golden prompts and, for phi3 and gpt-oss, a 96-token
     teacher-forced sequence: logits at every position, the hidden state after every layer, and
     layer-0 sub-stages of prompt 0 (and of the long sequence).
Everything goes to OUT/<model>/ (format: scripts/reference/README.md, "Tiny models").
"""

import argparse
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np
import safetensors.torch
import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parents[2]
CONVERTER = REPO / "scripts" / "hf-to-gguf"
GOLDEN_DIR = Path(os.environ.get("LLORCH_GOLDEN_DIR", "/work/shared/golden"))
VOCAB = 512
LONG_TOKENS = 96


def load_converter():
    """scripts/hf-to-gguf as a module (its file name has no .py)."""
    loader = importlib.machinery.SourceFileLoader("hf_to_gguf", str(CONVERTER))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


# The split patterns are the converter's own table, so the converter names them back.
PRE_PATTERNS = load_converter().PRE_PATTERNS
PAT_LLAMA3, PAT_QWEN2, PAT_GPT4O = PRE_PATTERNS["llama-bpe"], PRE_PATTERNS["qwen2"], PRE_PATTERNS["gpt-4o"]

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3_CHAT = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
PHI3_CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
HARMONY_CHAT = (
    "{% for m in messages %}<|start|>{{ m['role'] }}<|message|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant{% endif %}"
)

FAMILIES = {
    "llama3": {
        "pre": "llama-bpe",
        "pattern": PAT_LLAMA3,
        "special": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": None,
        "add_bos": True,
        "chat": LLAMA3_CHAT,
    },
    "qwen3": {
        "pre": "qwen2",
        "pattern": PAT_QWEN2,
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "add_bos": False,
        "chat": CHATML,
    },
    "phi3": {
        "pre": "gpt2",
        "pattern": None,
        "special": ["<s>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"],
        "bos": "<s>",
        "eos": "<|end|>",
        "pad": "<|endoftext|>",
        "add_bos": False,
        "chat": PHI3_CHAT,
    },
    "gpt-oss": {
        "pre": "gpt-4o",
        "pattern": PAT_GPT4O,
        "special": [
            "<|startoftext|>",
            "<|endoftext|>",
            "<|start|>",
            "<|end|>",
            "<|message|>",
            "<|channel|>",
            "<|return|>",
        ],
        "bos": "<|startoftext|>",
        "eos": "<|return|>",
        "pad": "<|endoftext|>",
        "add_bos": False,
        "chat": HARMONY_CHAT,
    },
}


# ---------------------------------------------------------------------------------------------
# Tokenizer


def training_text():
    text = (GOLDEN_DIR / "Apache-2.0.txt").read_text(encoding="utf-8")
    prompts = [p["text"] for p in json.loads((GOLDEN_DIR / "qwen25coder05b.json").read_text())["prompts"]]
    return [text] + prompts


def tokenize_strings():
    """The 30 tricky strings of the golden tokenizer file (special tokens written in the text
    are matched as single tokens, as there)."""
    return [c["text"] for c in json.loads((GOLDEN_DIR / "tokenize_q05.json").read_text())["tokenize"]]


def build_tokenizer(fam, out_dir):
    spec = FAMILIES[fam]
    tok = Tokenizer(models.BPE())
    if spec["pattern"]:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(spec["pattern"]), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=spec["special"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
    )
    tok.train_from_iterator(training_text(), trainer=trainer)
    if spec["add_bos"]:
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    tcfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": spec["chat"],
        "add_bos_token": spec["add_bos"],
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
    }
    for key in ("bos", "eos", "pad"):
        if spec[key]:
            tcfg[f"{key}_token"] = spec[key]
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=1) + "\n")
    return PreTrainedTokenizerFast(
        tokenizer_file=str(out_dir / "tokenizer.json"),
        clean_up_tokenization_spaces=False,
        **{k: v for k, v in tcfg.items() if k.endswith("_token") and isinstance(v, str)},
    )


# ---------------------------------------------------------------------------------------------
# Models


def make_config(fam, tok):
    ids = {
        k: (tok.convert_tokens_to_ids(FAMILIES[fam][k]) if FAMILIES[fam][k] else None) for k in ("bos", "eos", "pad")
    }
    common = dict(
        vocab_size=VOCAB,
        hidden_size=256,
        num_hidden_layers=2,
        rms_norm_eps=1e-5,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )
    if fam == "llama3":
        return transformers.LlamaConfig(
            **common,
            intermediate_size=256,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 256,
            },
        )
    if fam == "qwen3":
        return transformers.Qwen3Config(
            **common,
            intermediate_size=256,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=128,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
    if fam == "phi3":
        g = np.random.default_rng(7)
        short = np.round(1 + 0.25 * np.sort(g.random(48)), 4).tolist()
        long = np.round(np.geomspace(1.0, 24.0, 48) * (1 + 0.05 * g.random(48)), 4).tolist()
        # Phi-3-mini's head size 96 with hidden 256 (so Q4_K fits): HF's Phi-3 modules read
        # config.head_dim, but its config validation assumes hidden/heads (64), so the config is
        # made with 32 factors and then given head_dim 96 and the 48 factors it needs.
        cfg = transformers.Phi3Config(
            **common,
            intermediate_size=256,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            original_max_position_embeddings=64,
            sliding_window=24,
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "short_factor": short[:32],
                "long_factor": long[:32],
                "original_max_position_embeddings": 64,
            },
        )
        cfg.head_dim = 96
        cfg.rope_parameters["short_factor"], cfg.rope_parameters["long_factor"] = short, long
        return cfg
    if fam == "gpt-oss":
        return transformers.GptOssConfig(
            **common,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=16,
            max_position_embeddings=131072,
            tie_word_embeddings=False,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 150000.0,
                "factor": 32.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
                "original_max_position_embeddings": 4096,
            },
        )
    raise ValueError(fam)


def randomize(model, fam, seed):
    """Weights at a realistic scale: matrices N(0, 1/fan_in) (outputs of unit size), embedding
    and output N(0, 4/n_embd) (logits of size ~2, tied or not), norm
    weights 1 + N(0, 0.1), biases N(0, 0.02), sinks N(0, 1), router 4x and its bias N(0, 0.1);
    gpt-oss expert gate/up 3x larger so the SwiGLU clamp at 7 bites. Then rounded to bf16."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("sinks"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_((0.1 if "router" in name else 0.02) * torch.randn(p.shape, generator=g))
            elif name.endswith("embed_tokens.weight") or name == "lm_head.weight":
                # logits of about unit-2 size whether tied or not
                p.copy_(2 * torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
            elif "experts.gate_up_proj" in name:  # [E, in, out]
                p.copy_(3 * torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif name.endswith("router.weight"):  # router logits spread over several units:
                p.copy_(4 * torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))  # few near-ties
            elif "experts.down_proj" in name:  # [E, in, out]
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            else:  # nn.Linear [out, in]
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        for p in model.parameters():  # bf16 values, as published checkpoints hold
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return model


def build_model(cfg):
    cls = {
        "llama": transformers.LlamaForCausalLM,
        "qwen2": transformers.Qwen2ForCausalLM,
        "qwen3": transformers.Qwen3ForCausalLM,
        "phi3": transformers.Phi3ForCausalLM,
        "gpt_oss": transformers.GptOssForCausalLM,
    }[cfg.model_type]
    cfg._attn_implementation = "eager"
    if cfg.model_type == "gpt_oss":
        cfg._experts_implementation = "eager"  # HF's reference loop over experts
    torch.manual_seed(0)
    return cls(cfg).to(torch.float32).eval()


def save_checkpoint(model, cfg, out_dir):
    """config.json + model.safetensors (bf16) in HF's layout (the modules' parameter names and shapes).
    Written directly: save_pretrained re-validates the config, which rejects Phi-3's head_dim."""
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight")
    safetensors.torch.save_file(sd, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    d = cfg.to_dict()
    d["architectures"] = [type(model).__name__]
    (out_dir / "config.json").write_text(json.dumps(d, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# GGUF -> HF state dict (the inverse of the converter's mapping)


def unpermute_rope_rows(w, n_head):
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def perm_cols(d):
    """GGUF llama column order within a head: column 2i is HF dim i, 2i+1 is HF dim i + d/2."""
    return np.stack([np.arange(d // 2), np.arange(d // 2) + d // 2], axis=1).reshape(-1)


def read_dequantized(path):
    """The reference reader's view of a GGUF: every tensor dequantized to f32 ([out, in] numpy
    order), each tensor's type name, and the reader (for metadata)."""
    r = gguf.GGUFReader(path)
    t, types = {}, {}
    for x in r.tensors:
        shape = tuple(int(d) for d in reversed(x.shape))
        t[x.name] = np.asarray(gguf.quants.dequantize(x.data, x.tensor_type), dtype=np.float32).reshape(shape)
        types[x.name] = x.tensor_type.name
    return t, types, r


def state_dict_from_gguf(path, cfg):
    """The HF state dict of the weights a GGUF holds, each tensor's GGUF type by GGUF name, and
    for each HF name the GGUF tensors it was made from."""
    t, types, _ = read_dequantized(path)
    arch = cfg.model_type
    sd = {"model.embed_tokens.weight": t.pop("token_embd.weight"), "model.norm.weight": t.pop("output_norm.weight")}
    origin = {"model.embed_tokens.weight": ["token_embd.weight"], "model.norm.weight": ["output_norm.weight"]}
    if "output.weight" in t:
        sd["lm_head.weight"], origin["lm_head.weight"] = t.pop("output.weight"), ["output.weight"]
    else:
        sd["lm_head.weight"], origin["lm_head.weight"] = sd["model.embed_tokens.weight"], ["token_embd.weight"]
    t.pop("rope_freqs.weight", None)
    t.pop("rope_factors_long.weight", None)
    t.pop("rope_factors_short.weight", None)
    names = {
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "attn_qkv": "self_attn.qkv_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_down": "mlp.down_proj",
        "ffn_gate_inp": "mlp.router",
        "attn_sinks": "self_attn.sinks",
        "ffn_up": "mlp.gate_up_proj" if arch == "phi3" else "mlp.up_proj",
        "ffn_norm": "post_attention_layernorm",
        "post_attention_norm": "post_attention_layernorm",
    }
    for i in range(cfg.num_hidden_layers):
        p = f"blk.{i}."
        if arch == "gpt_oss":
            gate, up = t.pop(p + "ffn_gate_exps.weight"), t.pop(p + "ffn_up_exps.weight")  # [E, I, H]
            gate_up = np.empty((gate.shape[0], gate.shape[1] * 2, gate.shape[2]), dtype=np.float32)
            gate_up[:, 0::2], gate_up[:, 1::2] = gate, up
            ex = f"model.layers.{i}.mlp.experts."
            sd[ex + "gate_up_proj"] = gate_up.swapaxes(1, 2)
            gb, ub = t.pop(p + "ffn_gate_exps.bias"), t.pop(p + "ffn_up_exps.bias")
            bias = np.empty((gb.shape[0], gb.shape[1] * 2), dtype=np.float32)
            bias[:, 0::2], bias[:, 1::2] = gb, ub
            sd[ex + "gate_up_proj_bias"] = bias
            sd[ex + "down_proj"] = t.pop(p + "ffn_down_exps.weight").swapaxes(1, 2)
            sd[ex + "down_proj_bias"] = t.pop(p + "ffn_down_exps.bias")
            origin[ex + "gate_up_proj"] = [p + "ffn_gate_exps.weight", p + "ffn_up_exps.weight"]
            origin[ex + "gate_up_proj_bias"] = [p + "ffn_gate_exps.bias", p + "ffn_up_exps.bias"]
            origin[ex + "down_proj"] = [p + "ffn_down_exps.weight"]
            origin[ex + "down_proj_bias"] = [p + "ffn_down_exps.bias"]
        for key in [k for k in t if k.startswith(p)]:
            short, suffix = key[len(p) :].rsplit(".", 1)
            arr = t.pop(key)
            if arch == "llama" and short in ("attn_q", "attn_k"):
                arr = unpermute_rope_rows(
                    arr, cfg.num_attention_heads if short == "attn_q" else cfg.num_key_value_heads
                )
            hf = f"model.layers.{i}.{names[short]}"
            hf = hf if short == "attn_sinks" else f"{hf}.{suffix}"
            sd[hf], origin[hf] = arr, [key]
    if t:
        raise SystemExit(f"{path}: tensors left unmapped: {sorted(t)}")
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in sd.items()}, types, origin


# ---------------------------------------------------------------------------------------------
# Capturing stages


class Capture:
    """Layer-0 sub-stages with forward hooks on HF's modules; q/k after RoPE from the inputs of
    HF's eager attention function (wrapped for the run)."""

    def __init__(self, model, cfg, substages):
        self.model, self.cfg, self.sub = model, cfg, substages
        self.st = {}
        self.handles = []
        self.mod = sys.modules[type(model).__module__]
        self.orig_attn = self.mod.eager_attention_forward

    def put(self, name, t):
        self.st[name] = t.detach().float().numpy().copy()

    def rows(self, t):
        """[1, T, ...] or [1, H, T, D] (heads_first) -> [T, width]"""
        return t[0].reshape(t.shape[1], -1)

    def __enter__(self):
        m, cfg = self.model.model, self.cfg
        hd = cfg.head_dim
        arch = cfg.model_type
        for i, layer in enumerate(m.layers):
            self.handles.append(
                layer.register_forward_hook(
                    lambda mod, inp, out, i=i: self.put(
                        f"l{i}.out", self.rows(out[0] if isinstance(out, tuple) else out)
                    )
                )
            )
        if arch == "gpt_oss":

            def router(i):
                def hook(mod, inp, out):  # must return None (a value would replace the output)
                    self.put(f"l{i}.router_logits", out[0])
                    self.put(f"l{i}.expert_weights", out[1])
                    self.put(f"l{i}.expert_ids", out[2])

                return hook

            for i, layer in enumerate(m.layers):
                self.handles.append(layer.mlp.router.register_forward_hook(router(i)))
        if self.sub:
            l0 = m.layers[0]
            a = l0.self_attn

            def out_hook(name, fn=None):
                return lambda mod, inp, out: self.put(
                    name, (fn or self.rows)(out[0] if isinstance(out, tuple) else out)
                )

            def in_hook(name):
                return lambda mod, inp: self.put(name, self.rows(inp[0]))

            hooks = [
                (m.embed_tokens, out_hook("embd")),
                (l0.input_layernorm, out_hook("l0.attn_norm")),
                (l0.post_attention_layernorm, out_hook("l0.ffn_norm")),
                (a.o_proj, out_hook("l0.o_proj")),
                (m.norm, out_hook("final_norm")),
            ]
            if arch == "phi3":
                nq, nkv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd

                def qkv(mod, inp, out):
                    o = self.rows(out)
                    (
                        self.put("l0.q", o[:, :nq]),
                        self.put("l0.k", o[:, nq : nq + nkv]),
                        self.put("l0.v", o[:, nq + nkv :]),
                    )

                def gate_up(mod, inp, out):
                    o = self.rows(out)
                    self.put("l0.gate", o[:, : cfg.intermediate_size]), self.put("l0.up", o[:, cfg.intermediate_size :])

                hooks += [(a.qkv_proj, qkv), (l0.mlp.gate_up_proj, gate_up)]
            else:
                hooks += [(a.q_proj, out_hook("l0.q")), (a.k_proj, out_hook("l0.k")), (a.v_proj, out_hook("l0.v"))]
            if arch == "qwen3":  # outputs [1, T, H, D]
                hooks += [(a.q_norm, out_hook("l0.q_norm")), (a.k_norm, out_hook("l0.k_norm"))]
            if arch == "gpt_oss":
                hooks += [(l0.mlp, out_hook("l0.ffn_out"))]
            else:
                hooks += [(l0.mlp, out_hook("l0.ffn_out"))]
                if arch != "phi3":
                    hooks += [(l0.mlp.gate_proj, out_hook("l0.gate")), (l0.mlp.up_proj, out_hook("l0.up"))]
                self.handles.append(l0.mlp.down_proj.register_forward_pre_hook(in_hook("l0.swiglu")))
            for mod, fn in hooks:
                self.handles.append(mod.register_forward_hook(fn))
            self.handles.append(a.o_proj.register_forward_pre_hook(in_hook("l0.attn_out")))
            self.handles.append(l0.post_attention_layernorm.register_forward_pre_hook(in_hook("l0.attn_resid")))

            def attn(module, query, key, value, *args, **kwargs):
                if module.layer_idx == 0:  # [1, H, T, D] -> [T, H*D]
                    self.put("l0.q_rope", query[0].transpose(0, 1).reshape(query.shape[2], -1))
                    self.put("l0.k_rope", key[0].transpose(0, 1).reshape(key.shape[2], -1))
                return self.orig_attn(module, query, key, value, *args, **kwargs)

            self.mod.eager_attention_forward = attn
        return self

    def __exit__(self, *exc):
        self.mod.eager_attention_forward = self.orig_attn
        for h in self.handles:
            h.remove()


@torch.no_grad()
def gpt_oss_experts_l0(model, st):
    """Per token and selected expert of layer 0, HF's own expert arithmetic on HF's tensors:
    gate_up = x @ W[e] + b[e]; gate/up de-interleaved; HF's _apply_gate (clamped SwiGLU); down."""
    ex = model.model.layers[0].mlp.experts
    x = torch.from_numpy(st["l0.ffn_norm"])
    ids = torch.from_numpy(st["l0.expert_ids"]).long()
    gate, up, act, out = [], [], [], []
    for t in range(x.shape[0]):
        g_t, u_t, a_t, o_t = [], [], [], []
        for e in ids[t].tolist():
            gu = x[t] @ ex.gate_up_proj[e] + ex.gate_up_proj_bias[e]
            h = ex._apply_gate(gu)
            (
                g_t.append(gu[0::2]),
                u_t.append(gu[1::2]),
                a_t.append(h),
                o_t.append(h @ ex.down_proj[e] + ex.down_proj_bias[e]),
            )
        (
            gate.append(torch.stack(g_t)),
            up.append(torch.stack(u_t)),
            act.append(torch.stack(a_t)),
            out.append(torch.stack(o_t)),
        )
    st["l0.gate"], st["l0.up"] = torch.stack(gate).numpy(), torch.stack(up).numpy()
    st["l0.swiglu"], st["l0.expert_out"] = torch.stack(act).numpy(), torch.stack(out).numpy()
    w = torch.from_numpy(st["l0.expert_weights"])
    recombined = (torch.stack(out) * w[:, :, None]).sum(1).numpy()
    err = float(np.max(np.abs(recombined - st["l0.ffn_out"])))
    assert err < 1e-4 * max(1.0, float(np.max(np.abs(st["l0.ffn_out"])))), err
    clamp = ex.limit
    return {
        "gate_above_limit": int((st["l0.gate"] > clamp).sum()),
        "up_outside_limit": int((np.abs(st["l0.up"]) > clamp).sum()),
        "values": int(st["l0.gate"].size),
    }


@torch.no_grad()
def run_sequence(model, cfg, ids, substages):
    with Capture(model, cfg, substages) as cap:
        logits = model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()
    st = cap.st
    st["logits"] = logits
    extra = {}
    if substages and cfg.model_type == "gpt_oss":
        extra["clamp_hits_l0"] = gpt_oss_experts_l0(model, st)
    if cfg.model_type == "llama" and substages:
        # Store q/k in the GGUF file's column order (what an engine computing from the file sees).
        for name, n in (
            ("l0.q", cfg.num_attention_heads),
            ("l0.q_rope", cfg.num_attention_heads),
            ("l0.k", cfg.num_key_value_heads),
            ("l0.k_rope", cfg.num_key_value_heads),
        ):
            a = st[name].reshape(len(ids), n, cfg.head_dim)
            st[name] = a[:, :, perm_cols(cfg.head_dim)].reshape(len(ids), -1)
    return st, extra


# What is stored (the repository must stay light): in every variant the logits of every sequence
# and the gpt-oss router outputs of every layer (tiny). The exact variant (f16) also stores the
# hidden state after every layer of every sequence, all layer-0 sub-stages of p0 and, of the long
# sequence, the ones the window, sinks and long RoPE factors act on. A quantized variant stores,
# besides, only p0's layer-0 sub-stages and hidden states (what its weights change, op by op);
# the long sequence's window, sinks and RoPE do not depend on the weight type, so its stages are
# stored once (f16) and only its logits per quantized variant.
LONG_STAGES = {"l0.q_rope", "l0.k_rope", "l0.attn_out", "l0.ffn_out"}
EXACT_VARIANT = "f16"


def keep_stage(name, seq, variant):
    if name == "logits" or "router_logits" in name or "expert_weights" in name or "expert_ids" in name:
        return True
    if variant != EXACT_VARIANT:
        return seq == "p0"
    if name.endswith(".out"):
        return True
    return seq == "p0" or (seq == "long" and name in LONG_STAGES)


def check_f16_round_trip(model, vmodel, types, origin):
    """The f16 GGUF holds the HF weights rounded to f16 (the F16 tensors) or exactly (the F32
    ones: norms, biases, router, sinks, rope factors): the weights read back must equal them bit
    for bit. Returns how many of the F16 tensors' bf16 values f16 could not hold exactly (the
    ones below f16's normal range, |w| < 2^-14, lose low bits)."""
    vsd = vmodel.state_dict()
    n, changed, worst = 0, 0, 0.0
    for k, v in model.state_dict().items():
        kinds = {types[name] for name in origin[k]}
        assert len(kinds) == 1 and kinds <= {"F16", "F32"}, (k, kinds)
        want = v.to(torch.float16).to(torch.float32) if kinds == {"F16"} else v
        assert torch.equal(vsd[k], want), k
        tied_copy = k == "lm_head.weight" and origin[k] == ["token_embd.weight"]
        if kinds == {"F16"} and not tied_copy:  # each F16 tensor counted once
            n += v.numel()
            changed += int((want != v).sum())
            worst = max(worst, float((want - v).abs().max()))
    return {
        "what": "the F16 tensors' values (HF's bf16 weights) that f16 does not hold exactly",
        "values": n,
        "changed": changed,
        "max_abs_change": worst,
    }


def check_llama_file_order(path, st, cfg):
    """Independent of HF: q and q_rope of layer 0 recomputed in numpy from the GGUF's permuted
    attn_q rows and rope_freqs divisors, RoPE on adjacent pairs (2i, 2i+1); must equal the stored
    stages (HF's, column-permuted). Returns the largest differences."""
    t, _, r = read_dequantized(path)
    base = float(r.fields["llama.rope.freq_base"].contents())
    d, n_head = cfg.head_dim, cfg.num_attention_heads
    q = st["l0.attn_norm"].astype(np.float64) @ t["blk.0.attn_q.weight"].astype(np.float64).T
    T = q.shape[0]
    theta = (
        np.arange(T)[:, None] * (base ** (-np.arange(0, d, 2) / d) / t["rope_freqs.weight"].astype(np.float64))[None, :]
    )
    c, s_ = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    qh = q.reshape(T, n_head, d // 2, 2)
    rot = np.stack([qh[..., 0] * c - qh[..., 1] * s_, qh[..., 0] * s_ + qh[..., 1] * c], axis=-1).reshape(T, -1)
    dq = float(np.max(np.abs(q - st["l0.q"])))
    dr = float(np.max(np.abs(rot - st["l0.q_rope"])))
    scale = float(np.max(np.abs(st["l0.q_rope"])))
    assert dq < 1e-4 * scale and dr < 1e-4 * scale, (dq, dr, scale)
    return {
        "q_max_diff": dq,
        "q_rope_max_diff": dr,
        "q_rope_max_abs": scale,
        "what": "layer-0 q and q_rope recomputed in numpy (f64) from the GGUF's attn_q rows and rope_freqs "
        "with adjacent-pair RoPE, against HF's (column-permuted) stages",
    }


def rope_record(model, cfg, seq_len):
    """How HF computed RoPE for a sequence of seq_len tokens: inverse frequencies (f32) and the
    cos/sin scale, per layer type where they differ."""
    rot = model.model.rotary_emb
    pos = torch.arange(seq_len)[None]
    dummy = torch.zeros(1, seq_len, cfg.hidden_size)
    with torch.no_grad():
        cos, _ = rot(dummy, pos)
    inv = rot.inv_freq.float().numpy()
    return {
        "inv_freq": [float(x) for x in inv],
        "attention_scaling": float(rot.attention_scaling),
        "cos_pos1_first4": [float(x) for x in cos[0, 1, :4]],
    }


# ---------------------------------------------------------------------------------------------


def rope_description(fam, cfg):
    if fam == "llama3":
        return (
            "llama3: inv_freq_i = base^(-2i/d) / rope_freqs[i] (rope_freqs.weight in the GGUF holds the "
            "divisors: 1 for wavelength < orig/high_freq_factor, factor for wavelength > orig/low_freq_factor, "
            "1/((1-s)/factor + s) between, s = (orig/wavelength - low)/(high - low)); pairs adjacent (2i, 2i+1) in "
            "the GGUF's permuted Q/K rows (HF: halves); cos/sin scale 1"
        )
    if fam == "qwen3":
        return "default: inv_freq_i = base^(-2i/d); neox pairing (i, i + d/2); QK-norm (RMSNorm over each head) before RoPE"
    if fam == "phi3":
        return (
            "longrope: inv_freq_i = 1 / (ext_i * base^(2i/d)), ext = short_factor when the sequence length "
            "(max position + 1) <= original_max_position_embeddings (64), else long_factor for EVERY position of "
            "that forward pass (HF's rule); cos and sin multiplied by attention_factor = sqrt(1 + ln(s)/ln(64)), "
            "s = max_position_embeddings/original = 4; neox pairing"
        )
    return (
        "yarn (truncate=False: correction range not rounded): inv_freq = interp*(1-ramp_ext) + extrap*ramp_ext with "
        "interp = base^(-2i/d)/factor, extrap = base^(-2i/d), ramp from find_correction_range(beta_fast=32, "
        "beta_slow=1, d, base, orig=4096); cos and sin multiplied by attention_factor = 0.1 ln(factor) + 1; "
        "neox pairing (halves)"
    )


def window_description(fam, cfg):
    if fam == "phi3":
        return f"every layer: a query at position q sees keys q-{cfg.sliding_window - 1}..q ({cfg.sliding_window} keys)"
    if fam == "gpt-oss":
        return (
            f"layer types {cfg.layer_types}: sliding layers see keys q-{cfg.sliding_window - 1}..q "
            f"({cfg.sliding_window} keys); full layers see 0..q. Attention sinks: one learned logit per head "
            "joins the softmax denominator (softmax over [scores, sink], the sink's column dropped)"
        )
    return "none (full causal attention)"


def write_bins(dir_, prefix, st):
    entries = []
    for name in sorted(st, key=stage_order):
        if name.endswith("expert_ids"):
            continue
        arr = np.ascontiguousarray(st[name], dtype="<f4")
        fname = f"{prefix}.{name}.bin"
        (dir_ / fname).write_bytes(arr.tobytes())
        entries.append(
            {
                "name": name,
                "shape": list(arr.shape),
                "file": fname,
                "max_abs": float(np.max(np.abs(arr))),
                "rms": float(np.sqrt(np.mean(arr.astype(np.float64) ** 2))),
            }
        )
    return entries


ORDER = [
    "embd",
    "l0.attn_norm",
    "l0.q",
    "l0.k",
    "l0.v",
    "l0.q_norm",
    "l0.k_norm",
    "l0.q_rope",
    "l0.k_rope",
    "l0.attn_out",
    "l0.o_proj",
    "l0.attn_resid",
    "l0.ffn_norm",
    "l0.router_logits",
    "l0.expert_weights",
    "l0.gate",
    "l0.up",
    "l0.swiglu",
    "l0.expert_out",
    "l0.ffn_out",
]


def stage_order(name):
    if name in ORDER:
        return (0, ORDER.index(name), "")
    if name in ("final_norm", "logits"):
        return (2, ["final_norm", "logits"].index(name), name)
    return (1, int(name[1 : name.index(".")]), name)  # l{i}.out, l{i}.router_logits, ...


def variants_for(fam, only=None):
    v = [("f16", ["--type", "f16"]), ("q8_0", ["--type", "q8_0"]), ("q4_k", ["--type", "q4_k"])]
    if fam == "gpt-oss":
        v.append(("mxfp4", ["--type", "q8_0", "--experts", "mxfp4"]))
    return [x for x in v if only is None or x[0] in only]


def build_family(fam, out_root, seed, variants=None):
    out = out_root / fam
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp) / fam
        tok = build_tokenizer(fam, hf_dir)
        cfg = make_config(fam, tok)
        model = randomize(build_model(cfg), fam, seed)
        save_checkpoint(model, cfg, hf_dir)
        shutil.copy(hf_dir / "tokenizer.json", out / "tokenizer.json")
        shutil.copy(hf_dir / "tokenizer_config.json", out / "tokenizer_config.json")
        shutil.copy(hf_dir / "config.json", out / "config.json")

        prompts = json.loads((GOLDEN_DIR / "qwen25coder05b.json").read_text())["prompts"]
        seqs = [
            {"name": f"p{i}", "text": p["text"], "ids": tok(p["text"]).input_ids, "substages": i == 0}
            for i, p in enumerate(prompts)
        ]
        if fam in ("phi3", "gpt-oss"):
            apache = (GOLDEN_DIR / "Apache-2.0.txt").read_text(encoding="utf-8")
            ids = tok(apache).input_ids[:LONG_TOKENS]
            seqs.append({"name": "long", "text": tok.decode(ids), "ids": ids, "substages": True})
        bos_text = FAMILIES[fam]["bos"] if FAMILIES[fam]["add_bos"] else ""
        for s in seqs:  # the tokenizer round-trips the text
            assert tok.decode(s["ids"]) == bos_text + s["text"] or s["name"] == "long", s["text"]

        index = {
            "model": fam,
            "hf_class": type(model).__name__,
            "seed": seed,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "gguf": importlib.metadata.version("gguf"),
            "computed": "HF transformers' own forward (eager attention, float32, CPU) on the weights each GGUF holds "
            "(read back by gguf.GGUFReader, dequantized by gguf.quants.dequantize, mapped to HF names)",
            "hf_config": json.loads((hf_dir / "config.json").read_text()),
            "tokenizer": {
                "model": "byte-level BPE",
                "vocab": VOCAB,
                "pre": FAMILIES[fam]["pre"],
                "add_bos": FAMILIES[fam]["add_bos"],
                "bos": FAMILIES[fam]["bos"],
                "eos": FAMILIES[fam]["eos"],
                "note": "trained with tokenizers on Apache-2.0.txt + the golden prompts"
                + (
                    "; Phi-3's real tokenizer is a 32k SentencePiece vocabulary, too big for a fixture, "
                    "so this one is byte-level BPE with the gpt2 split"
                    if fam == "phi3"
                    else ""
                ),
            },
            "rope": rope_description(fam, cfg),
            "attention_window": window_description(fam, cfg),
            "rope_hf": {s["name"]: None for s in seqs},
            "layout": "little-endian f32, row-major; [T, width] rows are positions; q/k/v/q_rope/k_rope/attn_out put "
            "head h at columns h*head_dim..(h+1)*head_dim"
            + (
                "; llama: q, k, q_rope, k_rope columns are in the GGUF's permuted order (within a head, column "
                "2i is HF dim i and 2i+1 is HF dim i + d/2), as an engine computing from the file sees them"
                if fam == "llama3"
                else ""
            )
            + ("; gpt-oss expert stages are [T, top_k, width] in the order of expert_ids" if fam == "gpt-oss" else ""),
            "sequences": [{k: s[k] for k in ("name", "text", "ids")} for s in seqs],
            "tokenize": [{"text": t, "ids": tok(t, add_special_tokens=False).input_ids} for t in tokenize_strings()],
            "variants": [],
        }
        for s in seqs:
            index["rope_hf"][s["name"]] = rope_record(model, cfg, len(s["ids"]))

        for vname, vargs in variants_for(fam, variants):
            gguf_name = f"{fam}-{vname}.gguf"
            subprocess.run(
                [sys.executable, str(CONVERTER), str(hf_dir), "-o", str(out / gguf_name), "-q", *vargs],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            sd, types, origin = state_dict_from_gguf(out / gguf_name, cfg)
            vmodel = build_model(make_config(fam, tok))
            missing, unexpected = vmodel.load_state_dict(sd, strict=False)
            if missing or unexpected:
                raise SystemExit(f"{gguf_name}: state dict mismatch {missing} {unexpected}")
            f16_rounding = check_f16_round_trip(model, vmodel, types, origin) if vname == EXACT_VARIANT else None
            vdir = out / vname
            vdir.mkdir()
            ventry = {
                "name": vname,
                "gguf": gguf_name,
                "gguf_sha256": hashlib.sha256((out / gguf_name).read_bytes()).hexdigest(),
                "converter_args": vargs,
                "tensor_types": types,
                **({"f16_rounding": f16_rounding} if f16_rounding else {}),
                "sequences": {},
            }
            for s in seqs:
                st, extra = run_sequence(vmodel, cfg, s["ids"], s["substages"])
                if fam == "llama3" and s["name"] == "p0":
                    extra["file_order_check"] = check_llama_file_order(out / gguf_name, st, cfg)
                st = {k: v for k, v in st.items() if keep_stage(k, s["name"], vname)}
                rec = {
                    "stages": write_bins(vdir, s["name"], st),
                    "argmax": [int(a) for a in np.argmax(st["logits"], axis=-1)],
                    **extra,
                }
                if fam == "gpt-oss":
                    rec["expert_ids"] = {
                        f"l{i}": st[f"l{i}.expert_ids"].astype(int).tolist() for i in range(cfg.num_hidden_layers)
                    }
                    # the smallest gap between the k-th and (k+1)-th router logit: how close a
                    # routing decision came to flipping
                    k = cfg.num_experts_per_tok
                    rec["router_min_gap"] = {
                        f"l{i}": float(
                            np.min(-np.diff(np.sort(st[f"l{i}.router_logits"], axis=-1)[:, ::-1], axis=-1)[:, k - 1])
                        )
                        for i in range(cfg.num_hidden_layers)
                    }
                for e in rec["stages"]:
                    e["file"] = f"{vname}/{e['file']}"
                ventry["sequences"][s["name"]] = rec
            index["variants"].append(ventry)
            print(
                f"{fam} {vname}: {(out / gguf_name).stat().st_size} bytes, {sum(len(s['ids']) for s in seqs)} positions"
            )
        if fam in ("phi3", "gpt-oss"):
            index["feature_checks"] = feature_checks(fam, model, cfg, seqs[-1]["ids"])
        (out / "reference.json").write_text(json.dumps(index, indent=1) + "\n")


@torch.no_grad()
def feature_checks(fam, model, cfg, ids):
    """How far the last sequence's logits move when a feature is switched off: shows that the
    window, the sinks and the long RoPE factors matter on it."""
    base = model(torch.tensor([ids]), use_cache=False).logits[0]
    out = {}
    win = cfg.sliding_window
    cfg.sliding_window = 1 << 20
    out["no_window_max_logit_diff"] = float((model(torch.tensor([ids]), use_cache=False).logits[0] - base).abs().max())
    cfg.sliding_window = win
    if fam == "gpt-oss":
        saved = [layer.self_attn.sinks.clone() for layer in model.model.layers]
        for layer in model.model.layers:
            layer.self_attn.sinks.fill_(-1e9)
        out["no_sinks_max_logit_diff"] = float(
            (model(torch.tensor([ids]), use_cache=False).logits[0] - base).abs().max()
        )
        for layer, s in zip(model.model.layers, saved):
            layer.self_attn.sinks.copy_(s)
    if fam == "phi3":
        short = model(torch.tensor([ids[:64]]), use_cache=False).logits[0]
        out["long_vs_short_factors_max_logit_diff_first64"] = float((short - base[:64]).abs().max())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "tiny")
    ap.add_argument("--only", help="comma-separated families (default: all)")
    ap.add_argument("--variants", help="comma-separated GGUF variants: f16,q8_0,q4_k,mxfp4 (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one thread: the same summation order on every run
    for n, fam in enumerate(FAMILIES):
        if args.only and fam not in args.only.split(","):
            continue
        build_family(fam, args.out, seed=1000 + n, variants=args.variants.split(",") if args.variants else None)


if __name__ == "__main__":
    main()
