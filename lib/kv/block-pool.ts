// The engine's KV accounting: a pool of fixed-size blocks, ref-counted, with an index of full blocks
// by content hash (the prefix cache). A block whose last reference is released stays cached (its hash
// stays findable) until an allocation needs it; free blocks are reused least-recently-released first.
//
// This module knows nothing of llama.cpp: it decides which blocks a sequence holds. Mapping blocks to
// KV cells is the job of one other module, so that a later native paged cache can place tokens in
// these blocks directly.
import { createHash } from "node:crypto";

export interface KvBlock {
    readonly id: number;
    /** Sequences (and in-flight lookups) holding this block. 0: free, possibly still cached. */
    refCount: number;
    /** Content hash of a full block (its tokens, its prefix, the cache salt); null until full or after eviction. */
    hash: string | null;
}

export interface BlockPoolStats {
    numBlocks: number;
    blockSize: number;
    /** Blocks held by at least one sequence. */
    used: number;
    /** Blocks that can be allocated (some still cached). */
    free: number;
    /** Free blocks whose contents are still findable by hash. */
    cachedFree: number;
    /** Prefix lookups: blocks asked for and blocks found. */
    queries: number;
    hits: number;
    evictions: number;
}

export class BlockPool {
    private readonly blocks: KvBlock[];
    /** Free blocks in release order: the first entry is reused first. */
    private readonly free = new Map<number, KvBlock>();
    private readonly byHash = new Map<string, KvBlock>();
    private queries = 0;
    private hits = 0;
    private evictions = 0;

    /**
     * `onEvict` is called for each cached block that allocate() takes for new contents, after its hash
     * is dropped and before allocate() returns: the KV mapping frees the block's old cells there.
     */
    constructor(readonly numBlocks: number, readonly blockSize: number, private readonly onEvict?: (block: KvBlock, hash: string) => void) {
        if (!Number.isInteger(numBlocks) || numBlocks < 1) throw new RangeError("numBlocks must be a positive integer");
        if (!Number.isInteger(blockSize) || blockSize < 1) throw new RangeError("blockSize must be a positive integer");
        this.blocks = Array.from({ length: numBlocks }, (_, id) => ({ id, refCount: 0, hash: null }));
        for (const b of this.blocks) this.free.set(b.id, b);
    }

    /** Every block, by id. */
    get all(): readonly KvBlock[] {
        return this.blocks;
    }

    get numFree(): number {
        return this.free.size;
    }

    /**
     * Cached blocks matching `hashes` from the start (at most `limit`), for planning: counts nothing, changes
     * nothing. `free` is how many of them are free now (taking them takes them off the free list).
     */
    peek(hashes: readonly string[], limit: number): { blocks: number; free: number; last: KvBlock | null } {
        const hit = this.match(hashes, limit, false);
        let free = 0;
        for (const b of hit) if (b.refCount === 0) free++;
        return { blocks: hit.length, free, last: hit.length > 0 ? hit[hit.length - 1] : null };
    }

    /** Blocks needed to hold `tokens` tokens. */
    blocksFor(tokens: number): number {
        return Math.ceil(tokens / this.blockSize);
    }

    /** Takes `n` free blocks (evicting cached contents), each with one reference; null if fewer are free. */
    allocate(n: number): KvBlock[] | null {
        if (n > this.free.size) return null;
        const out: KvBlock[] = [];
        for (const b of this.free.values()) {
            if (out.length === n) break;
            out.push(b);
        }
        for (const b of out) {
            this.free.delete(b.id);
            b.refCount = 1;
            if (b.hash !== null) {
                const h = b.hash;
                this.byHash.delete(h);
                b.hash = null;
                this.evictions++;
                this.onEvict?.(b, h);
            }
        }
        return out;
    }

    /**
     * The longest run of cached blocks matching `hashes` from the start, at most `limit` of them (a
     * request must still compute its last token, so it cannot use a hit on its final block), without
     * taking references. Counts the blocks looked up and the blocks returned toward the hit rate.
     */
    match(hashes: readonly string[], limit = hashes.length, count = true): KvBlock[] {
        const n = Math.min(limit, hashes.length);
        const out: KvBlock[] = [];
        for (let i = 0; i < n; i++) {
            const b = this.byHash.get(hashes[i]);
            if (!b) break;
            out.push(b);
        }
        if (count) {
            this.queries += n;
            this.hits += out.length;
        }
        return out;
    }

    /** Whether `block` is the indexed holder of its content (a committed, findable block). */
    isIndexed(block: KvBlock): boolean {
        return block.hash !== null && this.byHash.get(block.hash) === block;
    }

    /** Adds a reference to blocks found by match(): a free cached block leaves the free list. */
    acquire(blocks: readonly KvBlock[]): void {
        for (const b of blocks) {
            if (b.refCount === 0) this.free.delete(b.id);
            b.refCount++;
        }
    }

    /**
     * Drops one reference from each block. Blocks are released last-first, so that when a sequence ends
     * its tail blocks are reused before its prefix, which other requests are likelier to share.
     */
    release(blocks: readonly KvBlock[]): void {
        for (let i = blocks.length - 1; i >= 0; i--) {
            const b = blocks[i];
            if (b.refCount <= 0) throw new Error(`KV block ${b.id} released more often than acquired`);
            b.refCount--;
            if (b.refCount === 0) this.free.set(b.id, b);
        }
    }

    /** Records the content hash of a block that just became full. Returns false if another block already holds that content. */
    commit(block: KvBlock, hash: string): boolean {
        if (block.hash !== null) return block.hash === hash;
        if (this.byHash.has(hash)) return false;
        block.hash = hash;
        this.byHash.set(hash, block);
        return true;
    }

    /** Makes one free block unfindable (its contents are gone); it stays free. */
    forget(block: KvBlock): void {
        if (block.refCount !== 0) throw new Error(`KV block ${block.id} is held (refCount ${block.refCount}) and cannot be forgotten`);
        if (block.hash !== null) {
            this.byHash.delete(block.hash);
            block.hash = null;
        }
    }

    /** Forgets every cached block that no sequence holds (a reset of the prefix cache). */
    dropCache(): void {
        for (const b of this.free.values()) {
            if (b.hash !== null) {
                this.byHash.delete(b.hash);
                b.hash = null;
            }
        }
    }

    stats(): BlockPoolStats {
        let cachedFree = 0;
        for (const b of this.free.values()) if (b.hash !== null) cachedFree++;
        return {
            numBlocks: this.numBlocks, blockSize: this.blockSize, used: this.numBlocks - this.free.size,
            free: this.free.size, cachedFree, queries: this.queries, hits: this.hits, evictions: this.evictions,
        };
    }

    /** Checks the pool's internal consistency; throws on the first violation (for tests and debug builds). */
    checkInvariants(): void {
        for (const b of this.blocks) {
            if (b.refCount < 0) throw new Error(`block ${b.id}: negative refCount`);
            if ((b.refCount === 0) !== this.free.has(b.id)) throw new Error(`block ${b.id}: refCount ${b.refCount} but free=${this.free.has(b.id)}`);
            if (b.hash !== null && this.byHash.get(b.hash) !== b) throw new Error(`block ${b.id}: hash not indexed`);
        }
        for (const [h, b] of this.byHash) {
            if (b.hash !== h) throw new Error(`hash index points at block ${b.id} holding another hash`);
        }
    }
}

/**
 * Content hashes of the full blocks of `tokens`: each covers its block's tokens, every token before it
 * (through the previous hash) and `salt`, so equal hashes mean equal prefixes of the same tenant.
 * `from` holds hashes already computed for the same tokens; only the first `length` tokens count.
 */
export function blockHashes(tokens: ArrayLike<number>, blockSize: number, salt = "", from: readonly string[] = [], length = tokens.length): string[] {
    const out = from.slice();
    const full = Math.floor(Math.min(length, tokens.length) / blockSize);
    const buf = new Int32Array(blockSize);
    for (let i = out.length; i < full; i++) {
        for (let j = 0; j < blockSize; j++) buf[j] = tokens[i * blockSize + j];
        const h = createHash("sha256");
        h.update(i === 0 ? `salt:${salt}` : out[i - 1]);
        h.update(new Uint8Array(buf.buffer));
        out.push(h.digest("base64"));
    }
    return out;
}
