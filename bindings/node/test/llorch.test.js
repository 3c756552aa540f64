'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { execFileSync } = require('node:child_process');
const path = require('node:path');
const { Context, Model, LlorchError, Status, StopReason, version } = require('..');

// $LLORCH_MODEL, else SmolLM2-135M through scripts/fetch-model (fails the test if it fails).
function modelPath() {
  if (process.env.LLORCH_MODEL) return process.env.LLORCH_MODEL;
  return execFileSync(path.join(__dirname, '../../../scripts/fetch-model'), ['smollm2-135m']).toString().trim();
}

async function load(t) {
  const ctx = new Context({ device: 'cpu' });
  const model = await Model.load(ctx, modelPath());
  t.after(() => { model.close(); ctx.close(); });
  return model;
}

const chat = (model, user) => model.applyChatTemplate([{ role: 'user', content: user }], true);

test('version', () => {
  assert.match(version(), /^\d+\.\d+\.\d+/);
});

test('bad path and bad device are errors with messages', async () => {
  const ctx = new Context();
  try {
    await assert.rejects(Model.load(ctx, '/nonexistent/model.gguf'), (e) => {
      assert.ok(e instanceof LlorchError);
      assert.strictEqual(e.status, Status.IO);
      assert.match(e.message, /\/nonexistent\/model\.gguf/);
      return true;
    });
  } finally {
    ctx.close();
  }
  assert.throws(() => new Context({ device: 'tpu' }), (e) => e.status === Status.INVALID_ARGUMENT);
});

test('generation streams whole pieces, async iterator agrees', async (t) => {
  const model = await load(t);
  assert.strictEqual(model.architecture(), 'llama');
  const s = model.createSession({ nCtx: 512 });
  t.after(() => s.close());
  const prompt = chat(model, 'Name three colors.');
  assert.ok(prompt.includes('Name three colors.'));
  const pieces = [];
  const stats = await s.generate(prompt, { maxTokens: 12, onToken: (text) => { pieces.push(text); } });
  assert.ok(pieces.length > 0 && stats.generatedTokens > 0 && stats.generatedTokens <= 12);
  assert.ok([StopReason.EOS, StopReason.LIMIT].includes(stats.stopReason));
  s.reset();
  let streamed = '';
  for await (const { text } of s.stream(prompt, { maxTokens: 12 })) streamed += text;
  assert.strictEqual(streamed, pieces.join(''));
  const toks = s.tokenize('Hello world');
  assert.ok(toks.length > 0);
  assert.strictEqual(s.detokenize(toks).toString('utf8'), 'Hello world');
});

test('cancel from the main thread while generating off it; AbortSignal; reuse', async (t) => {
  const model = await load(t);
  const s = model.createSession({ nCtx: 2048 });
  t.after(() => s.close());
  let n = 0;
  await assert.rejects(
    s.generate(chat(model, 'Write a long story about a lighthouse.'), {
      maxTokens: 500,
      onToken: () => {
        n += 1;
        if (n === 3) { s.cancel(); s.cancel(); } // twice is once
      },
    }),
    (e) => e.status === Status.CANCELLED && e.stats.stopReason === StopReason.CANCELLED,
  );
  assert.strictEqual(n, 3, 'cancel stops within one token');
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 300);
  await assert.rejects(s.generate(' Go on.', { maxTokens: 500, signal: ac.signal }), (e) => e.status === Status.CANCELLED);
  const stats = await s.generate(' Go on.', { maxTokens: 2 });
  assert.ok(stats.generatedTokens >= 1);
});

test('two sessions on one model in parallel; model closed first', async (t) => {
  const ctx = new Context();
  const model = await Model.load(ctx, modelPath());
  const prompt = chat(model, 'What is a GPU?');
  const a = model.createSession({ nCtx: 512 });
  const b = model.createSession({ nCtx: 512 });
  model.close();
  ctx.close();
  t.after(() => { a.close(); b.close(); });
  const run = async (s) => {
    let text = '';
    await s.generate(prompt, { maxTokens: 10, onToken: (x) => { text += x; } });
    return text;
  };
  const [x, y] = await Promise.all([run(a), run(b)]);
  assert.ok(x.length > 0);
  assert.strictEqual(x, y);
});
