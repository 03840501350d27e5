// The engine's public types: its options, the settings they resolve to, the events and results of a
// request, and its stats.
import type { ContextOptions, KvCacheType, SplitMode } from "../binding/index.js";
import type { FinishReason, PreemptionMode } from "../scheduler/scheduler.js";
import type { AssistantMessage, ChatMessage, ChatOptions, MessageDelta } from "./chat.js";
import type { RequestOptions } from "./request.js";

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
    /** Sequences running (decoded) at once. Default 64; at most the sequence ids llama.cpp has (systemInfo().maxSequences). */
    maxRunning?: number;
    /** @deprecated the old name of maxRunning. */
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
    /**
     * Unified KV pool only: extra sequence ids that keep ended requests' prefixes in KV (the paged cache keeps
     * them in its blocks). Default min(maxRunning, the ids llama.cpp has - maxRunning).
     */
    cacheSeqIds?: number;
    /** @deprecated the old name of cacheSeqIds. */
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
    /**
     * How often, in ms, the engine gives the free memory malloc holds back to the system while it works
     * (and each time it goes idle, at most every 1 s). Under glibc, the memory a server's threads freed
     * stays in their malloc arenas and the resident size creeps up for hours after the memory in use
     * stopped growing; a trim costs a few ms of the JS thread, during a decode. 0: never. Default 10000.
     */
    trimHeapMs?: number;
    flashAttention?: ContextOptions["flashAttention"];
    kvCacheTypeK?: KvCacheType;
    kvCacheTypeV?: KvCacheType;
    threads?: number;
    threadsBatch?: number;
    /**
     * The chat template: a Jinja source, or a built-in name ("chatml", "llama3", ...), over the GGUF's own
     * (for models whose template is broken or has no tools). The CLI's --chat-template-file reads one from a file.
     */
    chatTemplate?: string;
    onProgress?: (progress: number) => void;
}

/** The settings in force: every option resolved once, at load, from the options, the model and the context made. */
export interface EngineSettings {
    /** Sequences running at once. */
    maxRunning: number;
    /** Sequence ids the context has: maxRunning, plus cacheSeqIds with the unified pool. */
    seqIds: number;
    /** Unified pool: the ids that keep ended prefixes (0 with the paged cache, whose blocks keep them, or without the prefix cache). */
    cacheSeqIds: number;
    /** KV blocks in the pool and tokens per block. */
    numBlocks: number;
    blockSize: number;
    /** Most tokens (prompt + generated) one sequence may hold. */
    maxContext: number;
    batchTokens: number;
    ubatchSize: number;
    prefillChunk: number;
    longPrefills: number;
    pagedKv: boolean;
    prefixCache: boolean;
    preemption: PreemptionMode;
    swapSpaceBytes: number;
    watermark: number;
    maxQueued: number;
    maxPromptLength: number;
    trimHeapMs: number;
}

export interface TokenLogprob {
    token: number;
    logprob: number;
    /** The most likely tokens at this position, best first (when logprobs > 0). */
    top?: { token: number; logprob: number }[];
}

export type GenerateEvent =
    | {
          type: "delta"; index: number; text: string; tokens: number[]; logprobs?: TokenLogprob[];
          /** A chat's parsed changes for this text: content, thinking, tool calls (empty while a call's text is still being read). */
          message?: MessageDelta[];
      }
    | { type: "finish"; index: number; finishReason: FinishReason; stopString?: string; error?: unknown }
    | ({ type: "done" } & GenerateResult);

export interface Choice {
    index: number;
    text: string;
    tokens: number[];
    finishReason: FinishReason;
    /** The request's stop string that ended this choice (finishReason "stop"; absent for an end-of-generation token or a template's stop). */
    stopString?: string;
    error?: unknown;
    logprobs?: TokenLogprob[];
    /** A chat's answer: its text read as content, thinking and tool calls. */
    message?: AssistantMessage;
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

/**
 * A chat: the messages (and tools, reasoning options) through the chat template. `grammar` applies from the
 * first token; a JSON `responseFormat` is placed by the template (after any thinking); neither with tools.
 */
export interface ChatRequest extends RequestOptions, ChatOptions {
    messages: readonly ChatMessage[];
}

export interface EngineStats {
    /** Sequences (choices) running, waiting (queued or still tokenizing) and swapped out. */
    running: number;
    waiting: number;
    swapped: number;
    kv: { blocks: number; blockSize: number; used: number; free: number; cachedFree: number; usage: number; seqIds: number; parkedSeqIds: number };
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
    /** The heap trims since load (EngineOptions.trimHeapMs) and the JS-thread time they took, in ms. */
    heap: { trims: number; trimMs: number };
    /**
     * llama.cpp's compute graphs since load (LlamaContext.perf()): micro-batches that reused the previous graph as it
     * was, and allocation plans made for micro-batches' graphs. On a GPU each plan first waits for it to finish
     * the step before, so plans per step is a cost: a step whose layout differs from the last one's makes one.
     */
    graphs: { reuses: number; allocationPlans: number };
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
