// The block-to-KV-cell mapping: the one module that turns the engine's block accounting (BlockPool)
// into llama.cpp sequence operations. Everything else in the engine speaks in blocks and slots.
//
// llama.cpp v0.5.0 (unified KV pool) places tokens in cells itself; a cell can belong to several
// sequence ids at once (seqCopy shares cells, it copies no data). The mapping therefore works through
// sequence ids ("slots"):
//   - every slot has a block table: table[i] accounts for positions [i*blockSize, (i+1)*blockSize) of
//     the cells that slot holds. Accounting is conservative: a partly filled block counts whole.
//   - an active slot (a running sequence) holds a reference on each of its blocks.
//   - when a sequence ends, its committed prefix stays in KV on a parked slot, holding no references:
//     its blocks are free in the pool but still findable by hash. When the pool hands such a block to
//     new contents (eviction), or a slot is needed, the parked slot is truncated so the cells go too.
//   - a prefix hit copies the matched positions from any slot that holds the last matched block.
// Invariants (checkInvariants): every indexed block has at least one holder; in every table the
// indexed blocks form a prefix; all holders of a block hold the same blocks before it. The last one
// holds because a block is only committed when every block before it in its table is indexed, and a
// table only ever gets other blocks by copying a whole prefix.
//
//
// Paged mode (a context created with kvBlockSize == blockSize): block b is KV cells [b*blockSize, (b+1)*blockSize)
// and an active slot's table is also its native block table (setBlockTable), sent whenever the table grows:
// llama.cpp then writes each token into its block and each sequence attends only to its own blocks. The
// sequence-id bookkeeping above (seqCopy, seqRemove) still runs, so llama.cpp's cell metadata agrees.
import { BlockPool, type BlockPoolStats, type KvBlock } from "./block-pool.js";

/** The sequence operations of the KV memory (LlamaContext has them). Called only while no decode runs. */
export interface KvOps {
    seqRemove(seq: number, p0?: number, p1?: number): boolean;
    seqCopy(src: number, dst: number, p0?: number, p1?: number): void;
    /** Paged mode only: the slot's blocks in position order. */
    setBlockTable?(seq: number, blocks: Int32Array): void;
}

type SlotState = "free" | "active" | "parked";

interface Slot {
    readonly id: number;
    state: SlotState;
    table: KvBlock[];
    /** Leading table blocks that are indexed (committed) blocks. */
    committed: number;
}

export interface KvCacheStats extends BlockPoolStats {
    slots: number;
    activeSlots: number;
    parkedSlots: number;
}

export class KvCache {
    readonly pool: BlockPool;
    readonly blockSize: number;
    private readonly slots: Slot[];
    private readonly freeSlots: number[] = [];
    /** Parked slots, least recently used first. */
    private readonly parked = new Map<number, Slot>();
    /** Slots whose cells include the block, by block id. */
    private readonly holders = new Map<number, Set<Slot>>();
    /** The table index of each block in use, by block id (the same in every holder). */
    private readonly index = new Map<number, number>();

    /** `paged`: the context places tokens by block table (kvBlockSize == blockSize), so tables are sent to it. */
    constructor(private readonly ops: KvOps, numBlocks: number, blockSize: number, numSlots: number, readonly paged = false) {
        if (!Number.isInteger(numSlots) || numSlots < 1) throw new RangeError("numSlots must be a positive integer");
        if (paged && !ops.setBlockTable) throw new TypeError("a paged KV cache needs setBlockTable");
        this.blockSize = blockSize;
        this.pool = new BlockPool(numBlocks, blockSize, (b) => this.evicted(b));
        this.slots = Array.from({ length: numSlots }, (_, id) => ({ id, state: "free" as SlotState, table: [], committed: 0 }));
        for (let i = numSlots - 1; i >= 0; i--) this.freeSlots.push(i);
    }

    get numSlots(): number {
        return this.slots.length;
    }

    /** Blocks that can be allocated now (cached contents are evicted as needed). */
    get freeBlocks(): number {
        return this.pool.numFree;
    }

    /**
     * A slot for a new sequence: a free one, else the least recently used parked one (its cells are
     * dropped), passing over parked slots that hold `keep` (the prefix the caller is about to use) while
     * others exist. Null if every slot is active.
     */
    acquireSlot(keep: KvBlock | null = null): number | null {
        let id = this.freeSlots.pop();
        if (id === undefined) {
            const holders = keep ? this.holders.get(keep.id) : undefined;
            let victim: Slot | undefined;
            for (const s of this.parked.values()) {
                if (!holders?.has(s)) {
                    victim = s;
                    break;
                }
            }
            victim ??= this.parked.values().next().value;
            if (!victim) return null;
            this.truncate(victim, 0);
            id = this.freeSlots.pop()!;
        }
        this.slots[id].state = "active";
        return id;
    }

    /** Blocks held by a slot. */
    blocksOf(slot: number): readonly KvBlock[] {
        return this.slots[slot].table;
    }

    /**
     * Cached blocks matching `hashes` from the start (at most `limit`), for planning: counts nothing, changes
     * nothing. `free` is how many of them are free now (attaching them takes them off the free list).
     */
    peek(hashes: readonly string[], limit: number): { blocks: number; free: number; last: KvBlock | null } {
        const hit = this.pool.match(hashes, limit, false);
        let free = 0;
        for (const b of hit) if (b.refCount === 0) free++;
        return { blocks: hit.length, free, last: hit.length > 0 ? hit[hit.length - 1] : null };
    }

    /**
     * Gives an empty active slot the cached prefix matching `hashes` (at most `limit` blocks): takes
     * references and shares the cells of a slot that holds them. Counts toward the hit rate. Returns the
     * number of blocks attached.
     */
    attachPrefix(slot: number, hashes: readonly string[], limit: number): number {
        const s = this.active(slot);
        if (s.table.length !== 0) throw new Error(`slot ${slot} is not empty`);
        const hit = this.pool.match(hashes, limit);
        if (hit.length === 0) return 0;
        const last = hit[hit.length - 1];
        const source = this.holders.get(last.id)?.values().next().value;
        if (!source) throw new Error(`indexed KV block ${last.id} has no holder`);
        this.pool.acquire(hit);
        this.ops.seqCopy(source.id, slot, 0, hit.length * this.blockSize);
        if (source.state === "parked") this.touch(source);
        for (const b of hit) this.hold(s, b);
        s.committed = hit.length;
        this.sendTable(s);
        return hit.length;
    }

    /** Gives an empty active slot the first `blocks` blocks of another active slot (n > 1 choices share their prompt). */
    fork(src: number, dst: number, blocks: number): void {
        const from = this.active(src), to = this.active(dst);
        if (to.table.length !== 0) throw new Error(`slot ${dst} is not empty`);
        if (blocks > from.table.length) throw new Error(`slot ${src} holds ${from.table.length} blocks, not ${blocks}`);
        if (blocks === 0) return;
        const shared = from.table.slice(0, blocks);
        this.pool.acquire(shared);
        this.ops.seqCopy(src, dst, 0, blocks * this.blockSize);
        for (const b of shared) this.hold(to, b);
        to.committed = Math.min(from.committed, blocks);
        this.sendTable(to);
    }

    /** Grows an active slot's table to cover `tokens` positions. False, with nothing changed, if too few blocks are free. */
    reserve(slot: number, tokens: number): boolean {
        const s = this.active(slot);
        const need = this.pool.blocksFor(tokens) - s.table.length;
        if (need <= 0) return true;
        const got = this.pool.allocate(need);
        if (!got) return false;
        for (const b of got) this.hold(s, b);
        this.sendTable(s);
        return true;
    }

    /**
     * Indexes the slot's first `count` blocks, which must be full and computed, by content hash (hashes[i]
     * for table[i]): a block indexed before its KV is written would be copied half-empty. Stops at the first
     * block whose content another block already holds: the slot's later blocks stay private, which keeps
     * every table's indexed blocks a prefix.
     */
    commit(slot: number, hashes: readonly string[], count = hashes.length): void {
        const s = this.active(slot);
        const n = Math.min(count, hashes.length, s.table.length);
        // pool.commit() also accepts a block already indexed under this hash (shared from another slot)
        while (s.committed < n && this.pool.commit(s.table[s.committed], hashes[s.committed])) s.committed++;
    }

    /**
     * Ends a slot's sequence. With `keep`, its committed prefix stays in KV on the parked slot, findable
     * until evicted; everything else is removed and its blocks freed.
     */
    release(slot: number, keep: boolean): void {
        const s = this.active(slot);
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
        this.pool.dropCache();
    }

    stats(): KvCacheStats {
        let active = 0;
        for (const s of this.slots) if (s.state === "active") active++;
        return { ...this.pool.stats(), slots: this.slots.length, activeSlots: active, parkedSlots: this.parked.size };
    }

    /** Throws on the first broken invariant (tests and debugging). */
    checkInvariants(): void {
        this.pool.checkInvariants();
        const refs = new Map<number, number>();
        const seen = new Map<number, Set<Slot>>();
        for (const s of this.slots) {
            if (s.state === "free" && s.table.length !== 0) throw new Error(`free slot ${s.id} holds blocks`);
            if (s.state === "parked" && (s.table.length === 0 || !this.parked.has(s.id))) throw new Error(`parked slot ${s.id} is not tracked`);
            if (s.state !== "parked" && this.parked.has(s.id)) throw new Error(`slot ${s.id} is ${s.state} but listed as parked`);
            let leading = 0;
            while (leading < s.table.length && this.pool.isIndexed(s.table[leading])) leading++;
            if (s.committed > leading) throw new Error(`slot ${s.id}: committed ${s.committed} but only ${leading} leading blocks are indexed`);
            s.table.forEach((b, i) => {
                if (this.index.get(b.id) !== i) throw new Error(`block ${b.id} at index ${i} of slot ${s.id} is indexed as ${this.index.get(b.id)}`);
                if (i >= leading && this.pool.isIndexed(b)) throw new Error(`slot ${s.id}: indexed block ${b.id} at ${i} after an unindexed one`);
                if (s.state === "parked" && i >= leading) throw new Error(`parked slot ${s.id} holds uncommitted block ${b.id}`);
                if (s.state === "active") refs.set(b.id, (refs.get(b.id) ?? 0) + 1);
                let h = seen.get(b.id);
                if (!h) seen.set(b.id, (h = new Set()));
                h.add(s);
            });
        }
        for (const s of this.parked.values()) {
            if (s.state !== "parked") throw new Error(`slot ${s.id} in the parked list is ${s.state}`);
        }
        const freeCount = this.slots.filter((s) => s.state === "free").length;
        if (freeCount !== this.freeSlots.length || new Set(this.freeSlots).size !== freeCount) throw new Error("free slot list is inconsistent");
        for (const b of this.pool.all) {
            const want = refs.get(b.id) ?? 0;
            if (b.refCount !== want) throw new Error(`block ${b.id}: refCount ${b.refCount}, held by ${want} active slots`);
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
                    if (first.table[j] !== other.table[j]) throw new Error(`slots ${first.id} and ${other.id} share block ${id} but not block ${j} before it`);
                }
            }
        }
    }

    // ---- internals ------------------------------------------------------------------------------

    private active(slot: number): Slot {
        const s = this.slots[slot];
        if (!s || s.state !== "active") throw new Error(`KV slot ${slot} is not active`);
        return s;
    }

    private hold(s: Slot, b: KvBlock): void {
        const i = s.table.length;
        const at = this.index.get(b.id);
        if (at !== undefined && at !== i) throw new Error(`block ${b.id} is at index ${at}, not ${i}`);
        this.index.set(b.id, i);
        s.table.push(b);
        let h = this.holders.get(b.id);
        if (!h) this.holders.set(b.id, (h = new Set()));
        h.add(s);
    }

    /** Paged mode: tells the context where the slot's positions live (before it decodes into them). */
    private sendTable(s: Slot): void {
        if (!this.paged) return;
        const ids = new Int32Array(s.table.length);
        for (let i = 0; i < ids.length; i++) ids[i] = s.table[i].id;
        this.ops.setBlockTable!(s.id, ids);
    }

    private touch(s: Slot): void {
        this.parked.delete(s.id);
        this.parked.set(s.id, s);
    }

    /**
     * Cuts a slot's table (and its cells) to `k` blocks. Blocks left without any holder lose their cells,
     * so they are made unfindable. An active slot's references are the caller's to drop.
     */
    private truncate(s: Slot, k: number): void {
        if (k < s.table.length || s.state === "active") {
            // an active slot may hold cells past its table's last full block; remove from the cut on
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
        if (k === 0) {
            if (s.state === "parked") this.parked.delete(s.id);
            if (s.state !== "free") {
                s.state = "free";
                this.freeSlots.push(s.id);
            }
        }
    }

    /** The pool is giving a cached block new contents: every parked slot holding it loses it and what follows. */
    private evicted(b: KvBlock): void {
        const h = this.holders.get(b.id);
        if (!h) return;
        const i = this.index.get(b.id)!;
        for (const s of [...h]) {
            if (s.state !== "parked") throw new Error(`evicted KV block ${b.id} is still held by ${s.state} slot ${s.id}`);
            this.truncate(s, i);
        }
        // the block now belongs to its new owner, which hold() registers
        this.holders.delete(b.id);
        this.index.delete(b.id);
    }
}
