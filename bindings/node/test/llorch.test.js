'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

// In the repository, the library built by `make` (unless LLORCH_LIB says otherwise).
process.env.LLORCH_LIB ||= path.join(__dirname, '../../../target/release/libllorch.so');
const { Context, Model, LlorchError, Status, StopReason, version, libraryPath } = require('..');

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

test('version: the library is the release of this package', () => {
  assert.strictEqual(version(), require('../package.json').version);
  assert.strictEqual(libraryPath, path.resolve(process.env.LLORCH_LIB));
});

test('a library that cannot be found is an error naming the paths tried', () => {
  const run = (env) => spawnSync(process.execPath, ['-e', "require('.')"], {
    cwd: path.join(__dirname, '..'), env: { PATH: process.env.PATH, ...env }, encoding: 'utf8',
  });
  const explicit = run({ LLORCH_LIB: '/nonexistent/libllorch.so' });
  assert.notStrictEqual(explicit.status, 0);
  assert.match(explicit.stderr, /cannot load the llorch library/);
  assert.match(explicit.stderr, /\/nonexistent\/libllorch\.so: no such file/);
  // Without LLORCH_LIB: beside the package, then the loader's names; none has it here.
  const searched = run({ LD_LIBRARY_PATH: '/nonexistent' });
  assert.notStrictEqual(searched.status, 0);
  for (const tried of [path.join(__dirname, '..', 'libllorch.so.1'), 'libllorch.so.1', 'libllorch.so:']) {
    assert.ok(searched.stderr.includes(tried), `${tried} not in:\n${searched.stderr}`);
  }
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

test('logit bias, penalties and parseSpecial reach the sampler', async (t) => {
  const model = await load(t);
  const prompt = chat(model, 'What is the capital of France?');
  const ids = async (opts, text = prompt) => {
    const s = model.createSession({ nCtx: 512 });
    try {
      const out = [];
      const stats = await s.generate(text, { ...opts, onToken: (_text, token) => { out.push(token); } });
      return { out, stats };
    } finally {
      s.close();
    }
  };
  const plain = await ids({ maxTokens: 2 });
  // -100 on the greedy first token makes another one first; +100 on another forces it.
  const banned = await ids({ maxTokens: 2, logitBias: { [plain.out[0]]: -100 } });
  assert.notStrictEqual(banned.out[0], plain.out[0]);
  const s = model.createSession();
  t.after(() => s.close());
  const [giraffe] = s.tokenize(' giraffe');
  const forced = await ids({ maxTokens: 1, logitBias: { [giraffe]: 100 } });
  assert.deepStrictEqual(forced.out, [giraffe]);
  // Bad values are refused by the library, naming the field: proof that they reach it.
  for (const [opts, field] of [[{ repeatPenalty: -1 }, /repeat_penalty/], [{ presencePenalty: NaN }, /presence_penalty/],
    [{ logitBias: { 1: NaN } }, /logit_bias/]]) {
    await assert.rejects(s.generate(prompt, opts), (e) => e.status === Status.INVALID_ARGUMENT && field.test(e.message));
  }
  // As text, each chat marker is several tokens instead of one.
  const literal = await ids({ maxTokens: 1, parseSpecial: false });
  assert.ok(literal.stats.promptTokens > plain.stats.promptTokens);
  // Greedy decoding repeats itself on this text; a huge frequency penalty over the window
  // forbids repeating any token.
  const catText = 'The cat sat on the mat. '.repeat(3) + 'The cat';
  const repeated = await ids({ maxTokens: 16 }, catText);
  assert.ok(new Set(repeated.out).size < repeated.out.length, 'no repeat without the penalty: the check proves nothing');
  const penalized = await ids({ maxTokens: 16, frequencyPenalty: 1000, penaltyLastN: 64 }, catText);
  assert.strictEqual(new Set(penalized.out).size, penalized.out.length);
});

// Logprobs, session state (save/restore/fork/rewind) and tokenizer queries.
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

test('a JSON Schema constrains the output; a bad one is an error naming the keyword', async (t) => {
  const model = await load(t);
  const s = model.createSession({ nCtx: 1024, seed: 3 });
  t.after(() => s.close());
  const schema = {
    type: 'object',
    properties: {
      name: { type: 'string', minLength: 1, maxLength: 16 },
      colours: { type: 'array', items: { enum: ['red', 'green', 'blue'] }, minItems: 1, maxItems: 3 },
    },
    required: ['name', 'colours'],
    additionalProperties: false,
  };
  let text = '';
  // The schema bounds the output well under 300 bytes, so it always completes.
  const stats = await s.generate(chat(model, 'Describe a flag as JSON.'), {
    maxTokens: 300, temperature: 1.0, jsonSchema: schema, onToken: (piece) => { text += piece; },
  });
  assert.strictEqual(stats.stopReason, StopReason.EOS, text);
  const v = JSON.parse(text);
  assert.deepStrictEqual(Object.keys(v).sort(), ['colours', 'name'], text);
  assert.ok(typeof v.name === 'string' && [...v.name].length >= 1 && [...v.name].length <= 16, text);
  assert.ok(v.colours.length >= 1 && v.colours.length <= 3, text);
  assert.ok(v.colours.every((c) => ['red', 'green', 'blue'].includes(c)), text);
  // A grammar, through the async iterator.
  s.reset();
  let answer = '';
  for await (const { text: piece } of s.stream(chat(model, 'Yes or no?'), { grammar: 'root ::= "yes" | "no"' })) answer += piece;
  assert.ok(answer === 'yes' || answer === 'no', answer);
  await assert.rejects(s.generate('x', { jsonSchema: { type: 'string', format: 'email' } }),
    (e) => e.status === Status.INVALID_ARGUMENT && /unsupported keyword 'format'/.test(e.message));
});

test('kvType reaches the session params: f32 and f16 on the CPU, a bad value refused', async (t) => {
  const model = await load(t);
  const { KvType } = require('..');
  model.createSession({ nCtx: 64, kvType: KvType.F32 }).close();
  model.createSession({ nCtx: 64, kvType: KvType.F16 }).close();
  assert.throws(() => model.createSession({ nCtx: 64, kvType: 7 }),
    (e) => e instanceof LlorchError && e.status === Status.INVALID_ARGUMENT && /kv_type/.test(e.message));
});
