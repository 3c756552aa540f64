// Types of the llorch Node binding (index.js). Generation and model loading run off the main
// thread; every object has close(), with a finalizer only as a backstop.

/** ABI version this binding was written for; the loaded library must report the same. */
export const ABI_VERSION: number;
/** Where the library was loaded from: $LLORCH_LIB, a path beside the package, or a loader name. */
export const libraryPath: string;
/** The loaded library's version, e.g. "0.1.0". */
export function version(): string;

/** Status codes of the C API (llorch_status). */
export const Status: Readonly<{
  OK: 0;
  INVALID_ARGUMENT: 1;
  BAD_MODEL: 2;
  UNSUPPORTED: 3;
  OUT_OF_MEMORY: 4;
  CANCELLED: 5;
  CONTEXT_FULL: 6;
  NO_DEVICE: 7;
  IO: 8;
  INTERNAL: 9;
  BUSY: 10;
}>;
export type StatusCode = (typeof Status)[keyof typeof Status];

/** Why a generation ended (llorch_stop_reason). */
export const StopReason: Readonly<{ EOS: 0; LIMIT: 1; STOP_STRING: 2; CANCELLED: 3 }>;
export type StopReasonCode = (typeof StopReason)[keyof typeof StopReason];

/** A failed call: the status, its name, and the library's message. */
export class LlorchError extends Error {
  constructor(status: StatusCode, message: string);
  readonly name: 'LlorchError';
  readonly status: StatusCode;
  readonly statusName: keyof typeof Status | string;
  /** Set on a cancelled generate(): the statistics up to the cancel. */
  stats?: GenerateStats;
}

export interface ContextOptions {
  /** "cpu" (default) or "cuda:N". */
  device?: string;
  /** CPU worker threads; 0 or absent = all cores. */
  threads?: number;
  /** Bytes the context may allocate; 0 or absent = no limit. */
  memoryBudget?: number | bigint;
}

/** A device with its worker threads and memory budget. */
export class Context {
  constructor(opts?: ContextOptions);
  handle: unknown;
  /** Models loaded in it keep working. Safe to call twice. */
  close(): void;
}

export interface LoadOptions {
  /** Called with the fraction loaded, in [0, 1]; returning false cancels the load. */
  onProgress?: (fraction: number) => boolean | void;
}

export interface ChatMessage {
  role: string;
  content: string;
}

export interface SessionOptions {
  /** KV cache length in tokens; 0 or absent = the model's training context. */
  nCtx?: number;
  /** Seed of the sampler's random numbers. */
  seed?: number | bigint;
  /** The KV cache's element type (KvType.AUTO by default: f32 on the CPU, f16 on a GPU). */
  kvType?: 0 | 1 | 2;
  /** When the model's KV memory (the context's budget) is held by other sessions: reject
   *  at once with status BUSY instead of waiting in line. */
  failWhenBusy?: boolean;
}

/** A loaded model, shared by its sessions (which keep it alive after close()). */
export class Model {
  /** Loads a GGUF file off the main thread. */
  static load(context: Context, file: string, opts?: LoadOptions): Promise<Model>;
  private constructor(handle: unknown);
  handle: unknown;
  close(): void;
  /** "qwen2", "llama", "gemma3" ... */
  architecture(): string;
  /** The training context length in tokens. */
  contextLength(): number;
  vocabSize(): number;
  /** The beginning-of-sequence, end-of-sequence and end-of-turn ids; -1 where there is none. */
  specialTokens(): { bos: number; eos: number; eot: number };
  /** The bytes a token stands for (a control token's are its text). */
  tokenText(token: number): Buffer;
  /** Whether a token is a control or user-defined one. */
  tokenIsSpecial(token: number): boolean;
  /** The Jinja chat template, or null when the model has none. */
  chatTemplate(): string | null;
  /** Renders messages with the model's chat template. */
  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt?: boolean): string;
  createSession(opts?: SessionOptions): Session;
  /** The size of the embedding vectors, and the pooling Pooling.MODEL stands for. */
  embeddingInfo(): { dim: number; pooling: number };
  /** One vector per text: the final hidden state (after the final norm), pooled; off the main thread. */
  embed(texts: string[], opts?: EmbedOptions): Promise<Float32Array[]>;
}

/** How an embedding pools its tokens' rows (GGUF's pooling_type numbers). */
export const Pooling: Readonly<{ MODEL: 0; MEAN: 1; CLS: 2; LAST: 3 }>;
/** llorch_kv_type: AUTO (f32 on the CPU, f16 on a GPU), F16 (half the memory), F32 (exact). */
export const KvType: Readonly<{ AUTO: 0; F16: 1; F32: 2 }>;

export interface EmbedOptions {
  /** A Pooling value; MODEL (default): the model's pooling_type, else last-token. */
  pooling?: number;
  /** Scale each vector to unit L2 norm (default false). */
  normalize?: boolean;
}

export interface GenerateOptions {
  /** Most tokens to generate (default 256). */
  maxTokens?: number;
  /** 0 = greedy (default). */
  temperature?: number;
  /** Keep the k most likely tokens; 0 = off (default). */
  topK?: number;
  /** Nucleus sampling in (0, 1]; 1 = off (default). */
  topP?: number;
  /** Drop tokens below minP times the best probability; 0 = off (default). */
  minP?: number;
  /** > 0; 1 = off (default). */
  repeatPenalty?: number;
  /** Subtracted once from the logit of any token seen (default 0). */
  presencePenalty?: number;
  /** Subtracted per occurrence from the logit of a token seen (default 0). */
  frequencyPenalty?: number;
  /** How many recent tokens the penalties look at (default 64). */
  penaltyLastN?: number;
  /** Added to the logits of the given token ids before sampling (finite values). */
  logitBias?: Record<number, number>;
  /** Special tokens written in the prompt become single tokens (default true). */
  parseSpecial?: boolean;
  /** Generation stops before any of these would be emitted. */
  stop?: string[];
  /**
   * Each generated token's log-probability and this many most likely alternatives, from the
   * raw logits (before logit bias, penalties, temperature, top-k/p), in Piece.logprobs;
   * 0 = off (default).
   */
  logprobs?: number;
  /**
   * Constrained output: the text is JSON valid against this schema (an object, or its JSON
   * text); generation ends when the value is complete. An unsupported keyword is an
   * INVALID_ARGUMENT error naming it. At most one of jsonSchema and grammar.
   */
  jsonSchema?: object | string;
  /** Constrained output: a GBNF-like grammar (start rule `root`) the text must match. */
  grammar?: string;
  /** Receives each piece of whole UTF-8 text; returning false stops (CANCELLED). */
  onToken?: (text: string, token: number) => boolean | void;
  /** Receives each Piece (with its logprobs when asked); used instead of onToken if both are given. */
  onPiece?: (piece: Piece) => boolean | void;
  /** Aborting it cancels the generation (CANCELLED). */
  signal?: AbortSignal;
}

export interface GenerateStats {
  promptTokens: number;
  generatedTokens: number;
  promptSeconds: number;
  generateSeconds: number;
  stopReason: StopReasonCode;
}

/** A token's log-probability and the most likely tokens at its position (most likely first). */
export interface TokenLogprob {
  token: number;
  logprob: number;
  top: { token: number; logprob: number }[];
}

export interface Piece {
  text: string;
  token: number;
  /** With logprobs > 0: the tokens sampled since the previous piece, in order. */
  logprobs?: TokenLogprob[];
}

/** One conversation: use it from one call at a time, except cancel(). */
export class Session {
  private constructor(handle: unknown);
  handle: unknown;
  close(): void;
  /** Stops the running generation within one token; with none running, the next one. */
  cancel(): void;
  /** Forgets the conversation. */
  reset(): void;
  /** Appends prompt to the conversation and generates off the main thread. */
  generate(prompt: string, opts?: GenerateOptions): Promise<GenerateStats>;
  /** generate() as an async iterator of pieces; breaking out of the loop cancels. */
  stream(prompt: string, opts?: Omit<GenerateOptions, 'onToken' | 'onPiece'>): AsyncGenerator<Piece, void, undefined>;
  /** The conversation so far: the tokens in the KV cache, then a sampled one not yet fed. */
  tokens(): number[];
  /** Back to the first n tokens; the next generation continues from there. */
  rewind(n: number): void;
  /** A new session with a copy of this conversation (tokens, KV cache, seed). */
  fork(): Session;
  /** The conversation in llorch's versioned state format, naming the model. */
  save(): Buffer;
  /** Replaces the conversation with a saved one of the same model (INVALID_ARGUMENT otherwise, nothing changed). */
  restore(state: Uint8Array): void;
  saveFile(file: string): void;
  restoreFile(file: string): void;
  tokenize(text: string, opts?: { addBos?: boolean; parseSpecial?: boolean }): number[];
  /** Token ids to bytes (which may end inside a UTF-8 character). */
  detokenize(ids: number[]): Buffer;
}
