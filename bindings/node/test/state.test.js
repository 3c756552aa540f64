'use strict';
// Logprobs, session state (save/restore/fork/rewind) and tokenizer queries.
const test = require('node:test');
const assert = require('node:assert');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

process.env.LLORCH_LIB ||= path.join(__dirname, '../../../target/release/libllorch.so');
const { Context, Model, Status } = require('..');

function modelPath() {
  if (process.env.LLORCH_MODEL) return process.env.LLORCH_MODEL;
  return execFileSync(path.join(__dirname, '../../../scripts/fetch-model'), ['smollm2-135m']).toString().trim();
}

async function load(t) {
  const ctx = new Context();
  const model = await Model.load(ctx, modelPath());
  t.after(() => { model.close(); ctx.close(); });
  return model;
}

const TURN1 = 'Once upon a time, in a small village by the sea, there lived';
const TURN2 = ' The next morning, the old fisherman';

/** The tokens one generation sampled. */
async function turn(session, prompt, opts) {
  const stats = await session.generate(prompt, opts);
  const toks = session.tokens();
  return toks.slice(toks.length - stats.generatedTokens);
}

test('logprobs: greedy tokens are the top ones, sorted, and the ones generated', async (t) => {
  const model = await load(t);
  const s = model.createSession({ nCtx: 512 });
  t.after(() => s.close());
  const lps = [];
  for await (const piece of s.stream(TURN1, { maxTokens: 12, logprobs: 3 })) lps.push(...piece.logprobs || []);
  assert.ok(lps.length > 0 && lps.length <= 12, `${lps.length} tokens reported`);
  const toks = s.tokens().slice(-lps.length);
  lps.forEach((lp, i) => {
    assert.strictEqual(lp.token, toks[i]);
    assert.strictEqual(lp.top.length, 3);
    assert.strictEqual(lp.top[0].token, lp.token);
    assert.strictEqual(lp.top[0].logprob, lp.logprob);
    assert.ok(lp.logprob <= 0 && lp.top[0].logprob >= lp.top[1].logprob && lp.top[1].logprob >= lp.top[2].logprob);
  });
  // Off: no logprobs, same text.
  const other = model.createSession({ nCtx: 512 });
  t.after(() => other.close());
  const pieces = [];
  await other.generate(TURN1, { maxTokens: 12, onPiece: (p) => { pieces.push(p); } });
  assert.ok(pieces.every((p) => p.logprobs === undefined));
  assert.deepStrictEqual(other.tokens(), s.tokens());
});

test('save, restore, continue equals an uninterrupted run; fork; rewind; bad states', async (t) => {
  const model = await load(t);
  const opts = { maxTokens: 16, temperature: 0.9, topP: 0.95 };
  const sessions = [];
  const make = (seed) => { const s = model.createSession({ nCtx: 512, seed }); sessions.push(s); return s; };
  t.after(() => sessions.forEach((s) => s.close()));
  const a = make(4);
  await turn(a, TURN1, opts);
  const want = await turn(a, TURN2, opts);

  const b = make(4);
  await turn(b, TURN1, opts);
  const state = b.save();
  const fork = b.fork();
  sessions.push(fork);
  const c = make(99);
  for (const bad of [state.subarray(0, state.length - 1), Buffer.concat([state, Buffer.from([0])])]) {
    assert.throws(() => c.restore(bad), (e) => e.status === Status.INVALID_ARGUMENT && /session state/.test(e.message));
  }
  const damaged = Buffer.from(state);
  damaged[damaged.length >> 1] ^= 8;
  assert.throws(() => c.restore(damaged), /damaged/);
  assert.deepStrictEqual(c.tokens(), []);
  c.restore(state);
  assert.deepStrictEqual(await turn(c, TURN2, opts), want);
  assert.deepStrictEqual(await turn(fork, TURN2, opts), want);

  const file = path.join(os.tmpdir(), `llorch-node-state-${process.pid}`);
  b.saveFile(file);
  const d = make(1);
  d.restoreFile(file);
  fs.unlinkSync(file);
  assert.deepStrictEqual(await turn(d, TURN2, opts), want);
  assert.throws(() => d.restoreFile(file), (e) => e.status === Status.IO);

  const before = b.tokens().length;
  const first = await turn(b, TURN2, { maxTokens: 12 });
  b.rewind(before);
  assert.deepStrictEqual(await turn(b, TURN2, { maxTokens: 12 }), first);
  assert.throws(() => b.rewind(1 << 20), (e) => e.status === Status.INVALID_ARGUMENT);
});

test('tokenizer queries: special ids, token bytes, special or not', async (t) => {
  const model = await load(t);
  const { bos, eos, eot } = model.specialTokens();
  assert.ok(eos >= 0 && bos >= -1 && eot >= -1);
  assert.ok(model.tokenText(eos).length > 0);
  assert.strictEqual(model.tokenIsSpecial(eos), true);
  const s = model.createSession();
  t.after(() => s.close());
  const [hello, ...rest] = s.tokenize('hello');
  assert.deepStrictEqual(rest, []);
  assert.strictEqual(model.tokenText(hello).toString(), 'hello');
  assert.strictEqual(model.tokenIsSpecial(hello), false);
  assert.throws(() => model.tokenText(model.vocabSize()), (e) => e.status === Status.INVALID_ARGUMENT);
});
