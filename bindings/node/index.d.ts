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
  /** Receives each piece of whole UTF-8 text; returning false stops (CANCELLED). */
  onToken?: (text: string, token: number) => boolean | void;
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

export interface Piece {
  text: string;
  token: number;
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
  stream(prompt: string, opts?: Omit<GenerateOptions, 'onToken'>): AsyncGenerator<Piece, void, undefined>;
  tokenize(text: string, opts?: { addBos?: boolean; parseSpecial?: boolean }): number[];
  /** Token ids to bytes (which may end inside a UTF-8 character). */
  detokenize(ids: number[]): Buffer;
}
