// Engine options to settings, once and forward: the options are checked and defaulted before anything is
// loaded, the context is made from them (the paged KV cache where llama.cpp can page this model, else the
// unified pool), and the settings in force follow from the options, the model and the context made.
import {
    BatchwiseError, ErrorCode, systemInfo,
    type ContextOptions, type LlamaContext, type LlamaModel, type ModelLoadOptions,
} from "../binding/index.js";
import type { PreemptionMode } from "../scheduler/scheduler.js";
import { defined } from "./request.js";
import type { EngineOptions, EngineSettings } from "./types.js";

/** What the options say before a model is loaded: everything checked, defaults applied where they do not depend on the model. */
export interface ResolvedOptions {
    model: string;
    load: ModelLoadOptions;
    maxRunning: number;
    /** Unified pool: ids kept for ended prefixes (the paged cache needs none). */
    cacheSeqIds: number;
    batchTokens: number;
    ubatchSize: number;
    prefillChunk: number;
    longPrefills: number;
    /** The block size asked for, or undefined for the layout's default. */
    blockSize: number | undefined;
    /** Paged KV wanted, and whether the caller asked for it explicitly (then there is no fallback). */
    pagedKv: boolean;
    pagedKvExplicit: boolean;
    prefixCache: boolean;
    preemption: PreemptionMode;
    swapSpaceBytes: number;
    watermark: number;
    maxQueued: number;
    maxPromptLength: number | undefined;
    trimHeapMs: number;
    contextSize: number | undefined;
    context: Pick<ContextOptions, "flashAttention" | "kvCacheTypeK" | "kvCacheTypeV" | "threads" | "threadsBatch">;
}

const DEFAULT_BLOCK = { paged: 128, unified: 16 } as const;

function optionError(name: string, reason: string): BatchwiseError {
    return new BatchwiseError(ErrorCode.InvalidArgument, `option '${name}' ${reason}`, { field: name, reason });
}

/** The sequence ids llama.cpp has (reported by the addon, 256 in v0.5.0). */
function maxSeqIds(): number {
    return systemInfo().maxSeqIds;
}

/** Checks the options and applies the defaults that do not need the model. */
export function resolveOptions(options: EngineOptions): ResolvedOptions {
    if (options === null || typeof options !== "object" || typeof options.model !== "string") {
        throw new BatchwiseError(ErrorCode.InvalidArgument, "Engine.load needs { model: path to a GGUF file }", { field: "model", reason: "must be the path of a GGUF file" });
    }
    const o = options as EngineOptions & Record<string, unknown>;
    const int = (k: string, def: number | undefined, min: number, max = Number.MAX_SAFE_INTEGER, value = o[k]): number | undefined => {
        const v = value ?? def;
        if (v === undefined) return undefined;
        if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) throw optionError(k, `must be an integer from ${min} to ${max} (got ${String(v)})`);
        return v;
    };
    const alias = (name: string, old: string): unknown => {
        if (o[name] !== undefined && o[old] !== undefined && o[name] !== o[old]) throw optionError(name, `and its old name '${old}' disagree`);
        return o[name] ?? o[old];
    };
    const ids = maxSeqIds();
    const maxRunning = int("maxRunning", 64, 1, ids - 1, alias("maxRunning", "maxSequences"))!;
    const prefixCache = o.prefixCache ?? true;
    if (typeof prefixCache !== "boolean") throw optionError("prefixCache", "must be a boolean");
    const batchTokens = int("batchTokens", 2048, maxRunning)!;
    // a context holds at most as many sequence ids as its batch has rows (llama.cpp sizes its outputs by them)
    const spareIds = Math.min(ids, batchTokens) - maxRunning;
    const cacheSeqIds = prefixCache ? int("cacheSeqIds", Math.min(maxRunning, spareIds), 0, spareIds, alias("cacheSeqIds", "cacheSlots"))! : 0;
    const ubatchSize = int("ubatchSize", Math.min(512, batchTokens), 1, batchTokens)!;
    const prefillChunk = int("prefillChunk", ubatchSize, 1, batchTokens)!;
    const longPrefills = int("longPrefills", 1, 1)!;
    const maxQueued = int("maxQueued", 1024, 1)!;
    const maxPromptLength = int("maxPromptLength", undefined, 1);
    const trimHeapMs = int("trimHeapMs", 10_000, 0)!;
    const contextSize = int("contextSize", undefined, 0) || undefined;
    const blockSize = int("blockSize", undefined, 1, 4096);
    const fa = o.flashAttention;
    const faOff = fa === false || fa === "off";
    if (o.pagedKv !== undefined && typeof o.pagedKv !== "boolean") throw optionError("pagedKv", "must be a boolean");
    if (o.pagedKv === true && faOff) throw optionError("pagedKv", "needs flash attention (flashAttention is off)");
    const pagedKv = o.pagedKv ?? !faOff;
    if (pagedKv && blockSize !== undefined && (blockSize & (blockSize - 1)) !== 0) {
        throw optionError("blockSize", `must be a power of two with the paged KV cache (got ${blockSize})`);
    }
    const preemption = o.preemption ?? "recompute";
    if (preemption !== "recompute" && preemption !== "swap") throw optionError("preemption", "must be 'recompute' or 'swap'");
    const watermark = o.watermark ?? 0.01;
    if (typeof watermark !== "number" || !(watermark >= 0 && watermark < 1)) throw optionError("watermark", "must be in [0, 1)");
    if (o.chatTemplate !== undefined && (typeof o.chatTemplate !== "string" || o.chatTemplate.length === 0)) {
        throw optionError("chatTemplate", "must be a non-empty string (a Jinja template or a built-in name such as 'chatml')");
    }
    const swapSpaceBytes = o.swapSpaceBytes ?? 4 * 2 ** 30;
    if (typeof swapSpaceBytes !== "number" || !(swapSpaceBytes >= 0)) throw optionError("swapSpaceBytes", "must be a number >= 0");
    return {
        model: options.model,
        load: defined({
            gpuLayers: o.gpuLayers, splitMode: o.splitMode, tensorSplit: o.tensorSplit, mainGpu: o.mainGpu, useMmap: o.useMmap, onProgress: o.onProgress,
        }),
        maxRunning, cacheSeqIds, batchTokens, ubatchSize, prefillChunk, longPrefills, blockSize, pagedKv, pagedKvExplicit: o.pagedKv === true,
        prefixCache, preemption, swapSpaceBytes, watermark, maxQueued, maxPromptLength, trimHeapMs, contextSize,
        context: defined({ flashAttention: fa, kvCacheTypeK: o.kvCacheTypeK, kvCacheTypeV: o.kvCacheTypeV, threads: o.threads, threadsBatch: o.threadsBatch }),
    };
}

/**
 * Sequence ids a context of this layout needs: every running sequence, plus, with the unified pool, the ids that
 * keep ended prefixes (the paged cache keeps them in its blocks, attached again by block table: no id holds them).
 */
function seqIdsFor(r: ResolvedOptions, paged: boolean): number {
    return paged ? r.maxRunning : r.maxRunning + r.cacheSeqIds;
}

/**
 * Makes the context: paged where wanted and llama.cpp can page this model on this device (else, unless
 * pagedKv was asked for explicitly, the unified pool), and returns it with the settings in force.
 */
export async function createEngineContext(model: LlamaModel, r: ResolvedOptions): Promise<{ context: LlamaContext; settings: EngineSettings }> {
    const trained = model.metadata.trainedContext;
    const contextSize = r.contextSize ?? trained;
    const make = async (paged: boolean) => {
        const blockSize = r.blockSize ?? (paged ? DEFAULT_BLOCK.paged : DEFAULT_BLOCK.unified);
        if (contextSize < blockSize) throw optionError("contextSize", `(${contextSize}) must hold at least one block (${blockSize} tokens)`);
        const options: ContextOptions = {
            ...r.context, contextSize, seqIds: seqIdsFor(r, paged), batchSize: r.batchTokens, ubatchSize: r.ubatchSize, kvUnified: true,
            kvBlockSize: paged ? blockSize : 0,
        };
        return { context: await model.createContext(options), blockSize };
    };
    let paged = r.pagedKv;
    let made: { context: LlamaContext; blockSize: number };
    try {
        made = await make(paged);
    } catch (e) {
        // llama.cpp refused to page: a memory that cannot be paged (sliding-window, recurrent), flash attention that
        // resolved to off, or a device without paged attention for this model (on CUDA: head sizes 64-256, f16 K/V,
        // blocks of 128 or more). Without an explicit pagedKv, the unified pool serves instead
        if (!paged || r.pagedKvExplicit || !pagedRefused(e)) throw e;
        paged = false;
        made = await make(false);
    }
    const { context, blockSize } = made;
    const numBlocks = Math.floor(context.info.contextSize / blockSize);
    const pool = numBlocks * blockSize;
    const maxContext = Math.min(pool, trained > 0 ? trained : pool);
    const settings: EngineSettings = {
        maxRunning: r.maxRunning, seqIds: seqIdsFor(r, paged), cacheSeqIds: paged ? 0 : r.cacheSeqIds, numBlocks, blockSize, maxContext,
        batchTokens: r.batchTokens, ubatchSize: r.ubatchSize, prefillChunk: r.prefillChunk, longPrefills: r.longPrefills,
        pagedKv: paged, prefixCache: r.prefixCache, preemption: r.preemption, swapSpaceBytes: r.swapSpaceBytes, watermark: r.watermark,
        maxQueued: r.maxQueued, maxPromptLength: r.maxPromptLength ?? 16 * maxContext, trimHeapMs: r.trimHeapMs,
    };
    return { context, settings };
}

/** Whether a context creation failed because llama.cpp cannot page this model here (by code, never by message). */
function pagedRefused(e: unknown): boolean {
    return e instanceof BatchwiseError && e.code === ErrorCode.PagedKvUnsupported;
}
