// The engine: one model, one context, one scheduling loop. Requests come in through generate(),
// chat() and complete(); the loop plans a step, launches its decode, and while the GPU works it turns
// the previous step's tokens into text and events. Data flows one way: request -> engine -> scheduler
// -> binding, and tokens back out through the scheduler's events.
import {
    BatchwiseError, ErrorCode, LlamaContext, LlamaModel, jsonSchemaToGrammar,
    type ContextOptions, type KvCacheType, type ModelLoadOptions, type ModelMetadata, type SplitMode,
} from "../binding/index.js";
import { runSwaps, Scheduler, type FinishReason, type PreemptionMode, type SchedRequest, type SchedulerEvent, type SchedulerOptions, type Sequence } from "../scheduler/scheduler.js";
import { ChatFormatter, type ChatFormatOptions, type ChatMessage } from "./chat-template.js";
import { defined, validateRequest, type GenerateRequest, type RequestOptions, type ValidRequest } from "./request.js";
import { TextStream } from "./text.js";

export interface EngineOptions {
    /** Path of a GGUF model. */
    model: string;
    gpuLayers?: number;
    splitMode?: SplitMode;
    tensorSplit?: number[];
    mainGpu?: number;
    useMmap?: boolean;
    /** KV cache size in tokens, shared by all sequences. Default: the model's trained context. */
    contextSize?: number;
    /** Sequences decoded at once. Default 64. */
    maxSequences?: number;
    /** Tokens per step: every running decode, then prompt chunks. Default 2048. */
    batchTokens?: number;
    /** Tokens per graph run inside a step. Default 512. */
    ubatchSize?: number;
    /**
     * Most prompt tokens one request computes in a step while others run or wait, so a long prompt
     * cannot stall their tokens and admissions. Default: ubatchSize.
     */
    prefillChunk?: number;
    /** Long prompts (more than prefillChunk left) that prefill at once while others run or wait; shorter ones go past the rest. Default 1. */
    longPrefills?: number;
    /**
     * Tokens per KV block (the unit of allocation and of prefix caching). Default 128 with the paged KV cache,
     * else 16. With the paged cache it must be a power of two (on CUDA a multiple of 128).
     */
    blockSize?: number;
    /**
     * The paged KV cache: each token is written into its sequence's block and each sequence's attention reads
     * only its own blocks, so decode speed does not fall with what other sequences (or cached prefixes) hold.
     * Needs flash attention, and on CUDA f16 K/V, a head size of 64-256 and blocks of 128 or more. Default: on where
     * llama.cpp can page this model (else the unified pool, whose attention reads every cell in use).
     */
    pagedKv?: boolean;
    /** Keep and reuse computed prompt prefixes. Default true. */
    prefixCache?: boolean;
    /** Sequence ids that keep ended requests' prefixes in KV. Default min(maxSequences, 256 - maxSequences). */
    cacheSlots?: number;
    /** What a preempted sequence does: recompute its KV later (default) or swap it to host memory. */
    preemption?: PreemptionMode;
    /** Host memory for swapped sequences. Default 4 GiB. */
    swapSpaceBytes?: number;
    /** Share of KV blocks kept free at admission, for running sequences to grow into. Default 0.01. */
    watermark?: number;
    /**
     * Sequences (prompts x n) waiting at most; past it generate() rejects with ERR_QUEUE_FULL, and a request
     * that alone asks for more with ERR_INVALID_ARGUMENT. Default 1024.
     */
    maxQueued?: number;
    /**
     * Longest prompt text, in characters (UTF-16 code units), taken for tokenizing: longer prompts and chats are
     * refused before the tokenizer sees them. Default 16 per token of the context (a prompt that fits the context
     * averages far fewer; tokens of natural text and code are 3-5 characters).
     */
    maxPromptLength?: number;
    flashAttention?: ContextOptions["flashAttention"];
    kvCacheTypeK?: KvCacheType;
    kvCacheTypeV?: KvCacheType;
    threads?: number;
    threadsBatch?: number;
    onProgress?: (progress: number) => void;
}

export interface EngineSettings {
    maxSequences: number;
    cacheSlots: number;
    batchTokens: number;
    prefillChunk: number;
    longPrefills: number;
    blockSize: number;
    pagedKv: boolean;
    prefixCache: boolean;
    preemption: PreemptionMode;
    maxQueued: number;
    maxPromptLength: number;
}

export interface TokenLogprob {
    token: number;
    logprob: number;
    /** The most likely tokens at this position, best first (when logprobs > 0). */
    top?: { token: number; logprob: number }[];
}

export type GenerateEvent =
    | { type: "delta"; index: number; text: string; tokens: number[]; logprobs?: TokenLogprob[] }
    | { type: "finish"; index: number; finishReason: FinishReason; error?: unknown }
    | ({ type: "done" } & GenerateResult);

export interface Choice {
    index: number;
    text: string;
    tokens: number[];
    finishReason: FinishReason;
    error?: unknown;
    logprobs?: TokenLogprob[];
}

export interface Usage {
    promptTokens: number;
    /** Prompt tokens whose KV came from the prefix cache. */
    cachedTokens: number;
    completionTokens: number;
    totalTokens: number;
}

export interface Timings {
    /** From the call to the first step that computed the request. */
    queueMs: number;
    /** From the call to the first token out. */
    ttftMs: number;
    /** Time between successive tokens of each choice. */
    interTokenMs: number[];
    /** From the call to the end. */
    e2eMs: number;
}

export interface GenerateResult {
    id: number;
    /** Choice 0's text, tokens and finish reason. */
    text: string;
    tokens: number[];
    finishReason: FinishReason;
    error?: unknown;
    logprobs?: TokenLogprob[];
    choices: Choice[];
    usage: Usage;
    timings: Timings;
    preemptions: number;
}

export interface ChatRequest extends RequestOptions {
    messages: readonly ChatMessage[];
    /** A Jinja template, or a built-in template name ("chatml", "llama3", ...), instead of the model's own. */
    template?: string;
    /** Extra variables for the template (tools, enable_thinking, ...). */
    templateVariables?: Record<string, unknown>;
}

export interface EngineStats {
    /** Sequences (choices) running, waiting (queued or still tokenizing) and swapped out. */
    running: number;
    waiting: number;
    swapped: number;
    kv: { blocks: number; blockSize: number; used: number; free: number; cachedFree: number; usage: number; slots: number; parkedSlots: number };
    prefixCache: { queries: number; hits: number; hitRate: number; evictions: number };
    preemptions: number;
    steps: number;
    /**
     * Where the engine loop's time went since load, in ms: `stepMs` from planning a step to taking its
     * tokens back, `planMs` the scheduler's planning within it, `decodeMs` the native decode and sampling
     * (llama_decode, the wait for the GPU, the sampler). stepMs over wall time is how busy the loop is;
     * decodeMs over stepMs is the share the model itself took.
     */
    time: { stepMs: number; planMs: number; decodeMs: number };
    /** Generated and prompt tokens per second over the last 10 s. */
    tokensPerSecond: number;
    promptTokensPerSecond: number;
    /** Since load: requests taken, how they ended, prompt tokens asked for, found in the cache and computed (recomputation included), tokens generated. */
    totals: { requests: number; finished: Record<FinishReason, number>; promptTokens: number; cachedTokens: number; computedPromptTokens: number; generatedTokens: number };
    /** False after an internal failure stopped the loop. */
    healthy: boolean;
    /** With work to do, ms since the loop last finished a step (or took the work); 0 when idle. A large value means a stuck decode. */
    stalledMs: number;
    closing: boolean;
}

/** A running request: iterate it for events, or await result(). */
export class Generation implements AsyncIterable<GenerateEvent> {
    private readonly queue: GenerateEvent[] = [];
    private waiter: (() => void) | null = null;
    private ended = false;
    private failure: unknown = null;
    private iterating = false;
    private buffering = true;
    private readonly final: Promise<GenerateResult>;
    private settle!: { resolve: (r: GenerateResult) => void; reject: (e: unknown) => void };
    private readonly admitted: Promise<void>;
    private settleQueued!: { resolve: () => void; reject: (e: unknown) => void };
    /** Set once the request is queued. */
    id = -1;
    /** @internal */ onAbort: (() => void) | null = null;

    constructor() {
        this.final = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
        this.final.catch(() => {});
        this.admitted = new Promise((resolve, reject) => (this.settleQueued = { resolve, reject }));
        this.admitted.catch(() => {});
    }

    /**
     * Resolves once the request is queued (validated, tokenized, within the context and the queue bound);
     * rejects with the reason it was refused. A server can wait on it before it commits to a status code.
     */
    queued(): Promise<void> {
        return this.admitted;
    }

    /** @internal */ markQueued(): void {
        this.settleQueued.resolve();
    }

    /** The final result (all choices). Rejects only if the request was refused (validation, queue full, closed). */
    result(): Promise<GenerateResult> {
        if (!this.iterating) {
            this.buffering = false;
            this.queue.length = 0;
        }
        return this.final;
    }

    /** Ends the request now (finishReason "abort"), or as soon as it is queued. */
    abort(): void {
        if (this.onAbort) this.onAbort();
        else this.abortRequested = true;
    }

    /** @internal */ abortRequested = false;

    /** @internal */ push(e: GenerateEvent): void {
        if (e.type === "done") {
            this.settle.resolve(e);
            this.ended = true;
        }
        if (this.buffering) this.queue.push(e);
        this.wake();
    }

    /** @internal */ fail(e: unknown): void {
        this.settleQueued.reject(e);
        this.failure = e;
        this.ended = true;
        this.settle.reject(e);
        this.wake();
    }

    private wake(): void {
        const w = this.waiter;
        this.waiter = null;
        w?.();
    }

    async *[Symbol.asyncIterator](): AsyncIterator<GenerateEvent> {
        this.iterating = true;
        let finished = false;
        try {
            for (;;) {
                if (this.queue.length > 0) {
                    const e = this.queue.shift()!;
                    if (e.type === "done") finished = true;
                    yield e;
                    if (finished) return;
                    continue;
                }
                if (this.failure !== null) throw this.failure;
                if (this.ended) return;
                await new Promise<void>((r) => (this.waiter = r));
            }
        } finally {
            // a consumer that stops early (break, throw) no longer wants the rest
            if (!finished && this.failure === null) this.abort();
        }
    }
}

interface ChoiceState {
    text: string[];
    tokens: number[];
    logprobs: TokenLogprob[] | undefined;
    stream: TextStream;
    finishReason: FinishReason | null;
    error?: unknown;
    lastTokenAt: number;
}

interface RequestState {
    gen: Generation;
    sched: SchedRequest;
    valid: ValidRequest;
    startedAt: number;
    firstTokenAt: number;
    interTokenMs: number[];
    choices: ChoiceState[];
    open: number;
    unlisten: () => void;
}

const now = () => performance.now();

export class Engine {
    private readonly scheduler: Scheduler;
    private readonly requests = new Map<SchedRequest, RequestState>();
    /**
     * Every token's bytes, packed: token t is pieceBytes[pieceOffsets[t], pieceOffsets[t + 1]). About 1 MB for a
     * 152K vocabulary, built once at load (a Map filled with each token as it was first seen grew the JS heap for
     * hours under a random model's spread of tokens: 21 to 45 MB in a 20-minute soak).
     */
    private readonly pieceBytes: Uint8Array;
    private readonly pieceOffsets: Uint32Array;
    private nextId = 1;
    private wakeLoop: (() => void) | null = null;
    private loopDone: Promise<void>;
    private closing = false;
    private closed = false;
    private broken: unknown = null;
    private pendingAdmissions = 0;
    /** Sequences of requests in intake that passed the queue check. */
    private intakeSequences = 0;
    private tokenizing = 0;
    private readonly tokenizeWaiters: (() => void)[] = [];
    private lastProgress = now();
    private readonly time = { stepMs: 0, planMs: 0, decodeMs: 0 };
    private readonly chatFormatter: ChatFormatter;
    private readonly window: { t: number; gen: number; prompt: number }[] = [];
    private readonly totals = {
        requests: 0, finished: { stop: 0, length: 0, abort: 0, error: 0 } as Record<FinishReason, number>,
        promptTokens: 0, cachedTokens: 0, computedPromptTokens: 0, generatedTokens: 0,
    };
    readonly maxContext: number;
    readonly maxQueued: number;
    readonly maxPromptLength: number;
    /** The settings in force, defaults resolved: what load() made of the options. */
    readonly settings: Readonly<EngineSettings>;

    private constructor(readonly model: LlamaModel, readonly context: LlamaContext, readonly options: Readonly<EngineOptions>,
        scheduling: Omit<SchedulerOptions, "isEog" | "vocabSize">, intake: { maxQueued: number; maxPromptLength: number }) {
        this.maxContext = scheduling.maxContext;
        this.maxQueued = intake.maxQueued;
        this.maxPromptLength = intake.maxPromptLength;
        this.settings = {
            maxSequences: scheduling.maxRunning, cacheSlots: scheduling.seqIds - scheduling.maxRunning, batchTokens: scheduling.batchTokens,
            prefillChunk: scheduling.prefillChunk ?? scheduling.batchTokens, longPrefills: scheduling.longPrefills ?? Infinity,
            blockSize: scheduling.blockSize, pagedKv: scheduling.pagedKv ?? false, prefixCache: scheduling.prefixCache, preemption: scheduling.preemption,
            ...intake,
        };
        this.scheduler = new Scheduler(context, { ...scheduling, isEog: (t) => model.isEog(t), vocabSize: model.metadata.vocabSize });
        this.chatFormatter = new ChatFormatter(model);
        const vocab = model.metadata.vocabSize;
        const pieces = Array.from({ length: vocab }, (_, t) => model.tokenToPiece(t));
        this.pieceOffsets = new Uint32Array(vocab + 1);
        for (let t = 0; t < vocab; t++) this.pieceOffsets[t + 1] = this.pieceOffsets[t] + pieces[t].length;
        this.pieceBytes = new Uint8Array(this.pieceOffsets[vocab]);
        for (let t = 0; t < vocab; t++) this.pieceBytes.set(pieces[t], this.pieceOffsets[t]);
        this.loopDone = this.loop();
    }

    /** Loads the model and creates the KV cache and the scheduling loop. */
    static async load(options: EngineOptions): Promise<Engine> {
        if (options === null || typeof options !== "object" || typeof options.model !== "string") {
            throw new BatchwiseError(ErrorCode.InvalidArgument, "Engine.load needs { model: path to a GGUF file }");
        }
        const int = (k: keyof EngineOptions, def: number, min: number, max = Number.MAX_SAFE_INTEGER): number => {
            const v = options[k] ?? def;
            if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
                throw new BatchwiseError(ErrorCode.InvalidArgument, `option '${k}' must be an integer from ${min} to ${max} (got ${String(v)})`);
            }
            return v;
        };
        const maxSequences = int("maxSequences", 64, 1, 255);
        const cacheSlots = options.prefixCache === false ? 0 : int("cacheSlots", Math.min(maxSequences, 256 - maxSequences), 0, 256 - maxSequences);
        const batchTokens = int("batchTokens", 2048, maxSequences);
        let paged = pagedKvWanted(options);
        let blockSize = int("blockSize", paged ? 128 : 16, 1, 4096);
        const ubatchSize = int("ubatchSize", Math.min(512, batchTokens), 1, batchTokens);
        const prefillChunk = int("prefillChunk", ubatchSize, 1, batchTokens);
        const longPrefills = int("longPrefills", 1, 1);
        const maxQueued = int("maxQueued", 1024, 1);
        if (options.maxPromptLength !== undefined) int("maxPromptLength", 1, 1);
        int("contextSize", 0, 0);
        const preemption = options.preemption ?? "recompute";
        if (preemption !== "recompute" && preemption !== "swap") {
            throw new BatchwiseError(ErrorCode.InvalidArgument, "option 'preemption' must be 'recompute' or 'swap'");
        }
        const watermark = options.watermark ?? 0.01;
        if (typeof watermark !== "number" || !(watermark >= 0 && watermark < 1)) throw new BatchwiseError(ErrorCode.InvalidArgument, "option 'watermark' must be in [0, 1)");
        const swapSpaceBytes = options.swapSpaceBytes ?? 4 * 2 ** 30;
        if (typeof swapSpaceBytes !== "number" || !(swapSpaceBytes >= 0)) throw new BatchwiseError(ErrorCode.InvalidArgument, "option 'swapSpaceBytes' must be a number >= 0");
        const prefixCache = options.prefixCache ?? true;
        if (typeof prefixCache !== "boolean") throw new BatchwiseError(ErrorCode.InvalidArgument, "option 'prefixCache' must be a boolean");
        const loadOptions: ModelLoadOptions = defined({
            gpuLayers: options.gpuLayers, splitMode: options.splitMode, tensorSplit: options.tensorSplit, mainGpu: options.mainGpu,
            useMmap: options.useMmap, onProgress: options.onProgress,
        });
        const model = await LlamaModel.load(options.model, loadOptions);
        let context: LlamaContext | undefined;
        try {
            if (paged && (blockSize & (blockSize - 1)) !== 0) {
                throw new BatchwiseError(ErrorCode.InvalidArgument, `option 'blockSize' must be a power of two with the paged KV cache (got ${blockSize})`);
            }
            const trained = model.metadata.trainedContext;
            const contextSize = options.contextSize || trained;
            if (contextSize < blockSize) {
                throw new BatchwiseError(ErrorCode.InvalidArgument, `option 'contextSize' (${contextSize}) must hold at least one block (${blockSize} tokens)`);
            }
            const contextOptions = defined<ContextOptions>({
                contextSize, maxSequences: maxSequences + cacheSlots, batchSize: batchTokens, ubatchSize, kvUnified: true,
                flashAttention: options.flashAttention, kvCacheTypeK: options.kvCacheTypeK, kvCacheTypeV: options.kvCacheTypeV,
                threads: options.threads, threadsBatch: options.threadsBatch,
            });
            try {
                context = await model.createContext({ ...contextOptions, kvBlockSize: paged ? blockSize : 0 });
            } catch (e) {
                // llama.cpp refused: a memory that cannot be paged (sliding-window, recurrent), flash attention that
                // resolved to off, or a device without paged attention for this model (on CUDA: head sizes 64-256,
                // f16 K/V, blocks of 128 or more). Without an explicit pagedKv, fall back to the unified pool
                if (!paged || options.pagedKv === true || !(e instanceof BatchwiseError) || !/paged KV/.test(e.message)) throw e;
                paged = false;
                if (options.blockSize === undefined) blockSize = 16;
                context = await model.createContext(contextOptions);
            }
            const numBlocks = Math.floor(context.info.contextSize / blockSize);
            const pool = numBlocks * blockSize;
            const maxContext = Math.min(pool, trained > 0 ? trained : pool);
            const maxPromptLength = int("maxPromptLength", 16 * maxContext, 1);
            return new Engine(model, context, { ...options }, {
                numBlocks, blockSize, maxRunning: maxSequences, seqIds: maxSequences + cacheSlots, batchTokens, prefillChunk, longPrefills,
                maxContext, pagedKv: paged, prefixCache, preemption, swapSpaceBytes, watermark,
            }, { maxQueued, maxPromptLength });
        } catch (e) {
            context?.dispose();
            model.dispose();
            throw e;
        }
    }

    get metadata(): ModelMetadata {
        return this.model.metadata;
    }

    /** Starts a request; iterate the result for events or await its result(). */
    generate(request: GenerateRequest): Generation {
        const gen = new Generation();
        const startedAt = now();
        this.pendingAdmissions++;
        this.enqueue(gen, request, startedAt).finally(() => this.pendingAdmissions--);
        return gen;
    }

    /** Runs a request to its end. */
    complete(request: GenerateRequest): Promise<GenerateResult> {
        return this.generate(request).result();
    }

    /** Starts a chat request: the messages go through the model's chat template. */
    chat(request: ChatRequest): Generation {
        let prompt: string;
        let rest: RequestOptions;
        try {
            if (request === null || typeof request !== "object") throw new BatchwiseError(ErrorCode.InvalidArgument, "the request must be an object");
            const { messages, template, templateVariables, ...others } = request;
            if (Array.isArray(messages)) {
                let length = 0;
                for (const m of messages) if (typeof m?.content === "string") length += m.content.length;
                this.checkPromptLength(length, "'messages'");
            }
            prompt = this.formatChat(messages, { template, variables: templateVariables });
            rest = others;
        } catch (e) {
            const gen = new Generation();
            gen.fail(e);
            return gen;
        }
        return this.generate({ ...rest, prompt, addSpecial: true, parseSpecial: true });
    }

    /** The prompt text a chat becomes: the model's Jinja template (or options.template), assistant turn opened. */
    formatChat(messages: readonly ChatMessage[], options: ChatFormatOptions = {}): string {
        return this.chatFormatter.format(messages, options);
    }

    /** How the model's chat template is rendered: Jinja, llama.cpp's built-in formats, or not at all (none). */
    get chatTemplateKind(): "jinja" | "builtin" | "none" {
        return this.chatFormatter.kind;
    }

    /** Text to token ids, as a prompt is tokenized (addSpecial adds BOS where the model asks; parseSpecial reads "<|im_start|>" as one token). */
    async tokenize(text: string, options: { addSpecial?: boolean; parseSpecial?: boolean } = {}): Promise<number[]> {
        if (typeof text !== "string") throw new BatchwiseError(ErrorCode.InvalidArgument, "the text to tokenize must be a string");
        this.checkPromptLength(text.length, "the text");
        return Array.from(await this.tokenizeText(text, { addSpecial: options.addSpecial ?? true, parseSpecial: options.parseSpecial ?? true }));
    }

    /** Token ids to text (special tokens written out unless special is false). */
    detokenize(tokens: readonly number[], options: { special?: boolean } = {}): Promise<string> {
        const vocab = this.model.metadata.vocabSize;
        if (!Array.isArray(tokens)) throw new BatchwiseError(ErrorCode.InvalidArgument, "tokens must be an array of token ids");
        tokens.forEach((t, i) => {
            if (!Number.isInteger(t) || t < 0 || t >= vocab) throw new BatchwiseError(ErrorCode.InvalidArgument, `'tokens[${i}]' (${String(t)}) is not a token id in [0, ${vocab})`);
        });
        return this.model.detokenize(tokens, { special: options.special ?? true });
    }

    /** The bytes of one token's text (a piece may hold part of a UTF-8 character). */
    tokenBytes(token: number): Uint8Array {
        if (!Number.isInteger(token) || token < 0 || token >= this.model.metadata.vocabSize) return this.model.tokenToPiece(token); // its typed error
        return this.piece(token).slice(); // the caller's own copy: the table is shared
    }

    /** Whether the model has the tokens fill-in-the-middle needs (prefix, suffix, middle). */
    get supportsInfill(): boolean {
        const t = this.model.metadata.tokens;
        return t.fimPrefix >= 0 && t.fimSuffix >= 0 && t.fimMiddle >= 0;
    }

    stats(): EngineStats {
        const s = this.scheduler.stats();
        const t = now();
        while (this.window.length > 0 && this.window[0].t < t - 10_000) this.window.shift();
        let gen = 0, prompt = 0;
        for (const w of this.window) {
            gen += w.gen;
            prompt += w.prompt;
        }
        const span = this.window.length > 0 ? Math.max(1, Math.min(10_000, t - this.window[0].t)) / 1000 : 1;
        return {
            running: s.running, waiting: s.waiting + this.intakeSequences, swapped: s.swapped,
            kv: {
                blocks: s.kv.numBlocks, blockSize: s.kv.blockSize, used: s.kv.used, free: s.kv.free, cachedFree: s.kv.cachedFree,
                usage: s.kv.used / s.kv.numBlocks, slots: s.kv.seqIds, parkedSlots: s.kv.parkedSeqIds,
            },
            prefixCache: { queries: s.kv.queries, hits: s.kv.hits, hitRate: s.kv.queries > 0 ? s.kv.hits / s.kv.queries : 0, evictions: s.kv.evictions },
            preemptions: s.preemptions, steps: s.steps, time: { ...this.time },
            tokensPerSecond: gen / span, promptTokensPerSecond: prompt / span,
            totals: { ...this.totals, finished: { ...this.totals.finished } },
            healthy: this.broken === null, closing: this.closing,
            stalledMs: this.scheduler.busy || this.requests.size > 0 ? Math.max(0, t - this.lastProgress) : 0,
        };
    }

    /**
     * Stops taking requests, lets running ones finish (with `drain`, up to `timeoutMs`) or aborts them,
     * then frees the KV cache and the model. Idempotent.
     */
    async close(options: { drain?: boolean; timeoutMs?: number } = {}): Promise<void> {
        if (!this.closing) {
            this.closing = true;
            if (options.drain) {
                const deadline = now() + (options.timeoutMs ?? 30_000);
                while ((this.requests.size > 0 || this.pendingAdmissions > 0) && now() < deadline) {
                    await new Promise((r) => setTimeout(r, 10));
                }
            }
            while (this.pendingAdmissions > 0) await new Promise((r) => setTimeout(r, 1));
            this.scheduler.finishAll("abort");
            this.closed = true;
            this.wake();
        }
        await this.loopDone;
        if (!this.context.disposed) {
            this.context.dispose();
            this.model.dispose();
        }
    }

    // ---- intake ---------------------------------------------------------------------------------

    private refuseIfClosed(): void {
        if (this.closing) throw new BatchwiseError(ErrorCode.EngineClosed, "the engine is closing and takes no new requests");
        if (this.broken !== null) throw new BatchwiseError(ErrorCode.Internal, `the engine stopped after an internal error: ${String(this.broken)}`, { cause: this.broken });
    }

    /** Sequences waiting, with those of requests still in intake (tokenizing) that passed this check. */
    private checkQueue(n: number): void {
        if (n > this.maxQueued) {
            throw new BatchwiseError(ErrorCode.InvalidArgument, `'n' (${n}) asks for more sequences than the queue holds (maxQueued ${this.maxQueued})`);
        }
        const waiting = this.scheduler.waitingSequences + this.intakeSequences;
        if (waiting + n > this.maxQueued) {
            throw new BatchwiseError(ErrorCode.QueueFull, `the queue is full (${waiting} sequences waiting, at most ${this.maxQueued}); retry later`);
        }
    }

    private checkPromptLength(length: number, what: string): void {
        if (length > this.maxPromptLength) {
            throw new BatchwiseError(ErrorCode.ContextLength,
                `${what} is ${length} characters long, more than this server tokenizes (${this.maxPromptLength}, 16 per token of its ${this.maxContext}-token context)`);
        }
    }

    /**
     * Tokenizes on the libuv pool, at most two texts at once: decodes share that pool (4 threads by default),
     * and must find a thread free whatever the prompts in intake.
     */
    private async tokenizeText(text: string, options: { addSpecial: boolean; parseSpecial: boolean }): Promise<Int32Array> {
        if (this.tokenizing >= 2) await new Promise<void>((r) => this.tokenizeWaiters.push(r));
        else this.tokenizing++;
        try {
            return await this.model.tokenize(text, options);
        } finally {
            const next = this.tokenizeWaiters.shift();
            if (next) next(); // the slot passes to the next waiter
            else this.tokenizing--;
        }
    }

    private async enqueue(gen: Generation, request: GenerateRequest, startedAt: number): Promise<void> {
        try {
            this.refuseIfClosed();
            if (request === null || typeof request !== "object") throw new BatchwiseError(ErrorCode.InvalidArgument, "the request must be an object");
            const meta = this.model.metadata;
            const valid = validateRequest(request, meta.vocabSize);
            this.resolveGrammar(request, valid);
            this.checkQueue(valid.n);
            this.intakeSequences += valid.n;
            let prompt: number[];
            try {
                prompt = await this.promptTokens(request);
            } finally {
                this.intakeSequences -= valid.n;
            }
            // a request that arrived before close() began is served (or aborted) like the others
            if (this.closed) throw new BatchwiseError(ErrorCode.EngineClosed, "the engine closed while the request was being tokenized");
            if (this.broken !== null) this.refuseIfClosed();
            if (prompt.length >= this.maxContext) {
                throw new BatchwiseError(ErrorCode.ContextLength,
                    `the prompt has ${prompt.length} tokens; the context holds ${this.maxContext}, which leaves no room to generate`);
            }
            if (valid.maxTokens !== undefined && prompt.length + valid.maxTokens > this.maxContext) {
                throw new BatchwiseError(ErrorCode.ContextLength,
                    `the prompt (${prompt.length} tokens) plus maxTokens (${valid.maxTokens}) is ${prompt.length + valid.maxTokens} tokens, ` +
                    `more than the context holds (${this.maxContext})`);
            }
            const signal = request.signal;
            const sched = this.scheduler.submit({
                prompt, n: valid.n, maxTokens: valid.maxTokens ?? this.maxContext - prompt.length, priority: valid.priority,
                ignoreEos: valid.ignoreEos, stopTokens: valid.stopTokens, samplers: valid.samplers, useCache: valid.useCache,
                cacheSalt: valid.cacheSalt,
            }, this.nextId++);
            gen.id = sched.id;
            const state: RequestState = {
                gen, sched, valid, startedAt, firstTokenAt: -1, interTokenMs: [], open: valid.n, unlisten: () => {},
                choices: sched.seqs.map(() => ({
                    text: [], tokens: [], logprobs: valid.logprobs >= 0 ? [] : undefined, stream: new TextStream(valid.stopStrings),
                    finishReason: null, lastTokenAt: -1,
                })),
            };
            this.requests.set(sched, state);
            this.totals.requests++;
            this.totals.promptTokens += prompt.length;
            const abort = () => {
                for (const s of sched.seqs) this.scheduler.finish(s, "abort");
                this.wake();
            };
            gen.onAbort = abort;
            if (signal) {
                signal.addEventListener("abort", abort, { once: true });
                state.unlisten = () => signal.removeEventListener("abort", abort);
            }
            gen.markQueued();
            if (signal?.aborted || gen.abortRequested) abort();
            this.wake();
        } catch (e) {
            gen.fail(e);
        }
    }

    /** A JSON responseFormat becomes a grammar; every grammar is parsed before the request is queued. */
    private resolveGrammar(request: GenerateRequest, valid: ValidRequest): void {
        const f = request.responseFormat;
        if (f && f.type !== "text") {
            const grammar = jsonSchemaToGrammar(f.type === "json_object" ? { type: "object" } : f.schema);
            for (const s of valid.samplers) {
                s.grammar = grammar;
                delete s.grammarRoot;
            }
        }
        const s0 = valid.samplers[0];
        if (s0?.grammar !== undefined) {
            try {
                this.model.checkGrammar(s0.grammar, s0.grammarRoot);
            } catch (e) {
                throw new BatchwiseError(ErrorCode.InvalidArgument, `'grammar': ${(e as Error).message}`, { cause: e });
            }
        }
    }

    private async infillPrompt(prefix: unknown, suffix: unknown): Promise<number[]> {
        const t = this.model.metadata.tokens;
        if (!this.supportsInfill) {
            throw new BatchwiseError(ErrorCode.InvalidArgument, "'suffix' needs a model with fill-in-the-middle tokens, and this model has none");
        }
        if (typeof prefix !== "string") throw new BatchwiseError(ErrorCode.InvalidArgument, "'prompt' must be a string when 'suffix' is given");
        if (typeof suffix !== "string") throw new BatchwiseError(ErrorCode.InvalidArgument, "'suffix' must be a string");
        const plain = { addSpecial: false, parseSpecial: false };
        this.checkPromptLength(prefix.length + suffix.length, "'prompt' and 'suffix'");
        const [pre, suf] = await Promise.all([this.tokenizeText(prefix, plain), this.tokenizeText(suffix, plain)]);
        // prefix-suffix-middle order, as the FIM-trained code models (Qwen2.5-Coder, DeepSeek-Coder, StarCoder, CodeLlama) expect
        const out: number[] = [];
        if (this.model.metadata.addBos && t.bos >= 0) out.push(t.bos);
        out.push(t.fimPrefix, ...pre, t.fimSuffix, ...suf, t.fimMiddle);
        return out;
    }

    private async promptTokens(request: GenerateRequest): Promise<number[]> {
        const p = request.prompt;
        const vocab = this.model.metadata.vocabSize;
        if (request.suffix !== undefined && request.suffix !== null) return this.infillPrompt(p, request.suffix);
        if (typeof p === "string") {
            if (p.length === 0) throw new BatchwiseError(ErrorCode.InvalidArgument, "'prompt' must not be empty");
            this.checkPromptLength(p.length, "'prompt'");
            const t = Array.from(await this.tokenizeText(p, { addSpecial: request.addSpecial ?? true, parseSpecial: request.parseSpecial ?? true }));
            const bos = this.model.metadata.tokens.bos;
            // a chat template that writes BOS itself, plus the tokenizer's BOS, would give two
            if (t.length > 1 && bos >= 0 && t[0] === bos && t[1] === bos) t.shift();
            if (t.length === 0) throw new BatchwiseError(ErrorCode.InvalidArgument, "'prompt' tokenizes to nothing");
            return t;
        }
        if (p === null || typeof p !== "object" || typeof (p as ArrayLike<number>).length !== "number") {
            throw new BatchwiseError(ErrorCode.InvalidArgument, "'prompt' must be a string or an array of token ids");
        }
        const t = Array.from(p as ArrayLike<number>);
        if (t.length === 0) throw new BatchwiseError(ErrorCode.InvalidArgument, "'prompt' must not be empty");
        for (let i = 0; i < t.length; i++) {
            if (!Number.isInteger(t[i]) || t[i] < 0 || t[i] >= vocab) {
                throw new BatchwiseError(ErrorCode.InvalidArgument, `'prompt[${i}]' (${t[i]}) is not a token id in [0, ${vocab})`);
            }
        }
        return t;
    }

    // ---- the loop -------------------------------------------------------------------------------

    private wake(): void {
        const w = this.wakeLoop;
        this.wakeLoop = null;
        w?.();
    }

    private async loop(): Promise<void> {
        await Promise.resolve();
        try {
            for (;;) {
                const t0 = now();
                const step = this.scheduler.plan();
                // the swaps the plan decided, before the decode (the step's rows may change: a failed restore leaves it)
                if (step && (step.swapOut.length > 0 || step.swapIn.length > 0)) await runSwaps(this.scheduler, this.context, step);
                const events = this.scheduler.takeEvents();
                if (step && step.entries.length === 0) {
                    this.dispatch(events); // only swaps this step
                    continue;
                }
                if (!step) {
                    this.dispatch(events);
                    if (!this.scheduler.busy) {
                        if (this.closed) break;
                        await new Promise<void>((r) => (this.wakeLoop = r));
                        this.lastProgress = now(); // idle time is not a stall
                    } else {
                        // work that cannot start yet (should not last): poll rather than spin
                        await new Promise<void>((r) => setTimeout((this.wakeLoop = r), 2));
                    }
                    continue;
                }
                const t1 = now();
                const decoding = this.context.decode(step.batch);
                decoding.catch(() => {});
                // the decode runs off the JS thread: hand out the last step's tokens meanwhile
                this.dispatch(events);
                try {
                    const result = await decoding;
                    this.time.decodeMs += result.decodeMs + result.sampleMs;
                    this.scheduler.complete(step, result);
                } catch (e) {
                    this.scheduler.fail(step, e);
                }
                this.lastProgress = now();
                this.time.planMs += t1 - t0;
                this.time.stepMs += this.lastProgress - t0;
                this.totals.computedPromptTokens += step.promptTokens;
                this.window.push({ t: now(), gen: step.decodeTokens, prompt: step.promptTokens });
                if (this.window.length > 4096) this.window.splice(0, 2048);
            }
            this.dispatch(this.scheduler.takeEvents());
        } catch (e) {
            this.fatal(e);
        }
    }

    /** An internal failure: every request ends with the error, the engine takes no more. */
    private fatal(e: unknown): void {
        this.broken = e;
        try {
            this.dispatch(this.scheduler.takeEvents()); // what had ended before the failure ends as it did
        } catch {
            // the failure may be in dispatch itself
        }
        for (const st of [...this.requests.values()]) {
            for (const seq of st.sched.seqs) {
                if (st.choices[seq.index].finishReason === null) this.finishChoice(st, seq.index, "error", e);
            }
        }
    }

    /** A view of a token's bytes in the packed table (the scheduler passes only ids in the vocabulary). */
    private piece(token: number): Uint8Array {
        return this.pieceBytes.subarray(this.pieceOffsets[token], this.pieceOffsets[token + 1]);
    }

    private dispatch(events: SchedulerEvent[]): void {
        for (const e of events) {
            const st = this.requests.get(e.seq.request);
            if (!st) continue;
            const c = st.choices[e.seq.index];
            if (c.finishReason !== null) continue;
            if (e.kind === "token") this.onToken(st, e.seq, e);
            else this.finishChoice(st, e.seq.index, e.reason, e.error);
        }
    }

    private onToken(st: RequestState, seq: Sequence, e: Extract<SchedulerEvent, { kind: "token" }>): void {
        const c = st.choices[seq.index];
        const t = now();
        if (st.firstTokenAt < 0) st.firstTokenAt = t;
        if (c.lastTokenAt >= 0) st.interTokenMs.push(t - c.lastTokenAt);
        c.lastTokenAt = t;
        this.totals.generatedTokens++;
        const { text, stopped } = c.stream.push(this.piece(e.token));
        c.tokens.push(e.token);
        let lp: TokenLogprob[] | undefined;
        if (c.logprobs && e.logprob !== undefined) {
            const entry: TokenLogprob = { token: e.token, logprob: e.logprob };
            if (e.topIds && e.topLogprobs) {
                entry.top = [];
                for (let i = 0; i < e.topIds.length; i++) if (e.topIds[i] >= 0) entry.top.push({ token: e.topIds[i], logprob: e.topLogprobs[i] });
            }
            c.logprobs.push(entry);
            lp = [entry];
        }
        if (text.length > 0) c.text.push(text);
        const delta: GenerateEvent = { type: "delta", index: seq.index, text, tokens: [e.token] };
        if (lp) delta.logprobs = lp;
        st.gen.push(delta);
        if (stopped) {
            this.scheduler.finish(seq, "stop");
            this.finishChoice(st, seq.index, "stop");
        }
    }

    private finishChoice(st: RequestState, index: number, reason: FinishReason, error?: unknown): void {
        const c = st.choices[index];
        if (c.finishReason !== null) return;
        const rest = c.stream.end(); // text held back for a stop string that never came
        if (rest.length > 0) {
            c.text.push(rest);
            st.gen.push({ type: "delta", index, text: rest, tokens: [] });
        }
        c.finishReason = reason;
        c.error = error;
        this.totals.finished[reason]++;
        const fin: GenerateEvent = { type: "finish", index, finishReason: reason };
        if (error !== undefined) fin.error = error;
        st.gen.push(fin);
        if (--st.open === 0) this.finishRequest(st);
    }

    private finishRequest(st: RequestState): void {
        this.requests.delete(st.sched);
        st.unlisten();
        const t = now();
        const seqs = st.sched.seqs;
        let firstScheduled = Infinity, completion = 0, preemptions = 0;
        for (const s of seqs) {
            if (s.firstScheduledAt >= 0) firstScheduled = Math.min(firstScheduled, s.firstScheduledAt);
            completion += s.sampled;
            preemptions += s.preemptions;
        }
        const promptTokens = seqs[0].promptLength;
        const cachedTokens = seqs[0].cachedTokens;
        this.totals.cachedTokens += cachedTokens;
        const choices: Choice[] = st.choices.map((c, index) => {
            const ch: Choice = { index, text: c.text.join(""), tokens: c.tokens, finishReason: c.finishReason! };
            if (c.error !== undefined) ch.error = c.error;
            if (c.logprobs) ch.logprobs = c.logprobs;
            return ch;
        });
        const first = choices[0];
        const result: GenerateResult = {
            id: st.sched.id, text: first.text, tokens: first.tokens, finishReason: first.finishReason, choices,
            usage: { promptTokens, cachedTokens, completionTokens: completion, totalTokens: promptTokens + completion },
            timings: {
                queueMs: Number.isFinite(firstScheduled) ? firstScheduled - st.startedAt : t - st.startedAt,
                ttftMs: st.firstTokenAt >= 0 ? st.firstTokenAt - st.startedAt : -1,
                interTokenMs: st.interTokenMs, e2eMs: t - st.startedAt,
            },
            preemptions,
        };
        if (first.error !== undefined) result.error = first.error;
        if (first.logprobs) result.logprobs = first.logprobs;
        st.gen.push({ type: "done", ...result });
    }
}

/** Whether the engine asks for the paged KV cache: by default whenever flash attention is not off (llama.cpp decides the rest). */
function pagedKvWanted(options: EngineOptions): boolean {
    const fa = options.flashAttention;
    const faOff = fa === false || fa === "off";
    if (options.pagedKv !== undefined && typeof options.pagedKv !== "boolean") {
        throw new BatchwiseError(ErrorCode.InvalidArgument, "option 'pagedKv' must be a boolean");
    }
    if (options.pagedKv === true && faOff) {
        throw new BatchwiseError(ErrorCode.InvalidArgument, "option 'pagedKv' needs flash attention (flashAttention is off)");
    }
    return options.pagedKv ?? !faOff;
}
