'use strict';
// Model.embed against the HF transformers reference of tests/fixtures/embed
// (scripts/reference/embeddings_hf.py): SmolLM2-135M's pooled final hidden states.
const test = require('node:test');
const assert = require('node:assert');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

process.env.LLORCH_LIB ||= path.join(__dirname, '../../../target/release/libllorch.so');
const { Context, Model, LlorchError, Status, Pooling } = require('..');

const FIXTURE = path.join(__dirname, '../../../tests/fixtures/embed/smollm2-135m');
const model = () => Model.load(new Context(), process.env.LLORCH_MODEL
  || execFileSync(path.join(__dirname, '../../../scripts/fetch-model'), ['smollm2-135m']).toString().trim());

function relErr(got, want) {
  let num = 0;
  let den = 0;
  want.forEach((w, i) => { num += (got[i] - w) ** 2; den += w * w; });
  return Math.sqrt(num / den);
}

// Tolerance as in tests/session_embed.rs: 2e-3 relative (8-bit activations over 30 layers;
// measured 2.5e-4), while a wrong pooling misses by 30% or more.
test('embed: mean, last and CLS vectors match HF transformers; normalized ones are unit', async (t) => {
  const m = await model();
  t.after(() => m.close());
  const index = JSON.parse(fs.readFileSync(`${FIXTURE}.json`, 'utf8'));
  const buf = fs.readFileSync(`${FIXTURE}.bin`);
  const ref = new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
  const texts = index.inputs.map((i) => i.text);
  const { dim, pooling } = m.embeddingInfo();
  assert.deepStrictEqual({ dim, pooling }, { dim: index.n_embd, pooling: Pooling.LAST });
  for (const [k, p] of [Pooling.MEAN, Pooling.LAST, Pooling.CLS].entries()) {
    const vs = await m.embed(texts, { pooling: p });
    assert.strictEqual(vs.length, texts.length);
    vs.forEach((v, i) => {
      const e = relErr(v, ref.subarray((i * 3 + k) * dim, (i * 3 + k + 1) * dim));
      assert.ok(e <= 2e-3, `pooling ${p} input ${i}: ${e}`);
    });
  }
  const [unit] = await m.embed([texts[0]], { normalize: true });
  const norm = Math.sqrt(unit.reduce((s, x) => s + x * x, 0));
  assert.ok(Math.abs(norm - 1) < 1e-6, `norm ${norm}`);
});

test('embed: bad input is a LlorchError naming it', async (t) => {
  const m = await model();
  t.after(() => m.close());
  await assert.rejects(m.embed(['fine', '']), (e) => e instanceof LlorchError
    && e.status === Status.INVALID_ARGUMENT && /input 1 is empty/.test(e.message));
  await assert.rejects(m.embed(['fine'], { pooling: 9 }), /pooling is 9/);
  assert.deepStrictEqual(await m.embed([]), []);
});
