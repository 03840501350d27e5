// The paged KV cache's mapping (a context created with kvBlockSize == blockSize): block b is KV cells
// [b*blockSize, (b+1)*blockSize), and a running sequence's block table, sent to llama.cpp whenever it
// changes (setBlockTable), is where each of its tokens is written and everything its attention reads.
// The block tables own the cells:
//   - a sequence id is used only while its sequence runs (or, preempted by swap, until its state is
//     saved); when it ends or is preempted the id is removed entirely (seqRemove(id, 0, -1)) before it
//     is used again, so llama.cpp's cell metadata lists running sequences only.
//   - an ended sequence's committed blocks stay in the pool's hash index, held by no one, until the
//     pool gives them new contents (their K/V outlives the metadata). A prefix hit makes the new
//     sequence's table start with those blocks and claims them (claimBlocks): no other sequence id needs
//     to hold them, so the prefix cache is bounded by the blocks alone.
//   - n > 1 choices share their prompt's full blocks the same way (the child's table starts with the
//     parent's blocks, then a claim).
//   - a decode writes only blocks no other running sequence holds: a sequence's private blocks, which are
//     fresh from the pool; full committed blocks are read-only and shared.
//   - a model whose cells keep data a claim cannot restore (M-RoPE, per-layer token embeddings) refuses the
//     first claim with ERR_PAGED_KV_UNSUPPORTED: from then on nothing is shared (no prefix hits, no forks),
//     and every sequence computes its whole prompt.
import { ErrorCode } from "../binding/errors.js";
import { BlockPool, type KvBlock } from "./block-pool.js";
import type { IdState, KvCache, KvCacheStats, KvOps, PrefixPeek } from "./kv-cache.js";

interface PagedSeq {
    readonly id: number;
    /** Never "parked": an ended sequence keeps nothing on its id. */
    state: IdState;
    table: KvBlock[];
    /** Leading table blocks that are indexed (committed) blocks. */
    committed: number;
}

export class PagedKvCache implements KvCache {
    readonly pool: BlockPool;
    readonly blockSize: number;
    private readonly ids: PagedSeq[];
    private readonly freeIds: number[] = [];
    private readonly setTable: (seqId: number, blocks: Int32Array) => void;
    private readonly claim: (seqId: number, tokens: number) => void;
    sharing = true;

    constructor(private readonly ops: KvOps, numBlocks: number, blockSize: number, numSeqIds: number) {
        if (!Number.isInteger(numSeqIds) || numSeqIds < 1) throw new RangeError("numSeqIds must be a positive integer");
        if (!ops.setBlockTable || !ops.claimBlocks) throw new TypeError("a paged KV cache needs setBlockTable and claimBlocks");
        this.setTable = ops.setBlockTable.bind(ops);
        this.claim = ops.claimBlocks.bind(ops);
        this.blockSize = blockSize;
        this.pool = new BlockPool(numBlocks, blockSize);
        this.ids = Array.from({ length: numSeqIds }, (_, id) => ({ id, state: "free" as IdState, table: [], committed: 0 }));
        for (let i = numSeqIds - 1; i >= 0; i--) this.freeIds.push(i);
    }

    get numSeqIds(): number {
        return this.ids.length;
    }

    get freeBlocks(): number {
        return this.pool.numFree;
    }

    acquireSeqId(): number | null {
        const id = this.freeIds.pop();
        if (id === undefined) return null;
        this.ids[id].state = "active";
        return id;
    }

    blocksOf(seqId: number): readonly KvBlock[] {
        return this.ids[seqId].table;
    }

    peek(hashes: readonly string[], limit: number): PrefixPeek {
        return this.pool.peek(hashes, limit);
    }

    attachPrefix(seqId: number, hashes: readonly string[], limit: number): number {
        const s = this.empty(seqId);
        const hit = this.pool.match(hashes, limit);
        if (hit.length === 0) return 0;
        this.pool.acquire(hit);
        s.table = hit;
        s.committed = hit.length;
        this.sendTable(s);
        return this.tryClaim(s, hit.length * this.blockSize) ? hit.length : 0;
    }

    fork(src: number, dst: number, blocks: number): boolean {
        const from = this.active(src), to = this.empty(dst);
        if (blocks > from.table.length) throw new Error(`sequence id ${src} holds ${from.table.length} blocks, not ${blocks}`);
        if (blocks === 0) return true;
        if (!this.sharing) return false;
        const shared = from.table.slice(0, blocks);
        this.pool.acquire(shared);
        to.table = shared;
        to.committed = Math.min(from.committed, blocks);
        this.sendTable(to);
        return this.tryClaim(to, blocks * this.blockSize);
    }

    reserve(seqId: number, tokens: number): boolean {
        const s = this.active(seqId);
        const need = this.pool.blocksFor(tokens) - s.table.length;
        if (need <= 0) return true;
        const got = this.pool.allocate(need);
        if (!got) return false;
        for (const b of got) s.table.push(b);
        this.sendTable(s);
        return true;
    }

    commit(seqId: number, hashes: readonly string[], count = hashes.length): void {
        const s = this.active(seqId);
        const n = Math.min(count, hashes.length, s.table.length);
        // pool.commit() also accepts a block already indexed under this hash (shared from another sequence)
        while (s.committed < n && this.pool.commit(s.table[s.committed], hashes[s.committed])) s.committed++;
    }

    release(seqId: number, keep: boolean): void {
        const s = this.active(seqId);
        this.pool.release(s.table);
        // without `keep` (a failed sequence) its committed blocks are not offered again unless someone else holds them
        if (!keep) for (const b of s.table) if (b.refCount === 0) this.pool.forget(b);
        this.free(s);
    }

    suspend(seqId: number): void {
        const s = this.active(seqId);
        this.pool.release(s.table);
        s.table = [];
        s.committed = 0;
        s.state = "saving";
    }

    releaseSaved(seqId: number): void {
        const s = this.ids[seqId];
        if (!s || s.state !== "saving") throw new Error(`KV sequence id ${seqId} is not being saved`);
        this.free(s);
    }

    stateOf(seqId: number): IdState {
        return this.ids[seqId].state;
    }

    dropCache(): void {
        this.pool.dropCache();
    }

    stats(): KvCacheStats {
        let active = 0;
        for (const s of this.ids) if (s.state === "active") active++;
        return { ...this.pool.stats(), seqIds: this.ids.length, activeSeqIds: active, parkedSeqIds: 0 };
    }

    checkInvariants(): void {
        this.pool.checkInvariants();
        const refs = new Map<number, number>();
        for (const s of this.ids) {
            if (s.state === "parked") throw new Error(`paged sequence id ${s.id} is parked`);
            if (s.state !== "active" && s.table.length !== 0) throw new Error(`${s.state} sequence id ${s.id} holds blocks`);
            // the indexed blocks of a table are a prefix (what a claim of a hit relies on), committed ones among them
            let leading = 0;
            while (leading < s.table.length && this.pool.isIndexed(s.table[leading])) leading++;
            if (s.committed > leading) throw new Error(`sequence id ${s.id}: committed ${s.committed} but only ${leading} leading blocks are indexed`);
            const own = new Set<number>();
            s.table.forEach((b, i) => {
                if (own.has(b.id)) throw new Error(`sequence id ${s.id} holds block ${b.id} twice`);
                own.add(b.id);
                if (i >= leading && this.pool.isIndexed(b)) throw new Error(`sequence id ${s.id}: indexed block ${b.id} at ${i} after an unindexed one`);
                refs.set(b.id, (refs.get(b.id) ?? 0) + 1);
            });
        }
        for (const b of this.pool.all) {
            const want = refs.get(b.id) ?? 0;
            if (b.refCount !== want) throw new Error(`block ${b.id}: refCount ${b.refCount}, held by ${want} running sequences`);
        }
        const freeCount = this.ids.filter((s) => s.state === "free").length;
        if (freeCount !== this.freeIds.length || new Set(this.freeIds).size !== freeCount) throw new Error("free sequence id list is inconsistent");
    }

    // ---- internals ------------------------------------------------------------------------------

    private active(seqId: number): PagedSeq {
        const s = this.ids[seqId];
        if (!s || s.state !== "active") throw new Error(`KV sequence id ${seqId} is not active`);
        return s;
    }

    private empty(seqId: number): PagedSeq {
        const s = this.active(seqId);
        if (s.table.length !== 0) throw new Error(`sequence id ${seqId} is not empty`);
        return s;
    }

    /** Removes the sequence's cells entirely (the rule the native side relies on before an id is reused) and frees the id. */
    private free(s: PagedSeq): void {
        this.ops.seqRemove(s.id, 0, -1);
        s.table = [];
        s.committed = 0;
        s.state = "free";
        this.freeIds.push(s.id);
    }

    /**
     * Claims the first `tokens` positions of an active sequence's table. If the context refuses (nothing changed
     * there), the table's references go back; a refusal as unsupported turns sharing off and returns false.
     */
    private tryClaim(s: PagedSeq, tokens: number): boolean {
        try {
            this.claim(s.id, tokens);
            return true;
        } catch (e) {
            this.pool.release(s.table);
            s.table = [];
            s.committed = 0;
            if ((e as { code?: unknown } | null)?.code !== ErrorCode.PagedKvUnsupported) throw e;
            this.sharing = false;
            return false;
        }
    }

    /** Tells the context where the sequence's positions live (before it claims or decodes into them). */
    private sendTable(s: PagedSeq): void {
        const ids = new Int32Array(s.table.length);
        for (let i = 0; i < ids.length; i++) ids[i] = s.table[i].id;
        this.setTable(s.id, ids);
    }
}
