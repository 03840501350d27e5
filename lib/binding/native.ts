// Loads the compiled addon and types its raw surface. Where the addon comes from (see addonCandidates): BATCHWISE_ADDON,
// a source build in this package (build/Release), or a prebuilt package (@batchwise/<platform>-<arch>[-cuda], found
// with node-gyp-build in its prebuilds/<platform>-<arch>/).
// Nothing outside lib/binding imports this file: use the classes of lib/binding/index.ts.
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { BatchwiseError, ErrorCode } from "./errors.js";

/** The package root (holds package.json, build/, prebuilds/, deps/). */
export const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

export interface NativeDecodeBatch {
    tokens: Int32Array;
    positions: Int32Array;
    seqIds: Int32Array;
    outputs: Uint8Array;
}

export interface NativeDecodeResult {
    /** One sampled token per output row; -1 where the sequence's grammar and sampler allow no token. */
    tokens: Int32Array;
    logprobs: Float32Array | null;
    topK: number;
    topIds?: Int32Array;
    topLogprobs?: Float32Array;
    decodeMs: number;
    sampleMs: number;
}

export interface NativeModel {
    metadata(): ModelMetadata;
    tokenize(text: string, options?: { addSpecial?: boolean; parseSpecial?: boolean }): Promise<Int32Array>;
    detokenize(tokens: Int32Array | readonly number[], options?: { special?: boolean }): Promise<string>;
    tokenToPiece(token: number, options?: { special?: boolean }): Uint8Array;
    isEog(token: number): boolean;
    applyChatTemplate(messages: readonly ChatMessage[], options?: { addAssistant?: boolean; template?: string }): string;
    checkGrammar(grammar: string, root?: string, options?: { lazy?: boolean; triggers?: readonly GrammarTrigger[] }): void;
    dispose(): void;
    readonly disposed: boolean;
}

export interface NativeContext {
    info(): ContextInfo;
    decode(batch: NativeDecodeBatch): Promise<NativeDecodeResult>;
    setSampler(seqId: number, params: SamplerParams | null): { backend: boolean };
    seqRemove(seqId: number, p0?: number, p1?: number): boolean;
    seqCopy(src: number, dst: number, p0?: number, p1?: number): void;
    setBlockTable(seqId: number, blocks: Int32Array): void;
    claimBlocks(seqId: number, tokens: number): void;
    seqKeep(seqId: number): void;
    seqPosMin(seqId: number): number;
    seqPosMax(seqId: number): number;
    perf(): ContextPerf;
    clear(): void;
    saveSequence(seqId: number): Promise<Buffer>;
    restoreSequence(seqId: number, state: Uint8Array): Promise<number>;
    dispose(): void;
    readonly disposed: boolean;
}

export interface NativeChatTemplates {
    readonly source: string;
    readonly caps: ChatTemplateCaps;
    /** inputs: ChatApplyInputs as JSON text. */
    apply(inputsJson: string): ChatApplyResult;
    dispose(): void;
    readonly disposed: boolean;
}

export interface NativeChatParser {
    update(textAdded: string, partial: boolean): ChatMessageDelta[];
    readonly message: ParsedChatMessage;
}

export interface NativeAddon {
    Model: { load(path: string, options: object, onProgress?: (p: number) => void): Promise<NativeModel> };
    Context: { create(model: NativeModel, options: object): Promise<NativeContext> };
    ChatTemplates: { create(model: NativeModel, options: object): NativeChatTemplates };
    ChatParser: { create(spec: ChatParserSpec, options: object): NativeChatParser };
    getDevices(): DeviceInfo[];
    systemInfo(): SystemInfo;
    heapStats(): HeapStats | null;
    trimHeap(): boolean;
    setLogger(fn: ((level: number, text: string) => void) | null, minLevel?: number): void;
    createRandomModel(options: object): Promise<{ path: string; sizeBytes: number; vocabSize: number }>;
    jsonSchemaToGrammar(schemaJson: string): string;
    /** native/limits.h, frozen: read it through LIMITS (lib/binding/limits.ts). */
    readonly limits: Readonly<Record<string, number>>;
}

export interface ModelMetadata {
    architecture: string;
    name: string;
    description: string;
    trainedContext: number;
    embeddingSize: number;
    layers: number;
    heads: number;
    kvHeads: number;
    vocabSize: number;
    sizeBytes: number;
    parameters: number;
    /** Loaded with vocabOnly: tokenizer and template only (layers, heads and kvHeads read 0). */
    vocabOnly: boolean;
    chatTemplate: string | null;
    /** Special token ids; -1 where the model has none. */
    tokens: {
        bos: number; eos: number; eot: number; sep: number; nl: number; pad: number;
        fimPrefix: number; fimSuffix: number; fimMiddle: number; fimPad: number; fimRepo: number; fimSep: number;
    };
    addBos: boolean;
    addEos: boolean;
    /** Every GGUF metadata key with its value as a string (arrays are summarized by llama.cpp). */
    gguf: Record<string, string>;
}

export interface ChatMessage {
    role: string;
    content: string;
}

export interface ContextInfo {
    contextSize: number;
    sequenceContextSize: number;
    /** The sequence ids the context has (0..seqIds-1): llama.cpp's n_seq_max. */
    seqIds: number;
    /** @deprecated The old name of `seqIds`. */
    maxSequences: number;
    batchSize: number;
    ubatchSize: number;
    kvUnified: boolean;
    /** > 0: a paged KV cache with blocks of this many cells. */
    kvBlockSize: number;
    flashAttention: "auto" | "on" | "off";
}

/** LlamaContext.perf(): llama.cpp's counters since the context was made. */
export interface ContextPerf {
    /** Micro-batches that reused the previous compute graph as it was. */
    graphReuses: number;
    /**
     * Allocation plans made for micro-batches' graphs. Each one first synchronizes the backends when a graph spans a
     * GPU and the host, so a steady workload should make few: a long prompt's micro-batches make two.
     */
    allocationPlans: number;
}

export interface SamplerParams {
    /** <= 0: greedy. Default 1. */
    temperature?: number;
    /** 0: off. */
    topK?: number;
    /** 1: off. */
    topP?: number;
    /** 0: off. */
    minP?: number;
    repeatPenalty?: number;
    presencePenalty?: number;
    frequencyPenalty?: number;
    /** Tokens the penalties look back over; -1: the whole context. Default 64. */
    penaltyLastN?: number;
    logitBias?: ReadonlyArray<readonly [number, number]> | Record<string, number>;
    seed?: number;
    /** Return the sampled token's logprob (0) and the top k (k > 0). Forces CPU sampling for the sequence. */
    logprobs?: number;
    /** Sample inside the compute graph (on the GPU) when the chain allows it. Default true. */
    backend?: boolean;
    /** A GBNF grammar: only tokens it allows are sampled (on the CPU). */
    grammar?: string;
    /** The grammar's start rule. Default "root". */
    grammarRoot?: string;
    /**
     * The grammar constrains only once one of grammarTriggers has appeared in the output (a tool call starting);
     * before that it allows everything. Needs grammar and at least one trigger.
     */
    grammarLazy?: boolean;
    /** A lazy grammar's triggers, as ChatTemplates.apply returns them (grammarTriggers). Checked even when not lazy. */
    grammarTriggers?: readonly GrammarTrigger[];
    /**
     * The generation prompt (ChatApplyResult.generationPrompt), tokenized with special tokens and fed to a non-lazy
     * grammar before the history: pass it only with a grammar that came from ChatTemplates.apply (whose grammar
     * describes the answer from the template's generation prompt on). Ignored for a lazy grammar or none.
     */
    grammarPrefill?: string;
    /**
     * A thinking budget (llama.cpp's common/reasoning-budget): once `tokens` tokens were generated after startTag
     * without an end tag, `message` and endTags[0] are forced. Omit the field for no budget; tokens 2147483647 is a
     * budget that never runs out, which still keeps a lazy grammar from triggering inside the thinking. Samples on the
     * CPU. `prefill` (the generation prompt) is fed to it before the history (a prompt that opens the thinking).
     */
    reasoningBudget?: ReasoningBudget;
    /** Tokens the sequence already generated, fed to the chain (grammar state, penalty window) as if sampled. */
    history?: Int32Array;
}

export interface ReasoningBudget {
    /** 0..2147483647. */
    tokens: number;
    startTag: string;
    /** At least one; the first is the one forced. */
    endTags: readonly string[];
    message?: string;
    prefill?: string;
}

/** A lazy grammar's trigger, as ChatTemplates.apply returns them. */
export interface GrammarTrigger {
    type: "token" | "word" | "pattern" | "patternFull";
    /** The word, or the regex (ECMAScript syntax, std::regex); for "token", the token's text. */
    value: string;
    /** The token id, for type "token". */
    token?: number;
}

export interface ChatTemplateCaps {
    /** A Jinja template (false: a llama.cpp built-in, applied in legacy mode: no tools, no thinking switch). */
    jinja: boolean;
    tools: boolean;
    toolCalls: boolean;
    parallelToolCalls: boolean;
    systemRole: boolean;
    /** The template has an enable_thinking switch (common_chat_templates_support_enable_thinking). */
    thinking: boolean;
    /** Every capability common reports (supports_tools, supports_reasoning_effort, ...). */
    all: Record<string, boolean>;
}

export type ReasoningFormat = "none" | "auto" | "deepseek";

export interface ChatApplyInputs {
    /**
     * OpenAI chat messages: role, content (string | null | [{ type: "text", text }]), tool_calls
     * [{ id, type: "function", function: { name, arguments } }], tool_call_id, name, reasoning_content.
     */
    messages: unknown[];
    /** OpenAI tools: [{ type: "function", function: { name, description?, parameters? } }]. */
    tools?: unknown[];
    /** Default "auto". "required" needs tools. */
    toolChoice?: "auto" | "required" | "none";
    /** Default: the template's caps.parallelToolCalls. */
    parallelToolCalls?: boolean;
    /** A JSON schema the answer must follow (after the thinking, for reasoning templates); {} is any object. */
    jsonSchema?: object;
    /** A GBNF grammar of the user's (not with jsonSchema, nor with tools unless toolChoice is "none"). */
    grammar?: string;
    /** Default true. */
    addGenerationPrompt?: boolean;
    /** Continue the final assistant message instead of closing it: needs addGenerationPrompt false. */
    continueFinalMessage?: boolean;
    /** Default true. chatTemplateKwargs.enable_thinking, when given, decides instead. */
    enableThinking?: boolean;
    /** Extra template variables (reasoning_effort, enable_thinking, ...): each value passed as JSON. */
    chatTemplateKwargs?: Record<string, unknown>;
    /** How thinking is told apart in the parser common builds. Default "auto" (reasoning_content separated). */
    reasoningFormat?: ReasoningFormat;
    /**
     * The tokenizer adds BOS (EOS) to the prompt: the template's own is cut from the start (end) of the prompt, so
     * there is one. Default: the vocabulary's add_bos (add_eos) flag, as llama-server does.
     */
    addBos?: boolean;
    addEos?: boolean;
}

/** Opaque: what ChatParser.create needs. Sealed by the addon (a changed or forged spec is refused). */
export interface ChatParserSpec {
    readonly format: number;
    readonly parser: string;
    readonly generationPrompt: string;
    readonly tag: string;
}

export interface ChatApplyResult {
    prompt: string;
    /** common_chat_format_name: "Content-only", "peg-native", ... */
    format: string;
    /** Absent when there is none. */
    grammar?: string;
    grammarLazy: boolean;
    grammarTriggers: GrammarTrigger[];
    preservedTokens: string[];
    additionalStops: string[];
    /** What the template put after the last message to open the answer (the grammar's and parser's prefill). */
    generationPrompt: string;
    thinking: { supported: boolean; startTag: string; endTags: string[] };
    parser: ChatParserSpec;
}

export interface ChatParserOptions {
    /** Default "auto". */
    reasoningFormat?: ReasoningFormat;
    /** Default true. */
    parseToolCalls?: boolean;
    /** The prompt continued a final assistant message (continueFinalMessage): its prefill is not reported. */
    isContinuation?: boolean;
}

export interface ChatMessageDelta {
    content?: string;
    reasoningContent?: string;
    /** A call's id and name come in a delta of their own before any of its arguments, which then come in fragments. */
    toolCall?: { index: number; id?: string; name?: string; arguments?: string };
}

export interface ParsedChatMessage {
    content: string;
    reasoningContent: string;
    toolCalls: { id: string; name: string; arguments: string }[];
}

export interface DeviceInfo {
    index: number;
    name: string;
    description: string;
    type: "cpu" | "gpu" | "igpu" | "accel" | "other";
    backend: string;
    freeBytes: number;
    totalBytes: number;
}

/** The process heap as glibc's malloc keeps it (every thread's arena, and blocks mapped on their own). */
export interface HeapStats {
    /** Bytes allocated and not freed. */
    inUseBytes: number;
    /** Bytes malloc has taken from the system; heldBytes - inUseBytes is free memory it keeps. */
    heldBytes: number;
    /** Of those, bytes in blocks mapped on their own (large allocations). */
    mmapBytes: number;
}

export interface SystemInfo {
    llamaTag: string;
    /** A CUDA backend is in use: a CUDA source build, or a prebuild whose libggml-cuda.so loaded and found a GPU. */
    cuda: boolean;
    gpuOffload: boolean;
    maxDevices: number;
    /** The most sequence ids a context may have (llama_max_parallel_sequences()). */
    maxSeqIds: number;
    /** @deprecated The old name of `maxSeqIds`. */
    maxSequences: number;
    mmap: boolean;
    info: string;
    /** ggml's registered backends ("CPU", "CUDA", ...). */
    backends: string[];
    /** A prebuild: the backends are libraries loaded at run time from the addon's folder. */
    dynamicBackends: boolean;
    /** A prebuild: the backend libraries loaded (the CPU variant picked for this processor, libggml-cuda.so). */
    backendLibraries: string[];
    /** A prebuild: why a backend library beside the addon is not in use (a CUDA runtime or driver missing, no GPU). */
    backendErrors: string[];
}

/** Where the addon was loaded from (loadNative), and what was passed over on the way. */
export interface AddonLocation {
    /** The .node file. */
    path: string;
    /** BATCHWISE_ADDON; a source build in the package (build/Release); or a prebuilt package. */
    source: "env" | "build" | "package";
    /** The prebuilt package, e.g. "@batchwise/linux-x64". */
    packageName?: string;
    /** Candidates tried before this one, each with why it was passed over. */
    skipped: string[];
}

interface Candidate {
    path: string;
    source: AddonLocation["source"];
    packageName?: string;
}

/** The prebuilt packages for this platform: the CPU one (an optional dependency) and the CUDA one (installed by hand). */
export function platformPackages(): { cpu: string; cuda: string } {
    const base = `@batchwise/${process.platform}-${process.arch}`;
    return { cpu: base, cuda: `${base}-cuda` };
}

/** BATCHWISE_GPU: auto (default: the CUDA package when installed), cuda (it, or an error), cpu (the CPU package). */
function gpuChoice(): "auto" | "cuda" | "cpu" {
    const v = (process.env.BATCHWISE_GPU ?? "").trim().toLowerCase();
    if (v === "" || v === "auto") return "auto";
    if (["cuda", "1", "on", "true", "yes"].includes(v)) return "cuda";
    if (["cpu", "0", "off", "false", "no", "none"].includes(v)) return "cpu";
    throw new BatchwiseError(ErrorCode.InvalidArgument, `BATCHWISE_GPU is auto, cuda or cpu, not '${process.env.BATCHWISE_GPU}'`);
}

function ownVersion(): string {
    return (JSON.parse(readFileSync(join(packageRoot, "package.json"), "utf8")) as { version: string }).version;
}

/**
 * The addons that may be loaded, in order, with the reasons others were passed over: BATCHWISE_ADDON alone when it is
 * set; else a source build in this package (build/Release, as node-gyp-build finds it: built on purpose, so it comes
 * first); then the prebuilt packages: CUDA first unless BATCHWISE_GPU=cpu, then the CPU package.
 */
export function addonCandidates(): { candidates: Candidate[]; skipped: string[] } {
    const require = createRequire(import.meta.url);
    const override = process.env.BATCHWISE_ADDON;
    if (override) return { candidates: [{ path: override, source: "env" }], skipped: [] };
    const candidates: Candidate[] = [];
    const skipped: string[] = [];
    const gyp = require("node-gyp-build") as { path(dir: string): string };
    try {
        candidates.push({ path: gyp.path(packageRoot), source: "build" });
    } catch {
        // no source build: the usual case for an installed package
    }
    const gpu = gpuChoice();
    const { cpu, cuda } = platformPackages();
    const names = gpu === "cpu" ? [cpu, cuda] : [cuda, cpu];
    const version = ownVersion();
    for (const name of names) {
        let dir: string;
        try {
            dir = dirname(require.resolve(`${name}/package.json`));
        } catch {
            if (name === cpu) skipped.push(`${name}: not installed`);
            continue; // the CUDA package is installed by hand: its absence is no news
        }
        const v = (JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { version: string }).version;
        if (v !== version) {
            skipped.push(`${name}: version ${v}, batchwise is ${version} (the two must match)`);
            continue;
        }
        try {
            candidates.push({ path: gyp.path(dir), source: "package", packageName: name });
        } catch {
            skipped.push(`${name}: no binary in it for ${process.platform}-${process.arch}`);
        }
    }
    if (gpu === "cuda" && !candidates.some((c) => c.packageName === cuda || c.source !== "package")) {
        throw new BatchwiseError(
            ErrorCode.NativeNotBuilt,
            `BATCHWISE_GPU=cuda, but ${cuda} is not installed${skipped.length ? ` (${skipped.join("; ")})` : ""}: ` +
                `npm install ${cuda}@${version}`,
        );
    }
    return { candidates, skipped };
}

/**
 * Electron: a file inside app.asar that was unpacked (asarUnpack) lives at the same path under app.asar.unpacked,
 * which is where native code (the addon, llama.cpp opening a GGUF) must read it. Other paths come back as they are.
 */
export function asarUnpacked(path: string): string {
    const m = /\.asar([\\/])/.exec(path);
    if (!m) return path;
    const unpacked = path.slice(0, m.index) + ".asar.unpacked" + path.slice(m.index + 5);
    return existsSync(unpacked) ? unpacked : path;
}

/** The folder of the @batchwise/vocab package (the vocab-only GGUFs the demo and make-model use), or null. */
export function vocabPackageDir(): string | null {
    try {
        return asarUnpacked(dirname(createRequire(import.meta.url).resolve("@batchwise/vocab/package.json")));
    } catch {
        return null;
    }
}

let addon: NativeAddon | undefined;
let location: AddonLocation | undefined;

/** Where the loaded addon came from; undefined before loadNative. */
export function addonLocation(): AddonLocation | undefined {
    return location;
}

function firstLine(e: unknown): string {
    return String((e as Error)?.message ?? e).split("\n")[0];
}

/**
 * The addon, loaded once. Throws ERR_NATIVE_NOT_BUILT with the fix when none loads. A prebuild whose CUDA backend
 * cannot run here (no driver, no CUDA runtime, no GPU) runs on the CPU with a warning, unless BATCHWISE_GPU=cuda.
 */
export function loadNative(): NativeAddon {
    if (addon) return addon;
    const require = createRequire(import.meta.url);
    const { candidates, skipped } = addonCandidates();
    const failed: string[] = [];
    for (const c of candidates) {
        let loaded: NativeAddon;
        try {
            loaded = require(c.path) as NativeAddon;
        } catch (e) {
            failed.push(`${c.packageName ?? c.path}: ${firstLine(e)}`);
            skipped.push(failed[failed.length - 1]);
            continue;
        }
        checkBackends(loaded, c, failed);
        addon = loaded;
        location = { ...c, skipped };
        return addon;
    }
    const { cpu } = platformPackages();
    throw new BatchwiseError(
        ErrorCode.NativeNotBuilt,
        `the batchwise native addon could not be loaded (${skipped.length ? skipped.join("; ") : "no source build, no prebuilt package"}). ` +
            `Install the prebuilt package (npm install ${cpu}), or build from source: ` +
            "BATCHWISE_BUILD_FROM_SOURCE=1 npm rebuild batchwise (in a checkout: npm run build:native; BATCHWISE_CUDA=1 for CUDA)",
    );
}

// A prebuild loads its backends from its folder: none for the CPU is fatal; a CUDA backend that ships but does not
// run here is a warning (the CPU takes over), or an error when BATCHWISE_GPU=cuda asked for it.
function checkBackends(loaded: NativeAddon, c: Candidate, failed: string[]): void {
    const gpu = gpuChoice();
    const info = loaded.systemInfo();
    const where = c.packageName ?? c.path;
    const cudaErrors = info.backendErrors.filter((e) => e.startsWith("libggml-cuda"));
    // whatever was loaded (a source build, a package, BATCHWISE_ADDON), BATCHWISE_GPU=cuda means a CUDA device
    if (gpu === "cuda" && !info.cuda) {
        const why = cudaErrors.length > 0 ? `CUDA is not usable here (${cudaErrors.join("; ")})` : failed.length > 0 ? `the CUDA build did not load (${failed.join("; ")})` :
            "it has no CUDA backend, or no CUDA device is visible";
        throw new BatchwiseError(ErrorCode.NativeNotBuilt, `BATCHWISE_GPU=cuda, but ${where}: ${why}; see docs/building.md for the CUDA runtime it needs`);
    }
    if (failed.length > 0) {
        process.emitWarning(`${failed.join("; ")}: using ${c.packageName ?? c.path} instead`, {
            code: failed.some((f) => f.startsWith(platformPackages().cuda)) ? "BATCHWISE_CUDA_UNAVAILABLE" : "BATCHWISE_ADDON_FALLBACK",
        });
    }
    if (!info.dynamicBackends) return;
    if (!info.backends.includes("CPU")) {
        throw new BatchwiseError(ErrorCode.NativeNotBuilt, `${where}: ${info.backendErrors.join("; ") || "no CPU backend loaded"}`);
    }
    if (cudaErrors.length > 0 && !info.cuda) {
        const why = `${where}: CUDA is not usable here (${cudaErrors.join("; ")})`;
        const quiet = gpu === "auto" && c.packageName === platformPackages().cuda ? " Set BATCHWISE_GPU=cpu to use the CPU package quietly;" : "";
        process.emitWarning(`${why}: running on the CPU.${quiet} docs/building.md says what CUDA needs.`, { code: "BATCHWISE_CUDA_UNAVAILABLE" });
    }
}
