#!/usr/bin/env python3
"""Gemma 3 stage references computed by HF transformers' own forward pass.

Reads the real GGUF file with the `gguf` package, dequantizes every tensor to f32 with
`gguf.quants.dequantize`, maps the GGUF metadata and tensor names onto a `Gemma3TextConfig`
and a `Gemma3ForCausalLM` state dict (our mapping, written here; transformers' own GGUF
loader is not used for the weights), and runs HF's forward (eager attention, f32, CPU).

Before writing anything it checks the result against the golden file (HF's own run on the
same weights): top-10 logits at the last position within --tol and the argmax at every
position for each prompt, the greedy 32-token continuations, and the Apache-2.0 perplexity.
It also runs prompt 0 with the other RMSNorm-weight convention and prints how far that
lands, which shows the chosen convention is the file's.

Then, for golden prompt 0, it writes one little-endian f32 file per stage and index.json
(format: scripts/reference/README.md).
"""

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import torch
import transformers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig
from transformers.models.gemma3 import modeling_gemma3

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "gemma3-270m"
GOLDEN_FILE = "gemma3_270m.json"

# Facts of Gemma 3 that the GGUF file does not carry (the published HF config of
# google/gemma-3-270m and the Gemma 3 report): local layers use RoPE base 10000, one layer
# in six is global (layers 5, 11, 17), attention scores are scaled by
# query_pre_attn_scalar^-0.5 with query_pre_attn_scalar = 256, no logit soft-capping
# (Gemma 3 replaced it by QK-norm), GELU with the tanh approximation.
ROPE_BASE_LOCAL = 10000.0
SLIDING_WINDOW_PATTERN = 6
QUERY_PRE_ATTN_SCALAR = 256
# Length of the sequence that exercises the sliding window (window.json).
WINDOW_TOKENS = 640


def read_gguf(path):
    """Metadata (scalars and strings only) and every tensor dequantized to f32, [out, in]."""
    reader = gguf.GGUFReader(path)
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key not in (
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
        ):
            continue
        if key.startswith("GGUF."):
            continue
        meta[key] = field.contents()
    meta["vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    tensors = {}
    types = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        tensors[t.name] = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        types[t.name] = t.tensor_type.name
    return meta, tensors, types


def hparams_from_meta(meta):
    a = "gemma3."
    n_layer = int(meta[a + "block_count"])
    head_dim = int(meta[a + "attention.key_length"])
    assert int(meta[a + "attention.value_length"]) == head_dim
    n_embd = int(meta[a + "embedding_length"])
    layer_types = [
        "sliding_attention" if (i + 1) % SLIDING_WINDOW_PATTERN else "full_attention" for i in range(n_layer)
    ]
    return {
        "arch": "gemma3",
        "n_vocab": int(meta["vocab_size"]),
        "n_embd": n_embd,
        "n_layer": n_layer,
        "n_head": int(meta[a + "attention.head_count"]),
        "n_head_kv": int(meta[a + "attention.head_count_kv"]),
        "head_dim": head_dim,
        "n_rot": head_dim,
        "n_ff": int(meta[a + "feed_forward_length"]),
        "n_ctx_train": int(meta[a + "context_length"]),
        "rms_eps": float(meta[a + "attention.layer_norm_rms_epsilon"]),
        "rope_base_global": float(meta[a + "rope.freq_base"]),
        "rope_base_local": ROPE_BASE_LOCAL,
        "rope_pairing": "neox",
        "sliding_window": int(meta[a + "attention.sliding_window"]),
        "sliding_window_pattern": SLIDING_WINDOW_PATTERN,
        "layer_types": layer_types,
        "local_layers": [i for i, t in enumerate(layer_types) if t == "sliding_attention"],
        "global_layers": [i for i, t in enumerate(layer_types) if t == "full_attention"],
        "query_pre_attn_scalar": QUERY_PRE_ATTN_SCALAR,
        "attn_scale": QUERY_PRE_ATTN_SCALAR**-0.5,
        "embd_scale": float(torch.tensor(n_embd**0.5, dtype=torch.float32)),
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "activation": "gelu_pytorch_tanh",
        "tied_output": True,
        "bos_id": int(meta["tokenizer.ggml.bos_token_id"]),
    }


def hf_config(hp):
    cfg = Gemma3TextConfig(
        vocab_size=hp["n_vocab"],
        hidden_size=hp["n_embd"],
        intermediate_size=hp["n_ff"],
        num_hidden_layers=hp["n_layer"],
        num_attention_heads=hp["n_head"],
        num_key_value_heads=hp["n_head_kv"],
        head_dim=hp["head_dim"],
        hidden_activation=hp["activation"],
        max_position_embeddings=hp["n_ctx_train"],
        rms_norm_eps=hp["rms_eps"],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": hp["rope_base_global"]},
            "sliding_attention": {"rope_type": "default", "rope_theta": hp["rope_base_local"]},
        },
        query_pre_attn_scalar=hp["query_pre_attn_scalar"],
        sliding_window=hp["sliding_window"],
        layer_types=hp["layer_types"],
        final_logit_softcapping=hp["final_logit_softcapping"],
        attn_logit_softcapping=hp["attn_logit_softcapping"],
        tie_word_embeddings=True,
        bos_token_id=hp["bos_id"],
    )
    cfg._attn_implementation = "eager"
    return cfg


# GGUF name (per layer, after "blk.N.") -> HF name (after "model.layers.N.").
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_output": "self_attn.o_proj",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_ffw_norm": "post_feedforward_layernorm",
}
NORMS = {"attn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"}


def state_dict(tensors, n_layer, file_stores_one_plus_w):
    """HF state dict. HF Gemma's RMSNorm computes x_hat * (1 + w): when the file stores
    1 + w, HF's w is the stored value minus 1."""
    off = -1.0 if file_stores_one_plus_w else 0.0
    sd = {
        "model.embed_tokens.weight": tensors["token_embd.weight"],
        "lm_head.weight": tensors["token_embd.weight"],
        "model.norm.weight": tensors["output_norm.weight"] + off,
    }
    for i in range(n_layer):
        for g, h in LAYER_NAMES.items():
            w = tensors[f"blk.{i}.{g}.weight"]
            sd[f"model.layers.{i}.{h}.weight"] = w + off if g in NORMS else w
    used = {f"blk.{i}.{g}.weight" for i in range(n_layer) for g in LAYER_NAMES}
    used |= {"token_embd.weight", "output_norm.weight"}
    unused = set(tensors) - used
    if unused:
        sys.exit(f"GGUF tensors not mapped to HF: {sorted(unused)}")
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in sd.items()}


def build_model(cfg, sd):
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).to(torch.float32).eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # Non-persistent buffers (rotary inv_freq, embed_scale) are not in a state dict.
    if missing or unexpected:
        sys.exit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr() or torch.equal(
        model.lm_head.weight, model.model.embed_tokens.weight
    )
    return model


@torch.no_grad()
def logits_of(model, ids):
    return model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()


@torch.no_grad()
def greedy(model, ids, n):
    ids = list(ids)
    out = []
    for _ in range(n):
        logits = model(torch.tensor([ids]), use_cache=False, logits_to_keep=1).logits[0, -1]
        t = int(torch.argmax(logits))
        out.append(t)
        ids.append(t)
    return out


def check_prompt(model, p):
    logits = logits_of(model, p["ids"])
    last = logits[-1]
    dev = float(np.max(np.abs(last[p["top10_ids"]] - np.array(p["top10_logits"]))))
    argmax = [int(a) for a in np.argmax(logits, axis=-1)]
    return dev, argmax == p["argmax_per_pos"], argmax


@torch.no_grad()
def perplexity(model, ids, ctx, max_chunks, bos):
    """The golden method: consecutive windows of ctx tokens, BOS replaces each window's first
    token, each window from an empty cache, positions ctx/2 .. ctx-2 predict the next token."""
    n_chunks = min(len(ids) // ctx, max_chunks)
    nll, count = 0.0, 0
    for c in range(n_chunks):
        window = list(ids[c * ctx : (c + 1) * ctx])
        window[0] = bos
        hidden = model.model(torch.tensor([window]), use_cache=False).last_hidden_state[0]
        first = ctx // 2
        logits = model.lm_head(hidden[first : ctx - 1]).double()
        logp = torch.log_softmax(logits, dim=-1)
        targets = torch.tensor(window[first + 1 : ctx])
        nll -= float(logp[torch.arange(len(targets)), targets].sum())
        count += len(targets)
    return math.exp(nll / count), n_chunks, count


class Recorder:
    """Captures layer-0 sub-stages with forward hooks on HF's own modules, and q/k after
    RoPE by wrapping the module-level eager attention function that HF's attention calls."""

    def __init__(self, model, hp):
        self.model = model
        self.hp = hp
        self.stages = {}
        self.handles = []
        self.orig_attn = modeling_gemma3.eager_attention_forward

    def put(self, name, t):
        # [1, T, W] or [1, H, T, D] -> [T, W]
        t = t.detach().float()
        if t.dim() == 4:
            t = t[0].transpose(0, 1).reshape(t.shape[2], -1)
        elif t.dim() == 3:
            t = t[0]
        self.stages[name] = t.numpy().copy()

    def out_hook(self, name):
        return lambda mod, inp, out: self.put(name, out[0] if isinstance(out, tuple) else out)

    def in_hook(self, name):
        return lambda mod, inp: self.put(name, inp[0])

    def __enter__(self):
        m = self.model.model
        l0 = m.layers[0]
        hooks = [
            (m.embed_tokens, "embd"),
            (l0.input_layernorm, "l0.attn_norm"),
            (l0.self_attn.q_proj, "l0.q"),
            (l0.self_attn.k_proj, "l0.k"),
            (l0.self_attn.v_proj, "l0.v"),
            (l0.self_attn.q_norm, "l0.q_norm"),
            (l0.self_attn.k_norm, "l0.k_norm"),
            (l0.self_attn.o_proj, "l0.o_proj"),
            (l0.post_attention_layernorm, "l0.post_attn_norm"),
            (l0.pre_feedforward_layernorm, "l0.ffn_norm"),
            (l0.mlp.gate_proj, "l0.gate"),
            (l0.mlp.up_proj, "l0.up"),
            (l0.mlp.down_proj, "l0.ffn_out"),
            (l0.post_feedforward_layernorm, "l0.post_ffn_norm"),
            (m.norm, "final_norm"),
        ]
        for mod, name in hooks:
            self.handles.append(mod.register_forward_hook(self.out_hook(name)))
        self.handles.append(l0.self_attn.o_proj.register_forward_pre_hook(self.in_hook("l0.attn_out")))
        self.handles.append(l0.mlp.down_proj.register_forward_pre_hook(self.in_hook("l0.geglu")))
        self.handles.append(l0.pre_feedforward_layernorm.register_forward_pre_hook(self.in_hook("l0.attn_resid")))
        for i, layer in enumerate(m.layers):
            self.handles.append(layer.register_forward_hook(self.out_hook(f"l{i}.out")))

        def attn(module, query, key, value, *args, **kwargs):
            if module.layer_idx == 0:
                self.put("l0.q_rope", query)
                self.put("l0.k_rope", key)
            return self.orig_attn(module, query, key, value, *args, **kwargs)

        modeling_gemma3.eager_attention_forward = attn
        return self

    def __exit__(self, *exc):
        modeling_gemma3.eager_attention_forward = self.orig_attn
        for h in self.handles:
            h.remove()


STAGE_ORDER = [
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
    "l0.post_attn_norm",
    "l0.attn_resid",
    "l0.ffn_norm",
    "l0.gate",
    "l0.up",
    "l0.geglu",
    "l0.ffn_out",
    "l0.post_ffn_norm",
]  # then l{i}.out, final_norm, logits_last

FORMULAS = {
    "rmsnorm": "rmsnorm(x, w) = x / sqrt(mean(x^2) + eps) * (1 + w_hf), in f32; the GGUF file stores "
    "(1 + w_hf) (see norm_convention), so with the stored weight s: x / sqrt(mean(x^2) + eps) * s",
    "embd": "token_embd row * embd_scale, embd_scale = f32(sqrt(n_embd)) = 25.298221... (HF multiplies by "
    "a float32 tensor of sqrt(640))",
    "attn_norm": "rmsnorm(x, attn_norm)",
    "q, k, v": "attn_norm @ W^T (no bias)",
    "q_norm, k_norm": "rmsnorm per head over head_dim (256) with attn_q_norm / attn_k_norm, before RoPE",
    "rope": "neox pairing (i, i + head_dim/2), angle = pos * base^(-2i/head_dim), i < head_dim/2, position = row "
    "index from 0; base = rope_base_local (10000) on local (sliding) layers, rope_base_global (from "
    "gemma3.rope.freq_base, 1e6) on global layers; HF computes inv_freq and cos/sin in f32",
    "attention": "scores = q_rope k_rope^T * query_pre_attn_scalar^-0.5 (= 1/16), no soft-capping; causal mask; "
    "local layers also mask keys with k_pos <= q_pos - sliding_window (a query sees itself and the "
    "sliding_window - 1 positions before it, 512 in all); softmax in f32; GQA: query head h uses KV head "
    "h / (n_head / n_head_kv)",
    "o_proj": "attn_out @ attn_output^T",
    "post_attn_norm": "rmsnorm(o_proj, post_attention_norm)",
    "attn_resid": "x + post_attn_norm",
    "ffn_norm": "rmsnorm(attn_resid, ffn_norm)  (HF: pre_feedforward_layernorm)",
    "geglu": "gelu_tanh(gate) * up, gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))",
    "ffn_out": "geglu @ ffn_down^T",
    "post_ffn_norm": "rmsnorm(ffn_out, post_ffw_norm)",
    "out": "attn_resid + post_ffn_norm",
    "final_norm": "rmsnorm(last hidden, output_norm)",
    "logits": "final_norm @ token_embd^T (tied), no final soft-capping",
}

OP_DTYPES = {
    "weights": "float32 (dequantized from the GGUF by gguf.quants.dequantize)",
    "activations": "float32 throughout (torch CPU, default matmul)",
    "rmsnorm": "float32 (x.float(), weight.float())",
    "rope cos/sin": "float32 (inv_freq float32, positions float32)",
    "softmax": "float32",
    "embd_scale": "float32 tensor",
}


@torch.no_grad()
def window_check(model, text_ids, hp, n_tokens, positions):
    """A sequence longer than the sliding window, so the window matters: BOS + the first
    n_tokens - 1 text tokens. Returns argmax at every position, top-10 at some positions,
    and how far the logits land when the window is ignored (all layers see everything)."""
    ids = [hp["bos_id"]] + list(text_ids[: n_tokens - 1])
    logits = logits_of(model, ids)
    window = model.config.sliding_window
    model.config.sliding_window = 1 << 30
    try:
        no_window = logits_of(model, ids)
    finally:
        model.config.sliding_window = window
    top = {}
    for pos in positions:
        order = np.argsort(-logits[pos], kind="stable")[:10]
        top[str(pos)] = {"top10_ids": [int(i) for i in order], "top10_logits": [float(logits[pos, i]) for i in order]}
    first = hp["sliding_window"]
    return {
        "what": f"BOS + the first {n_tokens - 1} tokens of Apache-2.0.txt (as the perplexity tokenizes it): "
        f"longer than the sliding window ({window}), so local layers drop keys from position {first} on "
        "(query q sees keys q-511..q)",
        "ids": ids,
        "argmax_per_pos": [int(a) for a in np.argmax(logits, axis=-1)],
        "top10": top,
        "window_ignored_max_logit_diff_before": float(np.max(np.abs(logits[:first] - no_window[:first]))),
        "window_ignored_max_logit_diff_from": float(np.max(np.abs(logits[first:] - no_window[first:]))),
        "window_ignored_argmax_changes": int(np.sum(np.argmax(logits, -1) != np.argmax(no_window, -1))),
    }


def write_fixtures(out_dir, gguf_path, prompt, hp, stages, norm_dev, types):
    out_dir.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256(Path(gguf_path).read_bytes()).hexdigest()
    entries = []
    names = STAGE_ORDER + [f"l{i}.out" for i in range(hp["n_layer"])] + ["final_norm", "logits_last"]
    for name in names:
        arr = stages[name]
        if name == "logits_last":
            arr = arr[-1]
        arr = np.ascontiguousarray(arr, dtype="<f4")
        (out_dir / f"{name}.bin").write_bytes(arr.tobytes())
        layer = int(name[1 : name.index(".")]) if name.startswith("l") and name[1].isdigit() else None
        entries.append(
            {
                "name": name,
                "stage": name.split(".", 1)[1] if layer is not None else name,
                "layer": layer,
                "shape": list(arr.shape),
                "file": f"{name}.bin",
                "positions": "last" if name == "logits_last" else "all",
                "max_abs": float(np.max(np.abs(arr))),
                "rms": float(np.sqrt(np.mean(arr.astype(np.float64) ** 2))),
            }
        )
    index = {
        "model": MODEL_NAME,
        "gguf_file": Path(gguf_path).name,
        "gguf_sha256": sha,
        "prompt": prompt["text"],
        "ids": prompt["ids"],
        "n_tokens": len(prompt["ids"]),
        "hparams": hp,
        "norm_convention": "the GGUF stores 1 + w_hf for every RMSNorm weight (attn_norm, attn_q_norm, "
        "attn_k_norm, post_attention_norm, ffn_norm, post_ffw_norm, output_norm): multiply by the stored "
        f"value as is. The other reading (stored = w_hf, multiply by 1 + stored) misses the golden top-10 "
        f"logits of prompt 0 by {norm_dev:.3f}",
        "formulas": FORMULAS,
        "op_dtypes": OP_DTYPES,
        "weight_types": {k: v for k, v in types.items() if k.startswith("blk.0.") or not k.startswith("blk.")},
        "dtype": "f32",
        "byte_order": "little",
        "layout": "row-major; 2-D stages are [n_tokens, width] with position-major rows; "
        "q/k/v/q_norm/k_norm/q_rope/k_rope/attn_out put head h at columns h*head_dim..(h+1)*head_dim",
        "computed": f"HF transformers {transformers.__version__} Gemma3ForCausalLM, eager attention, torch "
        f"{torch.__version__} CPU float32, from the f32 dequantized weights; stages captured with "
        "forward hooks on HF's modules (q_rope/k_rope: the inputs of HF's eager attention function)",
        "stages": entries,
    }
    (out_dir / "index.json").write_text(json.dumps(index, indent=1) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", help="GGUF file (default: scripts/fetch-model gemma3-270m)")
    ap.add_argument("--golden", help="golden file (default: $LLORCH_GOLDEN_DIR or /work/shared/golden)")
    ap.add_argument("--out", help="write the fixtures of prompt 0 to OUT/gemma3-270m/")
    ap.add_argument("--tol", type=float, default=1e-3, help="top-10 logit tolerance (default 1e-3)")
    ap.add_argument(
        "--skip-ppl", action="store_true", help="skip the perplexity and sliding-window checks (no window.json)"
    )
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    gguf_path = (
        args.gguf
        or subprocess.run([str(REPO / "scripts/fetch-model"), MODEL_NAME], check=True, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    golden_path = Path(args.golden or Path(os.environ.get("LLORCH_GOLDEN_DIR", "/work/shared/golden")) / GOLDEN_FILE)
    golden = json.loads(golden_path.read_text())

    print(f"transformers {transformers.__version__}, torch {torch.__version__}, gguf reader, numpy {np.__version__}")
    print(f"reading {gguf_path}")
    meta, tensors, types = read_gguf(gguf_path)
    hp = hparams_from_meta(meta)
    cfg = hf_config(hp)

    # Which RMSNorm convention does the file use? Try both on prompt 0; the right one must
    # match the golden logits, the other is reported to show the difference matters.
    p0 = golden["prompts"][0]
    results = {}
    for stores_one_plus_w in (True, False):
        model = build_model(cfg, state_dict(tensors, hp["n_layer"], stores_one_plus_w))
        dev, ok, _ = check_prompt(model, p0)
        results[stores_one_plus_w] = (dev, ok, model)
        print(
            f"norm weights read as {'1 + w' if stores_one_plus_w else 'w'}: prompt 0 top-10 deviation "
            f"{dev:.2e}, argmax {'equal' if ok else 'DIFFERENT'}"
        )
    good = [k for k, (dev, ok, _) in results.items() if dev <= args.tol and ok]
    if len(good) != 1:
        sys.exit("FAIL: no single RMSNorm convention matches the golden logits")
    stores_one_plus_w = good[0]
    model = results[stores_one_plus_w][2]
    wrong_dev = results[not stores_one_plus_w][0]
    del results
    if not stores_one_plus_w:
        sys.exit("unexpected: the file stores w, the fixtures' notes assume 1 + w; update them")

    worst, all_ok = 0.0, True
    for i, p in enumerate(golden["prompts"]):
        dev, ok, argmax = check_prompt(model, p)
        cont = greedy(model, p["ids"], len(p["greedy32_ids"]))
        same = sum(a == b for a, b in zip(cont, p["greedy32_ids"]))
        print(
            f"prompt {i}: top-10 max deviation {dev:.2e}, argmax at all {len(p['ids'])} positions "
            f"{'equal' if ok else 'DIFFERENT'}, greedy {same}/{len(cont)} tokens equal"
        )
        worst = max(worst, dev)
        all_ok &= ok and dev <= args.tol and cont == p["greedy32_ids"]
    if not all_ok:
        sys.exit(f"FAIL: golden prompts do not match (worst top-10 deviation {worst:.2e})")

    if not args.skip_ppl:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(Path(gguf_path).parent), gguf_file=Path(gguf_path).name)
        for p in golden["prompts"]:  # the tokenizer must agree with the golden ids first
            assert tok(p["text"], add_special_tokens=False).input_ids == p["ids"][1:], p["text"]
        g = golden["ppl"][0]
        text = (golden_path.parent / g["text"]).read_text()
        ids = tok(text, add_special_tokens=False).input_ids
        ppl, chunks, scored = perplexity(model, ids, g["ctx"], g["chunks"], hp["bos_id"])
        rel = abs(ppl - g["ppl"]) / g["ppl"]
        print(
            f"perplexity {ppl:.4f} over {chunks} windows, {scored} scored tokens ({len(ids)} text tokens); "
            f"golden {g['ppl']:.4f}, relative difference {rel:.1e}"
        )
        if len(ids) != g["text_tokens"] or scored != g["scored_tokens"] or rel > 1e-4:
            sys.exit("FAIL: perplexity does not match the golden figure")
        win = window_check(
            model, ids, hp, WINDOW_TOKENS, [hp["sliding_window"] - 1, hp["sliding_window"], WINDOW_TOKENS - 1]
        )
        print(
            f"window check ({WINDOW_TOKENS} tokens): ignoring the window moves the logits by "
            f"{win['window_ignored_max_logit_diff_before']:.1e} before position {hp['sliding_window']} and "
            f"{win['window_ignored_max_logit_diff_from']:.2f} from there on "
            f"({win['window_ignored_argmax_changes']} argmax changes)"
        )

    print(f"OK: worst top-10 deviation {worst:.2e} (tol {args.tol}); the other norm reading is off by {wrong_dev:.3f}")
    if args.out:
        with Recorder(model, hp) as rec:
            logits = logits_of(model, p0["ids"])
        rec.stages["logits_last"] = logits
        # The recorded run is the checked one: same logits as the hook-free run.
        assert np.array_equal(logits, logits_of(model, p0["ids"]))
        out_dir = Path(args.out) / MODEL_NAME
        write_fixtures(out_dir, gguf_path, p0, hp, rec.stages, wrong_dev, types)
        if not args.skip_ppl:
            (out_dir / "window.json").write_text(json.dumps(win) + "\n")
        print(f"wrote {len(rec.stages)} stages to {out_dir}")


if __name__ == "__main__":
    main()
