#!/usr/bin/env python3
"""Independent reference forward pass (numpy) for the qwen2 and llama GGUF architectures.

Written from the model cards / papers and the GGUF spec only: it shares no code with the Rust
engine. Weights are dequantized to f32 by the `gguf` package (gguf.quants.dequantize); all
activations are computed in float64 so the reference is "exact" for the given f32 weights.

  python3 scripts/reference/forward.py --model qwen2.5-coder-0.5b --out tests/fixtures/reference/

1. Check: runs every prompt of the golden file (its token ids) and compares the last-position
   top-10 logits (tolerance --tol, default 1e-3) and the argmax at every position. Exits non-zero
   on a mismatch. It also runs prompt 0 with the other RoPE pairing, to show that the chosen one
   is the one that matters.
2. Fixtures (with --out): for golden prompt 0, every stage of the forward pass as little-endian
   f32 .bin files plus index.json, in OUT/<model>/ (see README.md for the layout).
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import gguf

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# model name (as scripts/fetch-model knows it) -> golden file name
GOLDEN = {
    "qwen2.5-coder-0.5b": "qwen25coder05b.json",
    "smollm2-135m": "smollm2_135m.json",
}


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            sys.exit(f"metadata key {key} missing")
        return default
    return f.contents()


class Model:
    def __init__(self, path):
        self.r = gguf.GGUFReader(path)
        self.tensors = {t.name: t for t in self.r.tensors}
        self.cache = {}
        arch = field(self.r, "general.architecture")
        if arch not in ("qwen2", "llama"):
            sys.exit(f"unsupported architecture {arch}")
        self.arch = arch
        a = arch + "."
        self.n_embd = int(field(self.r, a + "embedding_length"))
        self.n_layer = int(field(self.r, a + "block_count"))
        self.n_head = int(field(self.r, a + "attention.head_count"))
        self.n_kv = int(field(self.r, a + "attention.head_count_kv"))
        self.n_ff = int(field(self.r, a + "feed_forward_length"))
        self.eps = float(field(self.r, a + "attention.layer_norm_rms_epsilon"))
        self.rope_base = float(field(self.r, a + "rope.freq_base"))
        self.head_dim = self.n_embd // self.n_head
        # Qwen2 files carry no rope.dimension_count: the whole head is rotated.
        self.n_rot = int(field(self.r, a + "rope.dimension_count", self.head_dim))
        self.tied = "output.weight" not in self.tensors
        # The llama converter permutes Q/K rows so that rotating adjacent pairs in the file's
        # order equals HF's rotate-half; qwen2 files keep HF's order (rotate halves).
        self.rope_pairing = "normal" if arch == "llama" else "neox"

    def hparams(self):
        return {
            "arch": self.arch, "n_embd": self.n_embd, "n_layer": self.n_layer,
            "n_head": self.n_head, "n_head_kv": self.n_kv, "head_dim": self.head_dim,
            "n_rot": self.n_rot, "n_ff": self.n_ff, "rms_eps": self.eps,
            "rope_base": self.rope_base, "tied_output": self.tied,
            "rope_pairing": self.rope_pairing,
        }

    def w(self, name):
        """Dequantized tensor as f32, numpy shape = reversed GGUF dims (rows = dims[1])."""
        if name not in self.cache:
            t = self.tensors.get(name)
            if t is None:
                sys.exit(f"tensor {name} missing")
            x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            want = tuple(int(d) for d in reversed(t.shape))
            x = x.reshape(want)
            self.cache[name] = x
        return self.cache[name]

    def has(self, name):
        return name in self.tensors

    def embed_rows(self, ids):
        t = self.tensors["token_embd.weight"]
        # Dequantize only the needed rows (each row is whole blocks).
        rows = gguf.quants.dequantize(t.data[np.asarray(ids)], t.tensor_type)
        return rows.reshape(len(ids), self.n_embd).astype(np.float64)


def linear(x, w, b=None):
    """x [T, in] (f64) times w [out, in] (f32) transposed, in f64."""
    y = x @ w.T.astype(np.float64)
    if b is not None:
        y = y + b.astype(np.float64)
    return y


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w.astype(np.float64)


def rope(x, n_heads, head_dim, n_rot, base, pairing):
    """x [T, n_heads*head_dim]; rotate the first n_rot dims of every head by pos * base^(-2i/n_rot)."""
    T = x.shape[0]
    x = x.reshape(T, n_heads, head_dim).copy()
    half = n_rot // 2
    inv = base ** (-np.arange(half, dtype=np.float64) * 2.0 / n_rot)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]  # [T, half]
    c = np.cos(ang)[:, None, :]
    s = np.sin(ang)[:, None, :]
    if pairing == "neox":  # pairs (i, i + n_rot/2)
        a = x[:, :, :half].copy()
        b = x[:, :, half:n_rot].copy()
        x[:, :, :half] = a * c - b * s
        x[:, :, half:n_rot] = a * s + b * c
    else:  # "normal": adjacent pairs (2i, 2i+1)
        a = x[:, :, 0:n_rot:2].copy()
        b = x[:, :, 1:n_rot:2].copy()
        x[:, :, 0:n_rot:2] = a * c - b * s
        x[:, :, 1:n_rot:2] = a * s + b * c
    return x.reshape(T, n_heads * head_dim)


def attention(q, k, v, n_head, n_kv, head_dim):
    """Causal grouped-query attention. q [T, n_head*hd], k/v [T, n_kv*hd] -> [T, n_head*hd]."""
    T = q.shape[0]
    q = q.reshape(T, n_head, head_dim)
    k = k.reshape(T, n_kv, head_dim)
    v = v.reshape(T, n_kv, head_dim)
    group = n_head // n_kv
    out = np.empty((T, n_head, head_dim))
    mask = np.triu(np.full((T, T), -np.inf), k=1)
    for h in range(n_head):
        g = h // group  # query head h reads KV head h // group
        s = q[:, h, :] @ k[:, g, :].T / np.sqrt(head_dim) + mask
        s = s - s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        out[:, h, :] = p @ v[:, g, :]
    return out.reshape(T, n_head * head_dim)


def silu(x):
    return x / (1.0 + np.exp(-x))


def forward(m, ids, pairing=None, record=None, all_logits=True):
    """Returns logits [T, vocab] (or [1, vocab] for the last position). `record(name, layer, arr)`
    receives every stage when given."""
    pairing = pairing or m.rope_pairing
    rec = record or (lambda *a: None)
    x = m.embed_rows(ids)
    rec("embd", None, x)
    for il in range(m.n_layer):
        p = f"blk.{il}."
        bias = (lambda n: m.w(p + n) if m.has(p + n) else None)
        h = rmsnorm(x, m.w(p + "attn_norm.weight"), m.eps)
        q = linear(h, m.w(p + "attn_q.weight"), bias("attn_q.bias"))
        k = linear(h, m.w(p + "attn_k.weight"), bias("attn_k.bias"))
        v = linear(h, m.w(p + "attn_v.weight"), bias("attn_v.bias"))
        qr = rope(q, m.n_head, m.head_dim, m.n_rot, m.rope_base, pairing)
        kr = rope(k, m.n_kv, m.head_dim, m.n_rot, m.rope_base, pairing)
        a = attention(qr, kr, v, m.n_head, m.n_kv, m.head_dim)
        o = linear(a, m.w(p + "attn_output.weight"), bias("attn_output.bias"))
        x1 = x + o
        h2 = rmsnorm(x1, m.w(p + "ffn_norm.weight"), m.eps)
        gate = linear(h2, m.w(p + "ffn_gate.weight"))
        up = linear(h2, m.w(p + "ffn_up.weight"))
        act = silu(gate) * up
        f = linear(act, m.w(p + "ffn_down.weight"))
        x = x1 + f
        for name, arr in (("attn_norm", h), ("q", q), ("k", k), ("v", v), ("q_rope", qr),
                          ("k_rope", kr), ("attn_out", a), ("o_proj", o), ("attn_resid", x1),
                          ("ffn_norm", h2), ("gate", gate), ("up", up), ("swiglu", act),
                          ("ffn_out", f), ("out", x)):
            rec(name, il, arr)
    xn = rmsnorm(x, m.w("output_norm.weight"), m.eps)
    rec("final_norm", None, xn)
    if not all_logits:
        xn = xn[-1:]
    wout = m.w("token_embd.weight" if m.tied else "output.weight")
    # Chunk over the vocab so the f64 copy of the output matrix stays small.
    logits = np.empty((xn.shape[0], wout.shape[0]))
    for i in range(0, wout.shape[0], 16384):
        logits[:, i:i + 16384] = linear(xn, wout[i:i + 16384])
    rec("logits_last", None, logits[-1])
    return logits


def check(m, golden, tol):
    worst = 0.0
    ok = True
    for i, pr in enumerate(golden["prompts"]):
        ids = pr["ids"]
        lg = forward(m, ids)
        am = [int(a) for a in lg.argmax(axis=1)]
        last = lg[-1]
        got = last[np.asarray(pr["top10_ids"])]
        dev = float(np.max(np.abs(got - np.asarray(pr["top10_logits"]))))
        top10 = [int(t) for t in np.argsort(-last)[:10]]
        worst = max(worst, dev)
        good = dev <= tol and am == pr["argmax_per_pos"]
        ok &= good
        print(f"prompt {i} ({len(ids)} tokens): top10 max |dev| {dev:.2e}, argmax per pos "
              f"{'equal' if am == pr['argmax_per_pos'] else 'DIFFERENT'}, top10 ids "
              f"{'equal' if top10 == pr['top10_ids'] else 'reordered/different'}"
              f"{'' if good else '  <-- FAIL'}")
    other = "neox" if m.rope_pairing == "normal" else "normal"
    pr = golden["prompts"][0]
    lg = forward(m, pr["ids"], pairing=other, all_logits=False)
    dev_other = float(np.max(np.abs(lg[-1][np.asarray(pr["top10_ids"])] - np.asarray(pr["top10_logits"]))))
    print(f"largest top-10 logit deviation: {worst:.2e} (tolerance {tol:g}); RoPE pairing "
          f"{m.rope_pairing}. With the other pairing ({other}) prompt 0 deviates by {dev_other:.3f}")
    return ok, worst, dev_other


def write_fixtures(m, model_name, model_path, golden, out_dir):
    ids = golden["prompts"][0]["ids"]
    d = os.path.join(out_dir, model_name)
    os.makedirs(d, exist_ok=True)
    stages = []

    def rec(name, layer, arr):
        # Per-layer stages: all of layer 0; only the layer output for the other layers.
        if layer is not None and layer != 0 and name != "out":
            return
        full = name if layer is None else f"l{layer}.{name}"
        a = np.ascontiguousarray(arr, dtype="<f4")
        fname = full + ".bin"
        a.tofile(os.path.join(d, fname))
        stages.append({
            "name": full, "stage": name, "layer": layer, "shape": list(a.shape), "file": fname,
            "positions": "last" if name == "logits_last" else "all",
            "max_abs": float(np.max(np.abs(arr))), "rms": float(np.sqrt(np.mean(np.square(arr)))),
        })

    forward(m, ids, record=rec, all_logits=False)
    h = hashlib.sha256()
    with open(model_path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 24), b""):
            h.update(blk)
    index = {
        "model": model_name,
        "gguf_file": os.path.basename(model_path),
        "gguf_sha256": h.hexdigest(),
        "prompt": golden["prompts"][0]["text"],
        "ids": ids,
        "n_tokens": len(ids),
        "hparams": m.hparams(),
        "dtype": "f32",
        "byte_order": "little",
        "layout": "row-major; 2-D stages are [n_tokens, width] with position-major rows; "
                  "q/k/v/q_rope/k_rope/attn_out put head h at columns h*head_dim..(h+1)*head_dim",
        "computed": "float64 from f32 dequantized weights, rounded to f32 when written",
        "stages": stages,
    }
    with open(os.path.join(d, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, s["file"])) for s in stages)
    print(f"wrote {len(stages)} stages, {total / 1e6:.2f} MB to {d}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="name for scripts/fetch-model, e.g. qwen2.5-coder-0.5b")
    ap.add_argument("--gguf", help="GGUF path (default: ask scripts/fetch-model)")
    ap.add_argument("--golden", help="golden JSON (default: $LLORCH_GOLDEN_DIR or tests/golden)")
    ap.add_argument("--out", help="fixture directory; a subdirectory named after the model is written")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--skip-check", action="store_true")
    args = ap.parse_args()

    path = args.gguf or subprocess.run([os.path.join(REPO, "scripts", "fetch-model"), args.model],
                                       check=True, capture_output=True, text=True).stdout.strip()
    gpath = args.golden
    if gpath is None:
        if args.model not in GOLDEN:
            sys.exit(f"no golden file known for {args.model}; pass --golden")
        gpath = os.path.join(os.environ.get("LLORCH_GOLDEN_DIR", os.path.join(REPO, "tests", "golden")), GOLDEN[args.model])
    golden = json.load(open(gpath))
    m = Model(path)
    print(f"{args.model}: {path}\n{json.dumps(m.hparams())}")
    ok = True
    if not args.skip_check:
        ok, _, _ = check(m, golden, args.tol)
    if args.out:
        if not ok:
            sys.exit("reference disagrees with the golden file: no fixtures written")
        write_fixtures(m, args.model, path, golden, args.out)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
