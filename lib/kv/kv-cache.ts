// The block-to-KV-cell mapping: the one place that turns the engine's block accounting (BlockPool) into
// llama.cpp sequence operations. Everything else in the engine speaks in blocks and sequence ids. It
// comes in two layouts, one per kind of llama.cpp context:
//
// - the unified pool (unified-kv-cache.ts): llama.cpp places tokens in cells itself. Blocks are
//   accounting; cells are shared through sequence ids (seqCopy), so an ended sequence's cached prefix is
//   kept on a spare ("parked") sequence id, and the prefix cache is bounded by the context's cacheSeqIds.
// - the paged cache (paged-kv-cache.ts, a context with kvBlockSize == blockSize): block b is cells
//   [b*blockSize, (b+1)*blockSize), a running sequence's block table is where llama.cpp writes its tokens
//   and all its attention reads. The tables own the cells: a sequence id is used only while its sequence
//   runs, and a cached prefix (blocks no one holds, findable by hash) is given to a new sequence by making
//   its table start with those blocks and claiming them (claimBlocks). The prefix cache is bounded only by
//   the blocks, and the context needs only maxRunning sequence ids.
//
// Both are driven by the scheduler, only while no decode runs, through the KvCache interface below.
import type { BlockPool, BlockPoolStats, KvBlock } from "./block-pool.js";
import { PagedKvCache } from "./paged-kv-cache.js";
import { UnifiedKvCache } from "./unified-kv-cache.js";

/** The sequence operations of the KV memory (LlamaContext has them). Called only while no decode runs. */
export interface KvOps {
    seqRemove(seqId: number, p0?: number, p1?: number): boolean;
    /** Unified pool only: shares src's cells in [p0, p1) with dst. */
    seqCopy(src: number, dst: number, p0?: number, p1?: number): void;
    /** Paged cache only: the sequence id's blocks in position order. */
    setBlockTable?(seqId: number, blocks: Int32Array): void;
    /**
     * Paged cache only (llama.cpp patch 0006): positions [0, tokens) of the sequence's current block table become
     * its cells (after setBlockTable). The cells hold those positions' K/V already (a cached or shared prefix);
     * a cell other sequences hold at the same position is shared.
     */
    claimBlocks?(seqId: number, tokens: number): void;
}

/**
 * What a sequence id holds. free: nothing. active: a running sequence's blocks and cells. parked (unified pool
 * only): an ended sequence's committed prefix, kept for the prefix cache. saving: a sequence preempted by swap
 * whose state is being saved: its blocks are back in the pool, but its id and cells stay until releaseSaved()
 * (nothing writes the blocks before the next decode).
 */
export type IdState = "free" | "active" | "parked" | "saving";

export interface KvCacheStats extends BlockPoolStats {
    seqIds: number;
    activeSeqIds: number;
    /** Unified pool: sequence ids keeping an ended sequence's prefix. Always 0 in the paged cache. */
    parkedSeqIds: number;
}

/** A prefix lookup for planning: cached blocks matching from the start, how many of them are free now, and the last one. */
export interface PrefixPeek {
    blocks: number;
    free: number;
    last: KvBlock | null;
}

export interface KvCache {
    readonly pool: BlockPool;
    readonly blockSize: number;
    readonly numSeqIds: number;
    /** Blocks that can be allocated now (cached contents are evicted as needed). */
    readonly freeBlocks: number;
    /**
     * Whether sequences can share cells (prefix hits, forks of n > 1 choices). Only a paged context can say
     * no, by refusing a claim with ERR_PAGED_KV_UNSUPPORTED (a model whose cells keep data a claim cannot
     * restore: M-RoPE positions, per-layer token embeddings); it stays false from then on.
     */
    readonly sharing: boolean;
    /**
     * An id for a new sequence, null if none can be had. The unified pool may drop a parked prefix for it,
     * passing over those that hold `keep` (the prefix the caller is about to use) while others exist.
     */
    acquireSeqId(keep?: KvBlock | null): number | null;
    /** Blocks held by a sequence id (an active one's table; a parked or saving one's committed prefix). */
    blocksOf(seqId: number): readonly KvBlock[];
    /** Cached blocks matching `hashes` from the start (at most `limit`), for planning: counts nothing, changes nothing. */
    peek(hashes: readonly string[], limit: number): PrefixPeek;
    /**
     * Gives an empty active sequence id the cached prefix matching `hashes` (at most `limit` blocks): takes
     * references and makes their cells its own. Counts toward the hit rate. Returns the number of blocks attached
     * (0 also when the context refused to share: `sharing` is then false).
     */
    attachPrefix(seqId: number, hashes: readonly string[], limit: number): number;
    /**
     * Gives an empty active sequence id the first `blocks` blocks of another active one (n > 1 choices share their
     * prompt). False, with nothing attached, if the context refused to share (`sharing` is then false).
     */
    fork(src: number, dst: number, blocks: number): boolean;
    /** Grows an active sequence id's table to cover `tokens` positions. False, with nothing changed, if too few blocks are free. */
    reserve(seqId: number, tokens: number): boolean;
    /**
     * Indexes the sequence id's first `count` blocks, which must be full and computed, by content hash
     * (hashes[i] for table[i]). Stops at the first block whose content another block already holds: the
     * later blocks stay private, which keeps every table's indexed blocks a prefix.
     */
    commit(seqId: number, hashes: readonly string[], count?: number): void;
    /** Ends an active sequence id's sequence: its cells are removed; with `keep` its committed blocks stay findable. */
    release(seqId: number, keep: boolean): void;
    /**
     * A sequence preempted by swap: its blocks go back to the pool now (the plan may hand them to others, who
     * write them only at the decode), its id and cells stay, unchanged, until its state is saved and
     * releaseSaved() is called.
     */
    suspend(seqId: number): void;
    /** A suspended sequence's state is saved (or failed to be): removes its cells and frees its id (`keep`: as release). */
    releaseSaved(seqId: number, keep: boolean): void;
    stateOf(seqId: number): IdState;
    /** Forgets every cached prefix no sequence holds (a reset of the prefix cache). */
    dropCache(): void;
    stats(): KvCacheStats;
    /** Throws on the first broken invariant (tests and debugging). */
    checkInvariants(): void;
}

/**
 * The mapping for a context: `paged` when it was created with kvBlockSize == blockSize. A paged context whose
 * ops cannot claim cells (an addon before llama.cpp patch 0006) keeps the unified bookkeeping and is sent the tables.
 */
export function createKvCache(ops: KvOps, numBlocks: number, blockSize: number, numSeqIds: number, paged: boolean): KvCache {
    if (paged && typeof ops.claimBlocks === "function") return new PagedKvCache(ops, numBlocks, blockSize, numSeqIds);
    return new UnifiedKvCache(ops, numBlocks, blockSize, numSeqIds, paged);
}
