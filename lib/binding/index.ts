// The low-level binding: typed classes over the native addon. Every native error surfaces as a
// BatchwiseError with a stable code. The engine is the only intended caller inside batchwise.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync } from "node:fs";
import { homedir } from "node:os";
import { isAbsolute, join } from "node:path";
import { BatchwiseError, ErrorCode, native, nativeAsync } from "./errors.js";
import {
    asarUnpacked,
    loadNative,
    packageRoot,
    vocabPackageDir,
    type ChatApplyInputs,
    type ChatApplyResult,
    type ChatMessage,
    type ChatMessageDelta,
    type ChatParserOptions,
    type ChatParserSpec,
    type ChatTemplateCaps,
    type ContextInfo,
    type ContextPerf,
    type GrammarTrigger,
    type NativeChatParser,
    type NativeChatTemplates,
    type ParsedChatMessage,
    type DeviceInfo,
    type ModelMetadata,
    type NativeContext,
    type NativeDecodeBatch,
    type NativeDecodeResult,
    type NativeModel,
    type SamplerParams,
    type SystemInfo,
    type HeapStats,
} from "./native.js";

export { BatchwiseError, ErrorCode, fieldError, type ErrorDetails } from "./errors.js";
export type {
    ChatApplyInputs, ChatApplyResult, ChatMessageDelta, ChatParserOptions, ChatParserSpec, ChatTemplateCaps, GrammarTrigger,
    ParsedChatMessage, ReasoningBudget, ReasoningFormat,
    ChatMessage, ContextInfo, ContextPerf, DeviceInfo, HeapStats, ModelMetadata, SamplerParams, SystemInfo,
    NativeDecodeBatch as DecodeBatch, NativeDecodeResult as DecodeResult,
} from "./native.js";

export type SplitMode = "none" | "layer" | "row" | "tensor";
export type KvCacheType = "f32" | "f16" | "bf16" | "q8_0" | "q4_0" | "q4_1" | "q5_0" | "q5_1" | "iq4_nl";

export interface ModelLoadOptions {
    /** Layers to offload to the GPU; -1 (default) offloads all. Ignored on a CPU build. */
    gpuLayers?: number;
    /** How to spread the model over several GPUs. Default "layer". */
    splitMode?: SplitMode;
    /** Share of the model for each GPU, e.g. [3, 1]. */
    tensorSplit?: number[];
    /** GPU for the whole model with splitMode "none", and for intermediate results otherwise. */
    mainGpu?: number;
    /** Memory-map the file (default true). */
    useMmap?: boolean;
    /** Load only the vocabulary (tokenize, detokenize, chat template): no weights, no contexts. */
    vocabOnly?: boolean;
    /** Validate tensor data while loading (slower). */
    checkTensors?: boolean;
    /** Called with the load progress in [0, 1]. */
    onProgress?: (progress: number) => void;
}

export interface ContextOptions {
    /** Total KV cells over all sequences; 0 (default) uses the model's trained context. */
    contextSize?: number;
    /**
     * The llama.cpp sequence ids the context has (0..seqIds-1; llama.cpp's n_seq_max), at most
     * systemInfo().maxSeqIds. Default 1.
     */
    seqIds?: number;
    /** @deprecated The old name of `seqIds`, still accepted (both may be given only with the same value). */
    maxSequences?: number;
    /** Most tokens one decode() call may carry. Default 2048. */
    batchSize?: number;
    /** Tokens computed per graph run. Default min(512, batchSize). */
    ubatchSize?: number;
    flashAttention?: boolean | "auto" | "on" | "off";
    kvCacheTypeK?: KvCacheType;
    kvCacheTypeV?: KvCacheType;
    /** One KV pool shared by all sequences, so cells can be shared (seqCopy). Default true. */
    kvUnified?: boolean;
    /**
     * A paged KV cache with blocks of this many cells (a power of two; 0, the default, lets llama.cpp place tokens).
     * Tokens then go where each sequence's block table (setBlockTable) says, and each sequence's attention reads only
     * its own blocks. Needs kvUnified and flash attention; CUDA needs a multiple of 128.
     */
    kvBlockSize?: number;
    /** Keep the KV cache and attention on the GPU. Default true. */
    offloadKqv?: boolean;
    /** CPU threads for single-token and for batch decoding. Default: all cores. */
    threads?: number;
    threadsBatch?: number;
}

/** An option's error: the message reads "option '<field>' <reason>", and both travel as properties. */
function optionError(field: string, reason: string): BatchwiseError {
    return new BatchwiseError(ErrorCode.InvalidArgument, `option '${field}' ${reason}`, { field, reason });
}

function checkOptions(o: unknown, what: string): asserts o is object | undefined {
    if (o !== undefined && (o === null || typeof o !== "object")) {
        throw new BatchwiseError(ErrorCode.InvalidArgument, `${what} must be an object`, { field: "options", reason: "must be an object" });
    }
}

// ---- limits on what reaches llama.cpp -------------------------------------------------------------
// The addon enforces its limits itself (native/limits.h: grammar and schema size and nesting, logprobs, logit
// bias entries, threads, sequence ids per batch row, sampler numbers beyond a 32-bit float), with the messages
// and fields it names; LIMITS reads that table for the layers above.

export { LIMITS, type Limits } from "./limits.js";

/** Whether a number survives the native side's conversion to a 32-bit float (1e300 becomes Infinity, and Infinity / Infinity NaN). */
export const fitsFloat32 = (v: number): boolean => Number.isFinite(Math.fround(v));

/** A loaded GGUF model. Load with `LlamaModel.load()`, free with `dispose()`. */
export class LlamaModel {
    /** The model's metadata: shape, special tokens, chat template, GGUF keys. */
    readonly metadata: ModelMetadata;

    private constructor(readonly native: NativeModel) {
        this.metadata = native.metadata();
    }

    static async load(path: string, options: ModelLoadOptions = {}): Promise<LlamaModel> {
        checkOptions(options, "load options");
        const { onProgress, ...rest } = options;
        if (onProgress !== undefined && typeof onProgress !== "function") {
            throw new BatchwiseError(ErrorCode.InvalidArgument, "onProgress must be a function", { field: "onProgress", reason: "must be a function" });
        }
        // native code cannot read inside Electron's app.asar: a model packed there is read from its unpacked copy
        const m = await nativeAsync(() => loadNative().Model.load(typeof path === "string" ? asarUnpacked(path) : path, rest, onProgress));
        return new LlamaModel(m);
    }

    get disposed(): boolean {
        return this.native.disposed;
    }

    tokenize(text: string, options?: { addSpecial?: boolean; parseSpecial?: boolean }): Promise<Int32Array> {
        return nativeAsync(() => this.native.tokenize(text, options));
    }

    detokenize(tokens: Int32Array | readonly number[], options?: { special?: boolean }): Promise<string> {
        return nativeAsync(() => this.native.detokenize(tokens, options));
    }

    /** The bytes of one token. A piece can hold part of a multi-byte UTF-8 character: decode with a streaming TextDecoder. */
    tokenToPiece(token: number, options?: { special?: boolean }): Uint8Array {
        return native(() => this.native.tokenToPiece(token, options));
    }

    /** Whether the token ends generation (EOS, EOT, ...). */
    isEog(token: number): boolean {
        return native(() => this.native.isEog(token));
    }

    /** Formats a chat with the model's template (or `options.template`), using llama.cpp's built-in templates. */
    applyChatTemplate(messages: readonly ChatMessage[], options?: { addAssistant?: boolean; template?: string }): string {
        return native(() => this.native.applyChatTemplate(messages, options));
    }

    /**
     * Throws ERR_INVALID_ARGUMENT, with llama.cpp's parse error, when a GBNF grammar does not parse, or is over
     * LIMITS.maxGrammarBytes or LIMITS.maxGrammarNesting.
     */
    checkGrammar(grammar: string, root?: string, options?: { lazy?: boolean; triggers?: readonly GrammarTrigger[] }): void {
        native(() => this.native.checkGrammar(grammar, root, options));
    }

    createContext(options: ContextOptions = {}): Promise<LlamaContext> {
        checkOptions(options, "context options");
        return LlamaContext.create(this, options);
    }

    /** Frees the weights (host and GPU memory). Throws ERR_MODEL_IN_USE while contexts are alive. Idempotent. */
    dispose(): void {
        native(() => this.native.dispose());
    }
}

/**
 * KV memory and decoding over a model. Decode and the state calls are async and run off the JS
 * thread, one at a time; the KV memory calls are synchronous and throw ERR_CONTEXT_BUSY while an
 * async call is in flight.
 */
export class LlamaContext {
    readonly info: ContextInfo;

    private constructor(readonly model: LlamaModel, readonly native: NativeContext) {
        this.info = native.info();
    }

    static async create(model: LlamaModel, options: ContextOptions = {}): Promise<LlamaContext> {
        checkOptions(options, "context options");
        const c = await nativeAsync(() => loadNative().Context.create(model.native, options));
        return new LlamaContext(model, c);
    }

    get disposed(): boolean {
        return this.native.disposed;
    }

    /**
     * Decodes a batch: one entry per token (token id, position, sequence id, whether it wants an output).
     * Resolves with one sampled token per output row, in batch order, and logprobs for the
     * sequences whose sampler asks for them.
     */
    decode(batch: NativeDecodeBatch): Promise<NativeDecodeResult> {
        return nativeAsync(() => this.native.decode(batch));
    }

    /**
     * Sets the sampler chain of a sequence; null returns it to greedy. Reports whether sampling runs in the graph.
     * The addon checks every parameter (see LIMITS), naming the one at fault as the error's field.
     */
    setSampler(seqId: number, params: SamplerParams | null): { backend: boolean } {
        return native(() => this.native.setSampler(seqId, params));
    }

    /** Removes positions [p0, p1) of a sequence (-1 = open-ended; seqId -1 = every sequence). */
    seqRemove(seqId: number, p0 = -1, p1 = -1): boolean {
        return native(() => this.native.seqRemove(seqId, p0, p1));
    }

    /**
     * With kvBlockSize: the blocks of a sequence in position order. Position p is cell
     * blocks[p / kvBlockSize] * kvBlockSize + p % kvBlockSize; the table must cover every position decoded.
     */
    setBlockTable(seqId: number, blocks: Int32Array): void {
        native(() => this.native.setBlockTable(seqId, blocks));
    }

    /**
     * With kvBlockSize: positions [0, tokens) of the sequence's block table (setBlockTable) become the sequence's
     * cells, so it can decode on from position `tokens`. A block keeps its K/V after every sequence holding it is
     * removed, so a cached prefix is re-attached by table and claim, with no sequence id keeping it (the caller
     * vouches for what the blocks hold). A cell already holding that position (shared with running sequences) just
     * gains the sequence. Nothing changes on error: ERR_INVALID_ARGUMENT (no kvBlockSize; `tokens` not an integer
     * >= 0 or beyond the table), ERR_SEQ_ID_RANGE, ERR_STATE_FAILED (a cell holds another position, or the sequence
     * holds one of these positions in another cell), ERR_PAGED_KV_UNSUPPORTED (a model whose cells keep data a
     * claim cannot restore: M-RoPE, per-layer n-gram embeddings).
     *
     * The rule that keeps llama.cpp's cell metadata right in paged mode: remove a sequence entirely (seqRemove(id))
     * when it ends, before its blocks get new contents or its id is reused; a decode never writes a cell another
     * sequence holds.
     */
    claimBlocks(seqId: number, tokens: number): void {
        native(() => this.native.claimBlocks(seqId, tokens));
    }

    /** Makes dst share src's cells for [p0, p1) (with kvUnified, no data is copied). */
    seqCopy(src: number, dst: number, p0 = -1, p1 = -1): void {
        native(() => this.native.seqCopy(src, dst, p0, p1));
    }

    /** Removes every sequence but this one. */
    seqKeep(seqId: number): void {
        native(() => this.native.seqKeep(seqId));
    }

    /** Smallest position held for the sequence, -1 if it is empty. */
    seqPosMin(seqId: number): number {
        return native(() => this.native.seqPosMin(seqId));
    }

    /** Largest position held for the sequence, -1 if it is empty. */
    seqPosMax(seqId: number): number {
        return native(() => this.native.seqPosMax(seqId));
    }

    /**
     * llama.cpp's counters since the context was made: compute graphs reused as they were, and allocation plans
     * made for micro-batches' graphs (each one first synchronizes the backends when a graph spans a GPU and the
     * host). Not while a decode or state operation is in flight.
     */
    perf(): ContextPerf {
        return native(() => this.native.perf());
    }

    /** Empties the KV memory of every sequence. */
    clear(): void {
        native(() => this.native.clear());
    }

    /** Copies a sequence's KV state to host memory. */
    saveSequence(seqId: number): Promise<Buffer> {
        return nativeAsync(() => this.native.saveSequence(seqId));
    }

    /** Restores a saved state into any sequence id (its previous cells are dropped). Resolves with bytes read. */
    restoreSequence(seqId: number, state: Uint8Array): Promise<number> {
        return nativeAsync(() => this.native.restoreSequence(seqId, state));
    }

    /** Frees the KV memory (after any in-flight call finishes). Idempotent. */
    dispose(): void {
        this.native.dispose();
    }
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/**
 * JSON text of a value, or ERR_INVALID_ARGUMENT naming `field` (a cycle, a BigInt). A lone surrogate in a string
 * (which JS allows and UTF-8 cannot hold) becomes U+FFFD, as the addon's other strings do.
 */
function toJson(value: unknown, field: string): string {
    let text: unknown;
    try {
        text = JSON.stringify(value, (_k, v: unknown) => (typeof v === "string" ? v.replace(LONE_SURROGATE, "\ufffd") : v));
    } catch (e) {
        const reason = `cannot be written as JSON: ${(e as Error).message}`;
        throw new BatchwiseError(ErrorCode.InvalidArgument, `'${field}' ${reason}`, { cause: e, field, reason });
    }
    if (typeof text !== "string") {
        throw new BatchwiseError(ErrorCode.InvalidArgument, `'${field}' must be an object`, { field, reason: "must be an object" });
    }
    return text;
}

/**
 * A chat template through llama.cpp's common chat layer: OpenAI messages and tools rendered into a prompt, with the
 * grammar that constrains tool calls or a JSON schema (lazy, with triggers, for toolChoice "auto"), the extra stops,
 * and the parser of the template's output format (ChatParser). Holds the model's vocabulary until disposed.
 */
export class ChatTemplates {
    private constructor(readonly native: NativeChatTemplates) {}

    /**
     * The model's GGUF template, or `options.template`: a Jinja source or a llama.cpp built-in name ("chatml",
     * "llama3", ...; legacy mode: no tools). Throws ERR_CHAT_TEMPLATE when the template does not parse or there is none.
     */
    static create(model: LlamaModel, options: { template?: string } = {}): ChatTemplates {
        checkOptions(options, "chat template options");
        return new ChatTemplates(native(() => loadNative().ChatTemplates.create(model.native, options ?? {})));
    }

    /** The template source in use. */
    get source(): string {
        return this.native.source;
    }

    get caps(): ChatTemplateCaps {
        return this.native.caps;
    }

    get disposed(): boolean {
        return this.native.disposed;
    }

    /**
     * Renders the chat. Throws ERR_INVALID_ARGUMENT naming the field at fault (messages[i]..., tools[i]...,
     * toolChoice, jsonSchema, continueFinalMessage, inputs: over LIMITS.maxChatJsonBytes / maxChatJsonDepth) and
     * ERR_CHAT_TEMPLATE when the template itself fails (raise_exception, roles out of order).
     */
    apply(inputs: ChatApplyInputs): ChatApplyResult {
        if (inputs === null || typeof inputs !== "object") {
            throw new BatchwiseError(ErrorCode.InvalidArgument, "'inputs' must be an object", { field: "inputs", reason: "must be an object" });
        }
        const text = toJson(inputs, "inputs");
        return native(() => this.native.apply(text));
    }

    /** Lets go of the template and the model's vocabulary. Idempotent. */
    dispose(): void {
        this.native.dispose();
    }
}

/**
 * Parses a model's output into content, reasoning and tool calls, incrementally, as llama-server streams them. Made
 * from ChatApplyResult.parser. Never throws for what the model wrote: a final update the format cannot read gives the
 * whole text as content.
 */
export class ChatParser {
    private constructor(readonly native: NativeChatParser) {}

    static create(spec: ChatParserSpec, options: ChatParserOptions = {}): ChatParser {
        checkOptions(options, "chat parser options");
        return new ChatParser(native(() => loadNative().ChatParser.create(spec, options ?? {})));
    }

    /**
     * Adds generated text and returns what changed since the last update. `partial` false is the last update (the
     * text is complete; a call not yet reported is reported then). Tool call ids are made ("call_" + 24 letters and
     * digits) where the model gives none, and stay the same across updates.
     */
    update(textAdded: string, partial: boolean): ChatMessageDelta[] {
        return native(() => this.native.update(textAdded, partial));
    }

    /** The message as last parsed. */
    get message(): ParsedChatMessage {
        return this.native.message;
    }
}

/** GPUs (and the CPU) that llama.cpp sees, with free and total memory read now. */
export function getDevices(): DeviceInfo[] {
    return native(() => loadNative().getDevices());
}

export function systemInfo(): SystemInfo {
    return native(() => loadNative().systemInfo());
}

/** The process heap under glibc's malloc (all of it: the addon's, llama.cpp's and Node's); null elsewhere. */
export function heapStats(): HeapStats | null {
    return native(() => loadNative().heapStats());
}

/**
 * Gives the free pages malloc holds back to the system (glibc's malloc_trim; false elsewhere, or when
 * there was nothing to give). The engine calls it on its own (EngineOptions.trimHeapMs).
 */
export function trimHeap(): boolean {
    return native(() => loadNative().trimHeap());
}

export const LogLevel = { Debug: 1, Info: 2, Warn: 3, Error: 4 } as const;
export type LogLevel = (typeof LogLevel)[keyof typeof LogLevel];

/**
 * Routes llama.cpp's and ggml's logs to `fn` (level and text; a line may arrive in pieces) for
 * messages at `minLevel` and above. null silences them again (the default: errors still reach the
 * JS errors they cause).
 */
export function setLogger(fn: ((level: LogLevel, text: string) => void) | null, minLevel: LogLevel = LogLevel.Warn): void {
    native(() => loadNative().setLogger(fn as ((level: number, text: string) => void) | null, minLevel));
}

/**
 * Turns a JSON schema (an object or its JSON text) into a GBNF grammar with llama.cpp's converter, the
 * one llama-server uses for response_format. Throws ERR_INVALID_ARGUMENT for what it cannot convert.
 */
export function jsonSchemaToGrammar(schema: object | string): string {
    let text: unknown;
    try {
        text = typeof schema === "string" ? schema : JSON.stringify(schema);
    } catch (e) {
        // a cycle, a BigInt, or nesting too deep for JSON.stringify's own stack
        const reason = `cannot be written as JSON: ${(e as Error).message}`;
        throw new BatchwiseError(ErrorCode.InvalidArgument, `the schema ${reason}`, { cause: e, field: "schema", reason });
    }
    if (typeof text !== "string") throw new BatchwiseError(ErrorCode.InvalidArgument, "the schema must be a JSON object", { field: "schema", reason: "must be a JSON object" });
    // the addon refuses a schema over LIMITS.maxSchemaBytes, maxSchemaDepth or maxSchemaOptionalPropertiesSquared
    return native(() => loadNative().jsonSchemaToGrammar(text as string));
}

export interface RandomModelOptions {
    /** A vocab-only GGUF path, or a name from llama.cpp's models/ folder: "qwen2", "llama-spm", "deepseek-coder", ... */
    vocabFrom: string;
    /** Where to write the GGUF. */
    out: string;
    architecture?: "qwen2" | "llama";
    embeddingSize?: number;
    layers?: number;
    heads?: number;
    kvHeads?: number;
    feedForwardSize?: number;
    contextLength?: number;
    /** Weight type of the matrices (norms stay f32). Default "f16". */
    type?: "f32" | "f16" | "bf16" | "q8_0" | "q4_0";
    /** Same seed and shape, same file. Default 42. */
    seed?: number;
    threads?: number;
}

/** Folder of the vocab-only GGUFs (and chat templates) that ship with the llama.cpp source batchwise builds from. */
export function vocabDir(): string {
    return join(process.env.LLAMA_CPP_DIR ?? join(packageRoot, "deps", "llama.cpp"), "models");
}

/**
 * Folders resolveVocab searches, in order: the @batchwise/vocab package (the vocabulary the demo model, make-model and
 * the README use, installed with the prebuilt binaries), then vocabDir() (every vocabulary llama.cpp has).
 */
export function vocabDirs(): string[] {
    const pkg = vocabPackageDir();
    return pkg ? [pkg, vocabDir()] : [vocabDir()];
}

/** Resolves a vocab name ("qwen2") or path to a file path (inside Electron's app.asar: its unpacked copy). */
export function resolveVocab(vocab: string): string {
    if (isAbsolute(vocab) || vocab.endsWith(".gguf")) return asarUnpacked(vocab);
    const tried = vocabDirs().map((d) => join(d, `ggml-vocab-${vocab}.gguf`));
    const p = tried.find((f) => existsSync(f));
    if (!p) {
        throw new BatchwiseError(ErrorCode.ModelNotFound, `no vocabulary named '${vocab}' (looked for ${tried.join(", ")})`);
    }
    return p;
}

/**
 * Writes a GGUF with random weights of a real architecture and the real tokenizer and chat template
 * of a vocab-only GGUF: a model for tests and benchmarks that needs no download. Deterministic.
 */
export function createRandomModel(options: RandomModelOptions): Promise<{ path: string; sizeBytes: number; vocabSize: number }> {
    checkOptions(options, "createRandomModel options");
    if (!options || typeof options.vocabFrom !== "string") {
        throw optionError("vocabFrom", "(a vocab-only GGUF or its name) is required");
    }
    const vocabFrom = resolveVocab(options.vocabFrom);
    return nativeAsync(() => loadNative().createRandomModel({ ...options, vocabFrom }));
}

/** Where batchwise keeps files it makes once per machine: $XDG_CACHE_HOME/batchwise, else ~/.cache/batchwise. */
export function cacheDir(): string {
    return join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "batchwise");
}

/**
 * A random-weight model of this shape, made on first use and kept in cacheDir()/models. The file name
 * carries a hash of the shape, so a changed shape makes a new file instead of reusing a stale one.
 */
export async function cachedRandomModel(name: string, shape: Omit<RandomModelOptions, "out">): Promise<{ path: string; made: boolean }> {
    const key = createHash("sha256").update(JSON.stringify(shape)).digest("hex").slice(0, 10);
    const path = join(cacheDir(), "models", `${name}-${key}.gguf`);
    if (existsSync(path)) return { path, made: false };
    mkdirSync(join(cacheDir(), "models"), { recursive: true });
    await createRandomModel({ ...shape, out: path });
    return { path, made: true };
}
