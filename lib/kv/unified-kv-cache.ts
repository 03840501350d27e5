// The unified KV pool's mapping of blocks to cells (a context without kvBlockSize): llama.cpp places
// tokens in cells itself, and a cell can belong to several sequence ids at once (seqCopy shares cells,
// it copies no data). The mapping therefore works through sequence ids:
//   - every sequence id has a block table: table[i] accounts for positions [i*blockSize, (i+1)*blockSize) of
//     the cells that sequence id holds. Accounting is conservative: a partly filled block counts whole.
//   - an active sequence id (a running sequence) holds a reference on each of its blocks.
//   - when a sequence ends, its committed prefix stays in KV on a parked sequence id (one of the context's
//     cacheSeqIds), holding no references: its blocks are free in the pool but still findable by hash. When
//     the pool hands such a block to new contents (eviction), or a sequence id is needed, the parked
//     sequence id is truncated so the cells go too.
//   - a prefix hit copies the matched positions from any sequence id that holds the last matched block.
// Invariants (checkInvariants): every indexed block has at least one holder; in every table the
// indexed blocks form a prefix; all holders of a block hold the same blocks before it. The last one
// holds because a block is only committed when every block before it in its table is indexed, and a
// table only ever gets other blocks by copying a whole prefix.
//
// `tables`: a paged context whose addon cannot claim cells (before llama.cpp patch 0006) also runs on this
// bookkeeping, with each active table sent as the native block table whenever it grows, so that
// llama.cpp's cell metadata agrees with the tables through seqCopy and seqRemove. With claimBlocks the
// paged context has its own mapping (paged-kv-cache.ts).
import { BlockPool, type KvBlock } from "./block-pool.js";
import type { IdState, KvCache, KvCacheStats, KvOps, PrefixPeek } from "./kv-cache.js";

interface SeqTable {
    readonly id: number;
    state: IdState;
    table: KvBlock[];
    /** Leading table blocks that are indexed (committed) blocks. */
    committed: number;
}

export class UnifiedKvCache implements KvCache {
    readonly pool: BlockPool;
    readonly blockSize: number;
    private readonly ids: SeqTable[];
    private readonly freeIds: number[] = [];
    /** Parked sequence ids, least recently used first. */
    private readonly parked = new Map<number, SeqTable>();
    /** Sequence ids whose cells include the block, by block id. */
    private readonly holders = new Map<number, Set<SeqTable>>();
    /** The table index of each block in use, by block id (the same in every holder). */
    private readonly index = new Map<number, number>();

    /** `tables`: send each active table to a paged context that cannot claim cells (see above). */
    /** Cells are always shareable in the unified pool. */
    readonly sharing = true;

    constructor(private readonly ops: KvOps, numBlocks: number, blockSize: number, numSeqIds: number, private readonly tables = false) {
        if (!Number.isInteger(numSeqIds) || numSeqIds < 1) throw new RangeError("numSeqIds must be a positive integer");
        if (tables && !ops.setBlockTable) throw new TypeError("a paged KV cache needs setBlockTable");
        this.blockSize = blockSize;
        this.pool = new BlockPool(numBlocks, blockSize, (b) => this.evicted(b));
        this.ids = Array.from({ length: numSeqIds }, (_, id) => ({ id, state: "free" as IdState, table: [], committed: 0 }));
        for (let i = numSeqIds - 1; i >= 0; i--) this.freeIds.push(i);
    }

    get numSeqIds(): number {
        return this.ids.length;
    }

    /** Blocks that can be allocated now (cached contents are evicted as needed). */
    get freeBlocks(): number {
        return this.pool.numFree;
    }

    /**
     * An id for a new sequence: a free one, else the least recently used parked one (its cells are
     * dropped), passing over parked sequence ids that hold `keep` (the prefix the caller is about to use) while
     * others exist. Null if every sequence id is active.
     */
    acquireSeqId(keep: KvBlock | null = null): number | null {
        let id = this.freeIds.pop();
        if (id === undefined) {
            const holders = keep ? this.holders.get(keep.id) : undefined;
            let victim: SeqTable | undefined;
            for (const s of this.parked.values()) {
                if (!holders?.has(s)) {
                    victim = s;
                    break;
                }
            }
            victim ??= this.parked.values().next().value;
            if (!victim) return null;
            this.truncate(victim, 0);
            id = this.freeIds.pop()!;
        }
        this.ids[id].state = "active";
        return id;
    }

    /** Blocks held by a sequence id. */
    blocksOf(seqId: number): readonly KvBlock[] {
        return this.ids[seqId].table;
    }

    /**
     * Cached blocks matching `hashes` from the start (at most `limit`), for planning: counts nothing, changes
     * nothing. `free` is how many of them are free now (attaching them takes them off the free list).
     */
    peek(hashes: readonly string[], limit: number): PrefixPeek {
        return this.pool.peek(hashes, limit);
    }

    /**
     * Gives an empty active sequence id the cached prefix matching `hashes` (at most `limit` blocks): takes
     * references and shares the cells of a sequence id that holds them. Counts toward the hit rate. Returns the
     * number of blocks attached.
     */
    attachPrefix(seqId: number, hashes: readonly string[], limit: number): number {
        const s = this.active(seqId);
        if (s.table.length !== 0) throw new Error(`sequence id ${seqId} is not empty`);
        const hit = this.pool.match(hashes, limit);
        if (hit.length === 0) return 0;
        const last = hit[hit.length - 1];
        const source = this.holders.get(last.id)?.values().next().value;
        if (!source) throw new Error(`indexed KV block ${last.id} has no holder`);
        this.pool.acquire(hit);
        this.ops.seqCopy(source.id, seqId, 0, hit.length * this.blockSize);
        if (source.state === "parked") this.touch(source);
        for (const b of hit) this.hold(s, b);
        s.committed = hit.length;
        this.sendTable(s);
        return hit.length;
    }

    /** Gives an empty active sequence id the first `blocks` blocks of another active sequence id (n > 1 choices share their prompt). */
    fork(src: number, dst: number, blocks: number): boolean {
        const from = this.active(src), to = this.active(dst);
        if (to.table.length !== 0) throw new Error(`sequence id ${dst} is not empty`);
        if (blocks > from.table.length) throw new Error(`sequence id ${src} holds ${from.table.length} blocks, not ${blocks}`);
        if (blocks === 0) return true;
        const shared = from.table.slice(0, blocks);
        this.pool.acquire(shared);
        this.ops.seqCopy(src, dst, 0, blocks * this.blockSize);
        for (const b of shared) this.hold(to, b);
        to.committed = Math.min(from.committed, blocks);
        this.sendTable(to);
        return true;
    }

    /** Grows an active sequence id's table to cover `tokens` positions. False, with nothing changed, if too few blocks are free. */
    reserve(seqId: number, tokens: number): boolean {
        const s = this.active(seqId);
        const need = this.pool.blocksFor(tokens) - s.table.length;
        if (need <= 0) return true;
        const got = this.pool.allocate(need);
        if (!got) return false;
        for (const b of got) this.hold(s, b);
        this.sendTable(s);
        return true;
    }

    /**
     * Indexes the sequence id's first `count` blocks, which must be full and computed, by content hash (hashes[i]
     * for table[i]): a block indexed before its KV is written would be copied half-empty. Stops at the first
     * block whose content another block already holds: the sequence id's later blocks stay private, which keeps
     * every table's indexed blocks a prefix.
     */
    commit(seqId: number, hashes: readonly string[], count = hashes.length): void {
        const s = this.active(seqId);
        const n = Math.min(count, hashes.length, s.table.length);
        // pool.commit() also accepts a block already indexed under this hash (shared from another sequence id)
        while (s.committed < n && this.pool.commit(s.table[s.committed], hashes[s.committed])) s.committed++;
    }

    /**
     * A sequence preempted by swap: its blocks go back to the pool now (this plan may hand them to others, who
     * write them only at the decode), its id and cells stay, unchanged, until its state is saved and
     * releaseSaved() is called. Its indexed prefix may still be shared with others meanwhile.
     */
    suspend(seqId: number): void {
        const s = this.active(seqId);
        let k = 0;
        while (k < s.table.length && this.pool.isIndexed(s.table[k])) k++;
        this.pool.release(s.table);
        s.state = "saving";
        this.truncate(s, k); // accounting only: the cells are removed by releaseSaved()
    }

    /** A suspended sequence's state is saved (or not): removes its cells, keeping its committed prefix parked with `keep`. */
    releaseSaved(seqId: number, keep: boolean): void {
        const s = this.ids[seqId];
        if (!s || s.state !== "saving") throw new Error(`KV sequence id ${seqId} is not being saved`);
        const k = keep ? s.table.length : 0; // the table holds only its indexed prefix (suspend() cut the rest)
        this.ops.seqRemove(s.id, k * this.blockSize, -1);
        this.truncate(s, k);
        if (k > 0) {
            s.state = "parked";
            this.parked.set(s.id, s);
        } else {
            s.state = "free";
            this.freeIds.push(s.id);
        }
    }

    /** What a sequence id holds now (tests and invariants). */
    stateOf(seqId: number): IdState {
        return this.ids[seqId].state;
    }

    /**
     * Ends a sequence id's sequence. With `keep`, its committed prefix stays in KV on the parked sequence id, findable
     * until evicted; everything else is removed and its blocks freed.
     */
    release(seqId: number, keep: boolean): void {
        const s = this.active(seqId);
        let k = 0;
        if (keep) while (k < s.table.length && this.pool.isIndexed(s.table[k])) k++;
        this.pool.release(s.table);
        this.truncate(s, k);
        if (k > 0) {
            s.state = "parked";
            this.parked.set(s.id, s);
        }
    }

    /** Drops every parked prefix (a reset of the prefix cache). */
    dropCache(): void {
        for (const s of [...this.parked.values()]) this.truncate(s, 0);
        for (const s of this.ids) if (s.state === "saving") this.truncate(s, 0); // its cells go at releaseSaved()
        this.pool.dropCache();
    }

    stats(): KvCacheStats {
        let active = 0;
        for (const s of this.ids) if (s.state === "active") active++;
        return { ...this.pool.stats(), seqIds: this.ids.length, activeSeqIds: active, parkedSeqIds: this.parked.size };
    }

    /** Throws on the first broken invariant (tests and debugging). */
    checkInvariants(): void {
        this.pool.checkInvariants();
        const refs = new Map<number, number>();
        const seen = new Map<number, Set<SeqTable>>();
        for (const s of this.ids) {
            if (s.state === "free" && s.table.length !== 0) throw new Error(`free sequence id ${s.id} holds blocks`);
            if (s.state === "parked" && (s.table.length === 0 || !this.parked.has(s.id))) throw new Error(`parked sequence id ${s.id} is not tracked`);
            if (s.state !== "parked" && this.parked.has(s.id)) throw new Error(`sequence id ${s.id} is ${s.state} but listed as parked`);
            let leading = 0;
            while (leading < s.table.length && this.pool.isIndexed(s.table[leading])) leading++;
            if (s.committed > leading) throw new Error(`sequence id ${s.id}: committed ${s.committed} but only ${leading} leading blocks are indexed`);
            s.table.forEach((b, i) => {
                if (this.index.get(b.id) !== i) throw new Error(`block ${b.id} at index ${i} of sequence id ${s.id} is indexed as ${this.index.get(b.id)}`);
                if (i >= leading && this.pool.isIndexed(b)) throw new Error(`sequence id ${s.id}: indexed block ${b.id} at ${i} after an unindexed one`);
                if ((s.state === "parked" || s.state === "saving") && i >= leading) throw new Error(`${s.state} sequence id ${s.id} holds uncommitted block ${b.id}`);
                if (s.state === "active") refs.set(b.id, (refs.get(b.id) ?? 0) + 1);
                let h = seen.get(b.id);
                if (!h) seen.set(b.id, (h = new Set()));
                h.add(s);
            });
        }
        for (const s of this.parked.values()) {
            if (s.state !== "parked") throw new Error(`sequence id ${s.id} in the parked list is ${s.state}`);
        }
        const freeCount = this.ids.filter((s) => s.state === "free").length;
        if (freeCount !== this.freeIds.length || new Set(this.freeIds).size !== freeCount) throw new Error("free sequence id list is inconsistent");
        for (const b of this.pool.all) {
            const want = refs.get(b.id) ?? 0;
            if (b.refCount !== want) throw new Error(`block ${b.id}: refCount ${b.refCount}, held by ${want} active sequence ids`);
            if (this.pool.isIndexed(b) && !seen.has(b.id)) throw new Error(`indexed block ${b.id} has no holder: its cells are gone`);
        }
        for (const [id, h] of this.holders) {
            const s = seen.get(id);
            if (!s || s.size !== h.size || [...h].some((x) => !s.has(x))) throw new Error(`block ${id}: holder set out of date`);
        }
        for (const [id] of seen) if (!this.holders.has(id)) throw new Error(`block ${id} is in a table but has no holder set`);
        // all holders of a block hold the same blocks before it (what makes copying from any holder right)
        for (const [id, h] of this.holders) {
            const i = this.index.get(id)!;
            const [first, ...rest] = [...h];
            for (const other of rest) {
                for (let j = 0; j < i; j++) {
                    if (first.table[j] !== other.table[j]) throw new Error(`sequence ids ${first.id} and ${other.id} share block ${id} but not block ${j} before it`);
                }
            }
        }
    }

    // ---- internals ------------------------------------------------------------------------------

    private active(seqId: number): SeqTable {
        const s = this.ids[seqId];
        if (!s || s.state !== "active") throw new Error(`KV sequence id ${seqId} is not active`);
        return s;
    }

    private hold(s: SeqTable, b: KvBlock): void {
        const i = s.table.length;
        const at = this.index.get(b.id);
        if (at !== undefined && at !== i) throw new Error(`block ${b.id} is at index ${at}, not ${i}`);
        this.index.set(b.id, i);
        s.table.push(b);
        let h = this.holders.get(b.id);
        if (!h) this.holders.set(b.id, (h = new Set()));
        h.add(s);
    }

    /** A paged context without claims: tells it where the sequence id's positions live (before it decodes into them). */
    private sendTable(s: SeqTable): void {
        if (!this.tables) return;
        const ids = new Int32Array(s.table.length);
        for (let i = 0; i < ids.length; i++) ids[i] = s.table[i].id;
        this.ops.setBlockTable!(s.id, ids);
    }

    private touch(s: SeqTable): void {
        this.parked.delete(s.id);
        this.parked.set(s.id, s);
    }

    /**
     * Cuts a sequence id's table (and its cells) to `k` blocks. Blocks left without any holder lose their cells,
     * so they are made unfindable. An active sequence id's references are the caller's to drop.
     */
    private truncate(s: SeqTable, k: number): void {
        if (s.state !== "saving" && (k < s.table.length || s.state === "active")) {
            // an active sequence id may hold cells past its table's last full block; remove from the cut on
            this.ops.seqRemove(s.id, k * this.blockSize, -1);
        }
        for (let j = k; j < s.table.length; j++) {
            const b = s.table[j];
            const h = this.holders.get(b.id)!;
            h.delete(s);
            if (h.size === 0) {
                this.holders.delete(b.id);
                this.index.delete(b.id);
                if (b.refCount === 0) this.pool.forget(b);
            }
        }
        s.table.length = k;
        s.committed = Math.min(s.committed, k);
        if (k === 0 && s.state !== "saving") {
            if (s.state === "parked") this.parked.delete(s.id);
            if (s.state !== "free") {
                s.state = "free";
                this.freeIds.push(s.id);
            }
        }
    }

    /** The pool is giving a cached block new contents: every parked sequence id holding it loses it and what follows. */
    private evicted(b: KvBlock): void {
        const h = this.holders.get(b.id);
        if (!h) return;
        const i = this.index.get(b.id)!;
        for (const s of [...h]) {
            if (s.state !== "parked" && s.state !== "saving") throw new Error(`evicted KV block ${b.id} is still held by ${s.state} sequence id ${s.id}`);
            this.truncate(s, i);
        }
        // the block now belongs to its new owner, which hold() registers
        this.holders.delete(b.id);
        this.index.delete(b.id);
    }
}
