'use strict';
// Node binding of llorch through koffi. Generation and model loading run off the main thread
// (koffi's .async); token callbacks are registered per call and unregistered in `finally`.

const koffi = require('koffi');
const fs = require('node:fs');
const path = require('node:path');

const ABI_VERSION = 1; // LLORCH_ABI_VERSION of include/llorch.h this binding was written for

/**
 * Loads libllorch: from $LLORCH_LIB if it is set (and only from there), else from beside this
 * package, else by name through the system's loader (LD_LIBRARY_PATH, ldconfig's cache,
 * /lib, /usr/lib), first by the SONAME of this ABI. The error lists every path tried.
 */
function loadLibrary() {
  const names = [`libllorch.so.${ABI_VERSION}`, 'libllorch.so'];
  const candidates = process.env.LLORCH_LIB
    ? [path.resolve(process.env.LLORCH_LIB)]
    : [...names.map((n) => path.join(__dirname, n)), ...names];
  const tried = [];
  for (const where of candidates) {
    if (path.isAbsolute(where) && !fs.existsSync(where)) {
      tried.push(`${where}: no such file`);
      continue;
    }
    try {
      return { lib: koffi.load(where), where };
    } catch (e) {
      tried.push(`${where}: ${e.message}`);
    }
  }
  throw new Error(`llorch: cannot load the llorch library. Tried:\n  ${tried.join('\n  ')}\n`
    + 'Install it (make install in the llorch repository), set LD_LIBRARY_PATH to its folder, '
    + 'or set LLORCH_LIB to its path.');
}
const { lib, where: LIB } = loadLibrary();

koffi.opaque('llorch_context');
koffi.opaque('llorch_model');
koffi.opaque('llorch_session');
koffi.opaque('llorch_error');

const ContextParams = koffi.struct('llorch_context_params', {
  struct_size: 'size_t', device_type: 'int32_t', device_index: 'uint32_t', threads: 'uint32_t', memory_budget: 'uint64_t',
});
const SessionParams = koffi.struct('llorch_session_params', { struct_size: 'size_t', n_ctx: 'uint32_t', seed: 'uint64_t', kv_type: 'int32_t', fail_when_busy: 'bool' });
koffi.struct('llorch_logit_bias', { token: 'int32_t', bias: 'float' });
const GenerateParams = koffi.struct('llorch_generate_params', {
  struct_size: 'size_t', max_tokens: 'uint32_t', temperature: 'float', top_k: 'uint32_t', top_p: 'float', min_p: 'float',
  repeat_penalty: 'float', presence_penalty: 'float', frequency_penalty: 'float', penalty_last_n: 'uint32_t',
  stop: 'const char **', n_stop: 'size_t', logit_bias: 'const llorch_logit_bias *', n_logit_bias: 'size_t',
  parse_special: 'bool', logprobs: 'uint32_t', json_schema: 'const char *', grammar: 'const char *',
});
const Stats = koffi.struct('llorch_generate_stats', {
  struct_size: 'size_t', prompt_tokens: 'uint32_t', generated_tokens: 'uint32_t', prompt_seconds: 'double',
  generate_seconds: 'double', stop_reason: 'int32_t',
});
const EmbedParams = koffi.struct('llorch_embed_params', { struct_size: 'size_t', pooling: 'int32_t', normalize: 'bool' });
const ChatMessage = koffi.struct('llorch_chat_message', { role: 'const char *', content: 'const char *' });
// A piece with its log-probabilities; pointer fields as void * to decode with their lengths.
koffi.struct('llorch_top_logprob', { token: 'int32_t', logprob: 'float' });
koffi.struct('llorch_token_logprob', { token: 'int32_t', logprob: 'float', top: 'void *', n_top: 'size_t' });
koffi.struct('llorch_piece', {
  struct_size: 'size_t', text: 'void *', len: 'size_t', token: 'int32_t', logprobs: 'void *', n_logprobs: 'size_t',
});
const PieceCallback = koffi.proto('bool llorch_piece_callback(void *user_data, void *piece)');
const TokenCallback = koffi.proto('bool llorch_token_callback(void *user_data, const uint8_t *text, size_t len, int32_t token)');
const ProgressCallback = koffi.proto('bool llorch_progress_callback(void *user_data, float fraction)');

const f = {
  version: lib.func('const char *llorch_version(void)'),
  abi: lib.func('uint32_t llorch_abi_version(void)'),
  statusMessage: lib.func('const char *llorch_status_message(int32_t)'),
  errorMessage: lib.func('const char *llorch_error_message(const llorch_error *)'),
  errorFree: lib.func('void llorch_error_free(llorch_error *)'),
  stringFree: lib.func('void llorch_string_free(void *)'),
  tokensFree: lib.func('void llorch_tokens_free(void *)'),
  contextParamsInit: lib.func('void llorch_context_params_init(_Out_ llorch_context_params *)'),
  contextNew: lib.func('int32_t llorch_context_new(const llorch_context_params *, _Out_ llorch_context **, _Out_ llorch_error **)'),
  contextFree: lib.func('void llorch_context_free(llorch_context *)'),
  modelLoad: lib.func('int32_t llorch_model_load(const llorch_context *, const char *, llorch_progress_callback *, void *, _Out_ llorch_model **, _Out_ llorch_error **)'),
  modelFree: lib.func('void llorch_model_free(llorch_model *)'),
  architecture: lib.func('int32_t llorch_model_architecture(const llorch_model *, _Out_ const char **, _Out_ llorch_error **)'),
  contextLength: lib.func('int32_t llorch_model_context_length(const llorch_model *, _Out_ uint32_t *, _Out_ llorch_error **)'),
  vocabSize: lib.func('int32_t llorch_model_vocab_size(const llorch_model *, _Out_ uint32_t *, _Out_ llorch_error **)'),
  chatTemplate: lib.func('int32_t llorch_model_chat_template(const llorch_model *, _Out_ const char **, _Out_ llorch_error **)'),
  applyTemplate: lib.func('int32_t llorch_model_apply_chat_template(const llorch_model *, const llorch_chat_message *, size_t, bool, const char *, _Out_ void **, _Out_ llorch_error **)'),
  embedParamsInit: lib.func('void llorch_embed_params_init(_Out_ llorch_embed_params *)'),
  embeddingInfo: lib.func('int32_t llorch_model_embedding_info(const llorch_model *, _Out_ uint32_t *, _Out_ int32_t *, _Out_ llorch_error **)'),
  embed: lib.func('int32_t llorch_model_embed(const llorch_model *, const char **, size_t, const llorch_embed_params *, float *, size_t, _Out_ llorch_error **)'),
  sessionParamsInit: lib.func('void llorch_session_params_init(_Out_ llorch_session_params *)'),
  generateParamsInit: lib.func('void llorch_generate_params_init(_Out_ llorch_generate_params *)'),
  sessionNew: lib.func('int32_t llorch_session_new(const llorch_model *, const llorch_session_params *, _Out_ llorch_session **, _Out_ llorch_error **)'),
  sessionFree: lib.func('void llorch_session_free(llorch_session *)'),
  generate: lib.func('int32_t llorch_session_generate(llorch_session *, const char *, const llorch_generate_params *, llorch_token_callback *, void *, _Inout_ llorch_generate_stats *, _Out_ llorch_error **)'),
  cancel: lib.func('int32_t llorch_session_cancel(const llorch_session *)'),
  reset: lib.func('int32_t llorch_session_reset(llorch_session *, _Out_ llorch_error **)'),
  tokenize: lib.func('int32_t llorch_session_tokenize(const llorch_session *, const char *, bool, bool, _Out_ void **, _Out_ size_t *, _Out_ llorch_error **)'),
  detokenize: lib.func('int32_t llorch_session_detokenize(const llorch_session *, const int32_t *, size_t, _Out_ void **, _Out_ size_t *, _Out_ llorch_error **)'),
  generatePieces: lib.func('int32_t llorch_session_generate_pieces(llorch_session *, const char *, const llorch_generate_params *, llorch_piece_callback *, void *, _Inout_ llorch_generate_stats *, _Out_ llorch_error **)'),
  tokens: lib.func('int32_t llorch_session_tokens(const llorch_session *, _Out_ void **, _Out_ size_t *, _Out_ llorch_error **)'),
  rewind: lib.func('int32_t llorch_session_rewind(llorch_session *, uint32_t, _Out_ llorch_error **)'),
  fork: lib.func('int32_t llorch_session_fork(const llorch_session *, _Out_ llorch_session **, _Out_ llorch_error **)'),
  save: lib.func('int32_t llorch_session_save(const llorch_session *, _Out_ void **, _Out_ size_t *, _Out_ llorch_error **)'),
  bytesFree: lib.func('void llorch_bytes_free(void *)'),
  restore: lib.func('int32_t llorch_session_restore(llorch_session *, const uint8_t *, size_t, _Out_ llorch_error **)'),
  saveFile: lib.func('int32_t llorch_session_save_file(const llorch_session *, const char *, _Out_ llorch_error **)'),
  restoreFile: lib.func('int32_t llorch_session_restore_file(llorch_session *, const char *, _Out_ llorch_error **)'),
  specialTokens: lib.func('int32_t llorch_model_special_tokens(const llorch_model *, _Out_ int32_t *, _Out_ int32_t *, _Out_ int32_t *, _Out_ llorch_error **)'),
  tokenText: lib.func('int32_t llorch_model_token_text(const llorch_model *, int32_t, uint8_t *, size_t, _Out_ size_t *, _Out_ llorch_error **)'),
  tokenIsSpecial: lib.func('int32_t llorch_model_token_is_special(const llorch_model *, int32_t, _Out_ bool *, _Out_ llorch_error **)'),
};

if (f.abi() !== ABI_VERSION) {
  throw new Error(`llorch: library ABI ${f.abi()}, binding written for ${ABI_VERSION} (${LIB})`);
}

const Status = Object.freeze({
  OK: 0, INVALID_ARGUMENT: 1, BAD_MODEL: 2, UNSUPPORTED: 3, OUT_OF_MEMORY: 4, CANCELLED: 5, CONTEXT_FULL: 6,
  NO_DEVICE: 7, IO: 8, INTERNAL: 9, BUSY: 10,
});
const StopReason = Object.freeze({ EOS: 0, LIMIT: 1, STOP_STRING: 2, CANCELLED: 3 });
// GGUF's <arch>.pooling_type numbers; MODEL: as the model says (else last-token).
const Pooling = Object.freeze({ MODEL: 0, MEAN: 1, CLS: 2, LAST: 3 });
// llorch_kv_type: the KV cache's element type (AUTO: f32 on the CPU, f16 on a GPU).
const KvType = Object.freeze({ AUTO: 0, F16: 1, F32: 2 });

/** A failed call: `status` (a Status value), `statusName`, and the library's message. */
class LlorchError extends Error {
  constructor(status, message) {
    super(message);
    this.name = 'LlorchError';
    this.status = status;
    this.statusName = Object.keys(Status).find((k) => Status[k] === status) || String(status);
  }
}

/** Throws for a failed status, with the message of the error object (which it frees). */
function check(status, errOut) {
  if (status === Status.OK) return;
  const err = errOut[0];
  const message = err ? f.errorMessage(err) : f.statusMessage(status);
  f.errorFree(err);
  throw new LlorchError(status, message);
}

/** Runs a koffi function off the main thread. */
function callAsync(fn, ...args) {
  return new Promise((resolve, reject) => fn.async(...args, (e, r) => (e ? reject(e) : resolve(r))));
}

function alive(handle, what) {
  if (!handle) throw new LlorchError(Status.INVALID_ARGUMENT, `${what} is closed`);
  return handle;
}

// Backstop only: call close() yourself.
const registry = new FinalizationRegistry(({ free, handle }) => free(handle));

class Context {
  /** @param {{device?: string, threads?: number, memoryBudget?: number|bigint}} opts device "cpu" or "cuda:N" */
  constructor(opts = {}) {
    const p = {};
    f.contextParamsInit(p);
    const device = opts.device || 'cpu';
    const m = /^cuda:(\d+)$/.exec(device);
    if (m) {
      p.device_type = 1;
      p.device_index = Number(m[1]);
    } else if (device !== 'cpu') {
      throw new LlorchError(Status.INVALID_ARGUMENT, `device must be cpu or cuda:N, not ${device}`);
    }
    if (opts.threads) p.threads = opts.threads;
    if (opts.memoryBudget) p.memory_budget = opts.memoryBudget;
    const out = [null];
    const err = [null];
    check(f.contextNew(p, out, err), err);
    this.handle = out[0];
    registry.register(this, { free: f.contextFree, handle: this.handle }, this);
  }
  close() {
    if (this.handle) {
      registry.unregister(this);
      f.contextFree(this.handle);
      this.handle = null;
    }
  }
}

class Model {
  /** Loads a GGUF file off the main thread. onProgress(fraction) returning false cancels. */
  static async load(context, file, { onProgress } = {}) {
    const out = [null];
    const err = [null];
    const cb = onProgress ? koffi.register((_ud, fraction) => onProgress(fraction) !== false, koffi.pointer(ProgressCallback)) : null;
    try {
      const st = await callAsync(f.modelLoad, alive(context.handle, 'context'), file, cb, null, out, err);
      check(st, err);
    } finally {
      if (cb) koffi.unregister(cb);
    }
    return new Model(out[0]);
  }
  constructor(handle) {
    this.handle = handle;
    registry.register(this, { free: f.modelFree, handle }, this);
  }
  close() {
    if (this.handle) {
      registry.unregister(this);
      f.modelFree(this.handle);
      this.handle = null;
    }
  }
  #get(fn) {
    const out = [null];
    const err = [null];
    check(fn(alive(this.handle, 'model'), out, err), err);
    return out[0];
  }
  architecture() { return this.#get(f.architecture); }
  contextLength() { return this.#get(f.contextLength); }
  vocabSize() { return this.#get(f.vocabSize); }
  /** { bos, eos, eot }: the special ids, -1 where the model has none. */
  specialTokens() {
    const [bos, eos, eot, err] = [[0], [0], [0], [null]];
    check(f.specialTokens(alive(this.handle, 'model'), bos, eos, eot, err), err);
    return { bos: bos[0], eos: eos[0], eot: eot[0] };
  }
  /** The bytes a token stands for, as a Buffer (may be part of a UTF-8 character). */
  tokenText(token) {
    const n = [0];
    const err = [null];
    check(f.tokenText(alive(this.handle, 'model'), token, null, 0, n, err), err);
    const buf = Buffer.alloc(Number(n[0]));
    if (buf.length) check(f.tokenText(this.handle, token, buf, buf.length, n, err), err);
    return buf;
  }
  /** Whether a token is a control or user-defined one. */
  tokenIsSpecial(token) {
    const out = [false];
    const err = [null];
    check(f.tokenIsSpecial(alive(this.handle, 'model'), token, out, err), err);
    return out[0];
  }
  /** The Jinja chat template, or null. */
  chatTemplate() { return this.#get(f.chatTemplate); }
  /** @param {{role: string, content: string}[]} messages */
  applyChatTemplate(messages, addGenerationPrompt = true) {
    const out = [null];
    const err = [null];
    check(f.applyTemplate(alive(this.handle, 'model'), messages, messages.length, addGenerationPrompt, null, out, err), err);
    try {
      return koffi.decode(out[0], 'char', -1);
    } finally {
      f.stringFree(out[0]);
    }
  }
  /** {dim, pooling}: the vectors' size and the pooling Pooling.MODEL stands for. */
  embeddingInfo() {
    const dim = [0];
    const pooling = [0];
    const err = [null];
    check(f.embeddingInfo(alive(this.handle, 'model'), dim, pooling, err), err);
    return { dim: dim[0], pooling: pooling[0] };
  }
  /** One Float32Array per text (off the main thread): the final hidden state, pooled. */
  async embed(texts, { pooling = Pooling.MODEL, normalize = false } = {}) {
    const { dim } = this.embeddingInfo();
    const p = {};
    f.embedParamsInit(p);
    p.pooling = pooling;
    p.normalize = normalize;
    const out = new Float32Array(texts.length * dim);
    const err = [null];
    check(await callAsync(f.embed, this.handle, texts, texts.length, p, out, out.length, err), err);
    return Array.from(texts, (_, i) => out.subarray(i * dim, (i + 1) * dim));
  }
  /** A session holds the model: the model may be closed first. */
  createSession({ nCtx = 0, seed = 0, kvType = KvType.AUTO, failWhenBusy = false } = {}) {
    const p = {};
    f.sessionParamsInit(p);
    p.n_ctx = nCtx;
    p.seed = seed;
    p.kv_type = kvType;
    p.fail_when_busy = failWhenBusy;
    const out = [null];
    const err = [null];
    check(f.sessionNew(alive(this.handle, 'model'), p, out, err), err);
    return new Session(out[0]);
  }
}

// generate()'s options that are plain fields of llorch_generate_params.
const GENERATE_FIELDS = Object.freeze({
  maxTokens: 'max_tokens', temperature: 'temperature', topK: 'top_k', topP: 'top_p', minP: 'min_p',
  repeatPenalty: 'repeat_penalty', presencePenalty: 'presence_penalty', frequencyPenalty: 'frequency_penalty',
  penaltyLastN: 'penalty_last_n', parseSpecial: 'parse_special', logprobs: 'logprobs',
});

/** A piece the library lends to a callback, copied: { text, token, logprobs? }. */
function decodePiece(ptr) {
  const p = koffi.decode(ptr, 'llorch_piece');
  const len = Number(p.len);
  const text = len ? Buffer.from(koffi.decode(p.text, 'uint8_t', len)).toString('utf8') : '';
  const piece = { text, token: p.token };
  const n = Number(p.n_logprobs);
  if (n) {
    piece.logprobs = koffi.decode(p.logprobs, 'llorch_token_logprob', n).map((lp) => ({
      token: lp.token,
      logprob: lp.logprob,
      top: Number(lp.n_top) ? koffi.decode(lp.top, 'llorch_top_logprob', Number(lp.n_top)).map((t) => ({ ...t })) : [],
    }));
  }
  return piece;
}

/** Copies a malloc'd token list from the library and frees it. */
function takeTokens(out, n) {
  if (!n[0]) return [];
  try {
    return Array.from(koffi.decode(out[0], koffi.array('int32_t', Number(n[0]))));
  } finally {
    f.tokensFree(out[0]);
  }
}

class Session {
  constructor(handle) {
    this.handle = handle;
    registry.register(this, { free: f.sessionFree, handle }, this);
  }
  close() {
    if (this.handle) {
      registry.unregister(this);
      f.sessionFree(this.handle);
      this.handle = null;
    }
  }
  /** Stops the running generation within one token (it then rejects with CANCELLED). */
  cancel() {
    f.cancel(alive(this.handle, 'session'));
  }
  reset() {
    const err = [null];
    check(f.reset(alive(this.handle, 'session'), err), err);
  }
  /**
   * Generates off the main thread. opts (index.d.ts: GenerateOptions): the sampling settings,
   * stop strings, logit biases, onToken(text, token) (return false to stop), signal
   * (AbortSignal). Resolves with the stats; rejects with a LlorchError (status CANCELLED when
   * cancelled, with `stats` attached).
   */
  async generate(prompt, opts = {}) {
    const handle = alive(this.handle, 'session');
    const p = {};
    f.generateParamsInit(p);
    for (const [option, field] of Object.entries(GENERATE_FIELDS)) {
      if (opts[option] !== undefined) p[field] = opts[option];
    }
    const biases = Object.entries(opts.logitBias || {}).map(([token, bias]) => ({ token: Number(token), bias }));
    if (biases.length) {
      p.logit_bias = biases;
      p.n_logit_bias = biases.length;
    }
    // Constrained output: a JSON Schema (an object or its JSON text) or a grammar's text.
    if (opts.jsonSchema !== undefined && opts.jsonSchema !== null) {
      p.json_schema = typeof opts.jsonSchema === 'string' ? opts.jsonSchema : JSON.stringify(opts.jsonSchema);
    }
    if (opts.grammar !== undefined && opts.grammar !== null) p.grammar = opts.grammar;
    const stops = opts.stop || [];
    if (stops.length) {
      // koffi turns the array into C strings that live for the call.
      p.stop = stops;
      p.n_stop = stops.length;
    }
    const { onToken, onPiece } = opts;
    // With onPiece (pieces with their log-probabilities) the piece form of the call.
    let cb = null;
    if (onPiece) {
      cb = koffi.register((_ud, ptr) => onPiece(decodePiece(ptr)) !== false, koffi.pointer(PieceCallback));
    } else if (onToken) {
      cb = koffi.register((_ud, text, len, token) => {
        const s = Buffer.from(koffi.decode(text, koffi.array('uint8_t', Number(len)))).toString('utf8');
        return onToken(s, token) !== false;
      }, koffi.pointer(TokenCallback));
    }
    const signal = opts.signal;
    const onAbort = () => this.cancel();
    if (signal) {
      if (signal.aborted) throw new LlorchError(Status.CANCELLED, 'cancelled: the signal was already aborted');
      signal.addEventListener('abort', onAbort);
    }
    const stats = { struct_size: koffi.sizeof(Stats) };
    const err = [null];
    try {
      const st = await callAsync(onPiece ? f.generatePieces : f.generate, handle, prompt, p, cb, null, stats, err);
      const result = {
        promptTokens: stats.prompt_tokens, generatedTokens: stats.generated_tokens, promptSeconds: stats.prompt_seconds,
        generateSeconds: stats.generate_seconds, stopReason: stats.stop_reason,
      };
      try {
        check(st, err);
      } catch (e) {
        e.stats = result;
        throw e;
      }
      return result;
    } finally {
      if (signal) signal.removeEventListener('abort', onAbort);
      if (cb) koffi.unregister(cb);
    }
  }
  /**
   * The async-iterator form: `for await (const { text, token, logprobs } of session.stream(prompt))`
   * (logprobs with opts.logprobs > 0).
   */
  async *stream(prompt, opts = {}) {
    const queue = [];
    let wake = null;
    let done = false;
    let failure = null;
    const run = this.generate(prompt, {
      ...opts,
      onToken: undefined,
      onPiece: (piece) => {
        queue.push(piece);
        if (wake) wake();
        return true;
      },
    }).then(() => { done = true; }, (e) => { failure = e; done = true; }).finally(() => { if (wake) wake(); });
    try {
      for (;;) {
        if (queue.length) {
          yield queue.shift();
        } else if (done) {
          break;
        } else {
          await new Promise((r) => { wake = r; });
          wake = null;
        }
      }
    } finally {
      if (!done) this.cancel(); // the consumer stopped early
      await run;
    }
    if (failure) throw failure;
  }
  tokenize(text, { addBos = false, parseSpecial = false } = {}) {
    const out = [null];
    const n = [0];
    const err = [null];
    check(f.tokenize(alive(this.handle, 'session'), text, addBos, parseSpecial, out, n, err), err);
    return takeTokens(out, n);
  }
  /** The conversation so far: the tokens in the KV cache, then a sampled one not yet fed. */
  tokens() {
    const out = [null];
    const n = [0];
    const err = [null];
    check(f.tokens(alive(this.handle, 'session'), out, n, err), err);
    return takeTokens(out, n);
  }
  /** Back to the first n tokens of the conversation; the next generation continues there. */
  rewind(n) {
    const err = [null];
    check(f.rewind(alive(this.handle, 'session'), n, err), err);
  }
  /** A new session with a copy of this one's conversation (tokens, KV cache, seed). */
  fork() {
    const out = [null];
    const err = [null];
    check(f.fork(alive(this.handle, 'session'), out, err), err);
    return new Session(out[0]);
  }
  /** The conversation in llorch's versioned state format (names the model), as a Buffer. */
  save() {
    const out = [null];
    const n = [0];
    const err = [null];
    check(f.save(alive(this.handle, 'session'), out, n, err), err);
    try {
      return Buffer.from(koffi.decode(out[0], koffi.array('uint8_t', Number(n[0]))));
    } finally {
      f.bytesFree(out[0]);
    }
  }
  /**
   * Replaces the conversation with a saved one (same model); throws INVALID_ARGUMENT for a
   * state of another model, truncated or damaged, and changes nothing then.
   */
  restore(state) {
    if (!state.length) throw new LlorchError(Status.INVALID_ARGUMENT, 'session state: empty');
    const err = [null];
    check(f.restore(alive(this.handle, 'session'), state, state.length, err), err);
  }
  saveFile(file) {
    const err = [null];
    check(f.saveFile(alive(this.handle, 'session'), file, err), err);
  }
  restoreFile(file) {
    const err = [null];
    check(f.restoreFile(alive(this.handle, 'session'), file, err), err);
  }
  /** Token ids to a Buffer of bytes. */
  detokenize(ids) {
    const out = [null];
    const n = [0];
    const err = [null];
    check(f.detokenize(alive(this.handle, 'session'), ids.length ? Int32Array.from(ids) : null, ids.length, out, n, err), err);
    try {
      return Buffer.from(koffi.decode(out[0], koffi.array('uint8_t', Number(n[0]))));
    } finally {
      f.stringFree(out[0]);
    }
  }
}

module.exports = {
  Context, Model, Session, LlorchError, Status, StopReason, Pooling, KvType, version: () => f.version(), ABI_VERSION, libraryPath: LIB,
};
