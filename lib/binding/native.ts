// Loads the compiled addon (prebuilds/ or build/Release via node-gyp-build) and types its raw surface.
// Nothing outside lib/binding imports this file: use the classes of lib/binding/index.ts.
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
    checkGrammar(grammar: string, root?: string): void;
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
    clear(): void;
    saveSequence(seqId: number): Promise<Buffer>;
    restoreSequence(seqId: number, state: Uint8Array): Promise<number>;
    dispose(): void;
    readonly disposed: boolean;
}

export interface NativeAddon {
    Model: { load(path: string, options: object, onProgress?: (p: number) => void): Promise<NativeModel> };
    Context: { create(model: NativeModel, options: object): Promise<NativeContext> };
    getDevices(): DeviceInfo[];
    systemInfo(): SystemInfo;
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
    /** Tokens the sequence already generated, fed to the chain (grammar state, penalty window) as if sampled. */
    history?: Int32Array;
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

export interface SystemInfo {
    llamaTag: string;
    cuda: boolean;
    gpuOffload: boolean;
    maxDevices: number;
    /** The most sequence ids a context may have (llama_max_parallel_sequences()). */
    maxSeqIds: number;
    /** @deprecated The old name of `maxSeqIds`. */
    maxSequences: number;
    mmap: boolean;
    info: string;
}

let addon: NativeAddon | undefined;

/** The addon, loaded once. Throws ERR_NATIVE_NOT_BUILT with the fix when it is missing. */
export function loadNative(): NativeAddon {
    if (addon) return addon;
    const require = createRequire(import.meta.url);
    const override = process.env.BATCHWISE_ADDON;
    try {
        addon = (override ? require(override) : require("node-gyp-build")(packageRoot)) as NativeAddon;
    } catch (e) {
        throw new BatchwiseError(
            ErrorCode.NativeNotBuilt,
            `the batchwise native addon could not be loaded (${(e as Error).message.split("\n")[0]}); ` +
                "build it with `npm run build:native` (BATCHWISE_CUDA=1 for CUDA)",
            { cause: e },
        );
    }
    return addon;
}
