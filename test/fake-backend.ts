// A stand-in for LlamaContext with either of llama.cpp's two KV layouts, strict where llama.cpp is and
// stricter where llama.cpp would silently compute garbage:
// - unified (the default): cells with a position and a set of sequence ids, seqCopy sharing cells,
//   seqRemove dropping them, a fixed capacity; llama.cpp places tokens wherever cells are free.
// - paged (blockSize > 0): a pool of blocks; a sequence's token at position p goes to cell
//   table[p / blockSize] * blockSize + p % blockSize of its block table (setBlockTable), its attention reads
//   only its own table's cells, claimBlocks makes cells already written a sequence's own (llama.cpp patch
//   0006), and a decode is refused as find_slot_paged refuses it (a position outside the table, a sequence
//   with cells not starting at 0, a cell any sequence holds, two tokens in one cell). A cell's data (K/V)
//   outlives its metadata, as in the real buffers.
// Both check llama_decode's positions and refuse KV calls while a decode, save or restore is in flight.
//
// Its "model": each cell's K/V is a rolling hash of its token, its position and the K/V of the position
// before it in the sequence that wrote it, so it stands for everything before it, as attention does. The
// next token is a hash of the last position's K/V; before sampling, the whole span a sequence reads is
// checked link by link. A KV mapping error (a missing, foreign, stale or overwritten cell) is recorded in
// `violations` and changes the output, as it would with real weights.
//
// Injected failures (FakeFaults): a decode that rejects after writing part of its batch, a setSampler that
// throws, a save or restore that fails (a restore after writing part of the state), an invalid sampled id.
import type { DecodeBatch, DecodeResult, SamplerParams } from "../lib/binding/index.js";
import type { SchedulerBackend, StepBackend } from "../lib/scheduler/scheduler.js";

export const FAKE_EOS = 0;

const SEED = 2166136261;

/** The K/V of a token at `pos` written after `prev` (the K/V of position pos - 1; SEED at 0). */
function kvStep(prev: number, token: number, pos: number): number {
    let h = prev;
    h ^= token + 0x9e3779b9 + pos;
    return Math.imul(h, 16777619) >>> 0;
}

function mix(h: number): number {
    h ^= h >>> 13;
    h = Math.imul(h, 0x5bd1e995) >>> 0;
    h ^= h >>> 15;
    return h >>> 0;
}

/** The fake model's distribution after a sequence whose last position's K/V is `kv`: the greedy token and its logprobs. */
function fakeDist(kv: number, vocab: number, k: number): { token: number; logprob: number; topIds: number[]; topLogprobs: number[] } {
    const token = mix(kv) % vocab;
    const logprob = -(mix(kv ^ 0x2545f491) % 1000) / 1000;
    const topIds: number[] = [], topLogprobs: number[] = [];
    for (let i = 0; i < Math.min(k, vocab); i++) {
        topIds.push((token + i) % vocab);
        topLogprobs.push(logprob - i / 2);
    }
    return { token, logprob, topIds, topLogprobs };
}

function kvOf(tokens: ArrayLike<number>): number {
    let h = SEED;
    for (let i = 0; i < tokens.length; i++) h = kvStep(h, tokens[i], i);
    return h;
}

/** The fake model: the token after `tokens` (greedy). */
export function fakeNext(tokens: ArrayLike<number>, vocab: number): number {
    return fakeDist(kvOf(tokens), vocab, 0).token;
}

/** The fake model's logprob of its greedy token after `tokens`, and its top `k`. */
export function fakeLogprobs(tokens: ArrayLike<number>, vocab: number, k: number): { logprob: number; topIds: number[]; topLogprobs: number[] } {
    return fakeDist(kvOf(tokens), vocab, k);
}

/** Greedy reference: what a request generates alone. */
export function fakeReference(prompt: readonly number[], maxTokens: number, maxContext: number, vocab: number, ignoreEos = false): { tokens: number[]; reason: "stop" | "length" } {
    const all = prompt.slice();
    const out: number[] = [];
    let sampled = 0;
    for (;;) {
        const t = fakeNext(all, vocab);
        sampled++;
        if (!ignoreEos && t === FAKE_EOS) return { tokens: out, reason: "stop" };
        out.push(t);
        all.push(t);
        if (sampled >= maxTokens || all.length >= maxContext) return { tokens: out, reason: "length" };
    }
}

/** Failures to inject, each a probability per call (per output row for badToken), drawn from `random`. */
export interface FakeFaults {
    random: () => number;
    decode?: number;
    setSampler?: number;
    save?: number;
    restore?: number;
    badToken?: number;
}

export interface FakeOptions {
    /** > 0: a paged KV cache with blocks of this many cells (the capacity must be a multiple). */
    blockSize?: number;
    /** Paged: claimBlocks refuses as unsupported (a model whose cells keep data a claim cannot restore, M-RoPE). */
    claimsUnsupported?: boolean;
    faults?: FakeFaults;
}

/** A cell's K/V data: what was written there, kept after the cell is freed. */
interface Data {
    token: number;
    pos: number;
    kv: number;
}

/** A cell's metadata (llama_kv_cells): the position and the sequences that hold it. */
interface Cell {
    pos: number;
    seqs: Set<number>;
    data: Data | null;
}

const fail = (code: string, message: string) => Object.assign(new Error(message), { code });

export class FakeBackend implements SchedulerBackend, StepBackend {
    /** Unified: the cells in use. Paged: every cell of the pool, by index. */
    private readonly cells: Cell[] = [];
    private readonly live = new Set<Cell>();
    /** Per sequence id: position -> cell. */
    private readonly bySeq: Map<number, Cell>[];
    private readonly tables: Int32Array[];
    private busy = false;
    readonly samplers = new Map<number, SamplerParams | null>();
    readonly blockSize: number;
    readonly faults: FakeFaults | undefined;
    private readonly claimsUnsupported: boolean;
    /** Reads and writes llama.cpp would not refuse but that compute garbage: each one is a scheduler or KV mapping bug. */
    readonly violations: string[] = [];
    decodes = 0;
    tokensDecoded = 0;
    /** Calls by name. */
    readonly calls = { seqCopy: 0, seqRemove: 0, setBlockTable: 0, claimBlocks: 0, saveSequence: 0, restoreSequence: 0 };
    /** Failures injected so far, by kind. */
    readonly injected = { decode: 0, setSampler: 0, save: 0, restore: 0, badToken: 0 };
    /** Paged only (undefined on the unified layout, as on a context without a paged cache). */
    readonly setBlockTable?: (seqId: number, blocks: Int32Array) => void;
    readonly claimBlocks?: (seqId: number, tokens: number) => void;

    constructor(readonly capacity: number, readonly numSeqIds: number, readonly vocab: number, options: FakeOptions = {}) {
        this.blockSize = options.blockSize ?? 0;
        this.faults = options.faults;
        this.claimsUnsupported = options.claimsUnsupported ?? false;
        this.bySeq = Array.from({ length: numSeqIds }, () => new Map());
        this.tables = Array.from({ length: numSeqIds }, () => new Int32Array(0));
        if (this.blockSize > 0) {
            if (capacity % this.blockSize !== 0) throw new RangeError("a paged fake's capacity is whole blocks");
            for (let i = 0; i < capacity; i++) this.cells.push({ pos: -1, seqs: new Set(), data: null });
            this.setBlockTable = (s, blocks) => this.pagedSetTable(s, blocks);
            this.claimBlocks = (s, tokens) => this.pagedClaim(s, tokens);
        }
    }

    get paged(): boolean {
        return this.blockSize > 0;
    }

    /** Cells holding at least one sequence. */
    get usedCells(): number {
        return this.live.size;
    }

    private idle(what: string): void {
        if (this.busy) throw fail("ERR_CONTEXT_BUSY", `${what} while a decode is in flight`);
    }

    private inject(kind: keyof FakeFaults & keyof FakeBackend["injected"]): boolean {
        const f = this.faults;
        const p = f?.[kind];
        if (!f || typeof p !== "number" || !(f.random() < p)) return false;
        this.injected[kind]++;
        return true;
    }

    private seq(s: number): Map<number, Cell> {
        if (!Number.isInteger(s) || s < 0 || s >= this.numSeqIds) throw fail("ERR_INVALID_ARGUMENT", `sequence id ${s} out of range`);
        return this.bySeq[s];
    }

    /** Paged: the cell of position `pos` of sequence `s` by its table, or -1 if the table does not reach it. */
    private cellIndex(s: number, pos: number): number {
        const t = this.tables[s];
        const b = Math.floor(pos / this.blockSize);
        return b < t.length ? t[b] * this.blockSize + (pos % this.blockSize) : -1;
    }

    private posMax(s: number): number {
        let m = -1;
        for (const p of this.seq(s).keys()) if (p > m) m = p;
        return m;
    }

    private hold(s: number, pos: number, c: Cell): void {
        const m = this.seq(s);
        if (m.has(pos)) throw fail("ERR_INVALID_ARGUMENT", `sequence ${s} already holds position ${pos}`);
        if (c.seqs.size === 0) c.pos = pos;
        c.seqs.add(s);
        m.set(pos, c);
        this.live.add(c);
    }

    private drop(s: number, pos: number): void {
        const m = this.seq(s);
        const c = m.get(pos);
        if (!c) return;
        m.delete(pos);
        c.seqs.delete(s);
        if (c.seqs.size === 0) {
            this.live.delete(c);
            c.pos = -1;
        }
    }

    /** What sequence `s` holds, by position (throws on a hole, or in paged mode on a cell its table does not place there). */
    contents(s: number): number[] {
        const m = this.seq(s);
        const out: number[] = [];
        for (let p = 0; p < m.size; p++) {
            const c = m.get(p);
            if (!c) throw new Error(`sequence ${s} has a hole at position ${p} (holds ${m.size} cells)`);
            if (this.paged && this.cells[this.cellIndex(s, p)] !== c) throw new Error(`sequence ${s}: position ${p} is not in the cell its block table gives`);
            if (!c.data || c.data.pos !== p) throw new Error(`sequence ${s}: position ${p} holds no data for it`);
            out.push(c.data.token);
        }
        return out;
    }

    seqRemove(s: number, p0 = -1, p1 = -1): boolean {
        this.idle("seqRemove");
        this.calls.seqRemove++;
        const lo = p0 < 0 ? 0 : p0, hi = p1 < 0 ? Infinity : p1;
        for (const p of [...this.seq(s).keys()]) if (p >= lo && p < hi) this.drop(s, p);
        return true;
    }

    seqCopy(src: number, dst: number, p0 = -1, p1 = -1): void {
        this.idle("seqCopy");
        this.calls.seqCopy++;
        const lo = p0 < 0 ? 0 : p0, hi = p1 < 0 ? Infinity : p1;
        for (const [p, c] of [...this.seq(src)]) if (p >= lo && p < hi) this.hold(dst, p, c);
    }

    setSampler(s: number, params: SamplerParams | null): { backend: boolean } {
        this.idle("setSampler");
        this.seq(s);
        if (this.inject("setSampler")) throw fail("ERR_SAMPLER_INVALID", "injected: setSampler refused");
        this.samplers.set(s, params);
        return { backend: false };
    }

    private pagedSetTable(s: number, blocks: Int32Array): void {
        this.idle("setBlockTable");
        this.calls.setBlockTable++;
        this.seq(s);
        const n = this.capacity / this.blockSize;
        for (const b of blocks) if (!Number.isInteger(b) || b < 0 || b >= n) throw fail("ERR_INVALID_ARGUMENT", `sequence ${s}: block ${b} is outside the pool of ${n} blocks`);
        this.tables[s] = Int32Array.from(blocks);
    }

    /**
     * Positions [0, tokens) of the sequence's table become its cells (llama_kv_paged_claim): checked first, nothing
     * changes on error. The caller vouches that the cells hold those positions' K/V: one that does not is a violation.
     */
    private pagedClaim(s: number, tokens: number): void {
        this.idle("claimBlocks");
        this.calls.claimBlocks++;
        this.seq(s);
        if (!Number.isInteger(tokens) || tokens < 0) throw fail("ERR_INVALID_ARGUMENT", `claimBlocks: ${tokens} tokens`);
        if (this.claimsUnsupported) throw fail("ERR_PAGED_KV_UNSUPPORTED", "claimBlocks: this model keeps per-cell data a claim cannot restore");
        const table = this.tables[s];
        if (tokens > table.length * this.blockSize) throw fail("ERR_INVALID_ARGUMENT", `claimBlocks: sequence ${s} has ${table.length} blocks, fewer than ${tokens} positions`);
        const blocks = table.subarray(0, Math.ceil(tokens / this.blockSize));
        if (new Set(blocks).size !== blocks.length) throw fail("ERR_STATE_FAILED", `claimBlocks: sequence ${s} lists a block twice`);
        for (let p = 0; p < tokens; p++) {
            const i = this.cellIndex(s, p), c = this.cells[i];
            if (c.seqs.size > 0 && c.pos !== p) throw fail("ERR_STATE_FAILED", `claimBlocks: cell ${i} holds position ${c.pos}, not ${p}`);
            const held = this.bySeq[s].get(p);
            if (held && held !== c) throw fail("ERR_STATE_FAILED", `claimBlocks: sequence ${s} holds position ${p} in another cell`);
        }
        for (let p = 0; p < tokens; p++) {
            const i = this.cellIndex(s, p), c = this.cells[i];
            if (this.bySeq[s].get(p) === c) continue;
            if (!c.data || c.data.pos !== p) this.violations.push(`claimBlocks: sequence ${s} claims cell ${i} for position ${p}, which holds ${c.data ? `position ${c.data.pos}` : "nothing written"}`);
            this.hold(s, p, c);
        }
    }

    async saveSequence(s: number): Promise<Uint8Array> {
        this.idle("saveSequence");
        this.calls.saveSequence++;
        const m = this.seq(s);
        const cells: [number, number][] = [];
        for (let p = 0; p < m.size; p++) {
            const c = m.get(p);
            if (!c || !c.data) throw fail("ERR_STATE_FAILED", `sequence ${s} has a hole at position ${p}`);
            cells.push([c.data.token, c.data.kv]);
        }
        this.busy = true;
        await new Promise((r) => setImmediate(r));
        this.busy = false;
        if (this.inject("save")) throw fail("ERR_STATE_FAILED", "injected: saving the sequence failed");
        return new TextEncoder().encode(JSON.stringify(cells));
    }

    async restoreSequence(s: number, state: Uint8Array): Promise<number> {
        this.idle("restoreSequence");
        this.calls.restoreSequence++;
        const cells = JSON.parse(new TextDecoder().decode(state)) as [number, number][];
        this.seqRemove(s); // llama_state_seq_set_data clears the destination first
        // where the cells go, checked before anything is written (find_slot)
        const targets: Cell[] = [];
        if (this.paged) {
            for (let p = 0; p < cells.length; p++) {
                const i = this.cellIndex(s, p);
                if (i < 0) throw fail("ERR_STATE_FAILED", `restore: sequence ${s} has ${this.tables[s].length} blocks, position ${p} is not in them`);
                if (this.cells[i].seqs.size > 0) throw fail("ERR_STATE_FAILED", `restore: cell ${i} for position ${p} holds another token`);
                targets.push(this.cells[i]);
            }
        } else {
            if (this.live.size + cells.length > this.capacity) throw fail("ERR_STATE_FAILED", "no KV space to restore");
            for (let p = 0; p < cells.length; p++) targets.push({ pos: -1, seqs: new Set(), data: null });
        }
        this.busy = true;
        await new Promise((r) => setImmediate(r));
        this.busy = false;
        const partial = this.inject("restore");
        const n = partial ? Math.floor(cells.length / 2) : cells.length;
        for (let p = 0; p < n; p++) {
            this.write(s, targets[p]);
            targets[p].data = { token: cells[p][0], pos: p, kv: cells[p][1] };
            this.hold(s, p, targets[p]);
        }
        if (partial) throw fail("ERR_STATE_FAILED", "injected: restoring the sequence failed part-way");
        return state.byteLength;
    }

    /** Paged: sequence `s` writes a cell: no other sequence may hold a cell of that block (it would read garbage). */
    private write(s: number, c: Cell): void {
        if (!this.paged) return;
        const i = this.cells.indexOf(c);
        const b = Math.floor(i / this.blockSize);
        for (let j = b * this.blockSize; j < (b + 1) * this.blockSize; j++) {
            for (const t of this.cells[j].seqs) {
                if (t !== s) this.violations.push(`sequence ${s} writes block ${b}, which sequence ${t} holds (cell ${j})`);
            }
        }
    }

    /** The K/V span sequence `s` attends to at `pos`, checked link by link; the K/V at `pos`, or null if the span is broken. */
    private span(s: number, pos: number): number | null {
        let kv = SEED;
        for (let p = 0; p <= pos; p++) {
            const c = this.paged ? this.cells[this.cellIndex(s, p)] : this.bySeq[s].get(p);
            const d = c?.data;
            const want = d ? kvStep(kv, d.token, p) : -1;
            if (!c || !d || d.pos !== p || d.kv !== want || !c.seqs.has(s)) {
                this.violations.push(`sequence ${s} reads position ${p}: ${!c || !d ? "no data" : d.pos !== p ? `data of position ${d.pos}` : !c.seqs.has(s) ? "a cell it does not hold" : "K/V written after another prefix"}`);
                return null;
            }
            kv = d.kv;
        }
        return kv;
    }

    async decode(b: DecodeBatch): Promise<DecodeResult> {
        this.idle("decode");
        const n = b.tokens.length;
        if (n === 0) throw fail("ERR_INVALID_ARGUMENT", "empty batch");
        // llama_decode's checks: each sequence continues where its KV ends, positions consecutive
        const next = new Map<number, number>();
        for (let i = 0; i < n; i++) {
            const s = b.seqIds[i];
            const expect = next.get(s) ?? this.posMax(s) + 1;
            if (b.positions[i] !== expect) throw fail("ERR_BATCH_INVALID", `seq ${s}: position ${b.positions[i]} does not continue its KV (expected ${expect})`);
            if (b.tokens[i] < 0 || b.tokens[i] >= this.vocab) throw fail("ERR_INVALID_ARGUMENT", `token ${b.tokens[i]} out of range`);
            next.set(s, expect + 1);
        }
        const targets: Cell[] = [];
        if (this.paged) {
            // find_slot_paged's checks (with patch 0006): a decode writes only empty cells, one token each
            const seen = new Set<number>();
            for (let i = 0; i < n; i++) {
                const s = b.seqIds[i], pos = b.positions[i];
                const idx = this.cellIndex(s, pos);
                if (idx < 0) throw fail("ERR_KV_FULL", `paged KV: sequence ${s} has ${this.tables[s].length} blocks, position ${pos} is not in them`);
                if (this.bySeq[s].size > 0 && !this.bySeq[s].has(0)) throw fail("ERR_KV_FULL", `paged KV: sequence ${s} does not start at position 0`);
                const c = this.cells[idx];
                if (c.seqs.size > 0) throw fail("ERR_KV_FULL", `paged KV: cell ${idx} (block ${this.tables[s][Math.floor(pos / this.blockSize)]}) for sequence ${s}, position ${pos}, holds another token`);
                if (seen.has(idx)) throw fail("ERR_KV_FULL", `paged KV: two tokens of the batch go to cell ${idx}`);
                seen.add(idx);
                targets.push(c);
            }
        } else {
            if (this.live.size + n > this.capacity) throw fail("ERR_KV_FULL", `no KV space: ${this.live.size} + ${n} cells > ${this.capacity}`);
            for (let i = 0; i < n; i++) targets.push({ pos: -1, seqs: new Set(), data: null });
        }
        const batch = { tokens: b.tokens.slice(), positions: b.positions.slice(), seqIds: b.seqIds.slice(), outputs: b.outputs.slice() };
        this.busy = true;
        await new Promise((r) => setImmediate(r));
        this.busy = false;
        // a failed decode may leave part of its batch written (the scheduler drops those sequences' KV)
        const failAt = this.inject("decode") ? Math.floor((this.faults!.random()) * n) : -1;
        const rows: { s: number; pos: number }[] = [];
        for (let i = 0; i < n; i++) {
            if (i === failAt) throw fail("ERR_DECODE_FAILED", "injected: decode failed");
            const s = batch.seqIds[i], pos = batch.positions[i], c = targets[i];
            const prev = pos === 0 ? SEED : (this.paged ? this.cells[this.cellIndex(s, pos - 1)] : this.bySeq[s].get(pos - 1))?.data?.kv ?? -1;
            this.write(s, c);
            this.hold(s, pos, c);
            c.data = { token: batch.tokens[i], pos, kv: kvStep(prev, batch.tokens[i], pos) };
            if (batch.outputs[i]) rows.push({ s, pos });
        }
        const tokens = new Int32Array(rows.length);
        let topK = 0, wantLogprobs = false;
        for (const r of rows) {
            const k = this.samplers.get(r.s)?.logprobs;
            if (typeof k === "number" && k >= 0) {
                wantLogprobs = true;
                topK = Math.max(topK, k);
            }
        }
        const logprobs = wantLogprobs ? new Float32Array(rows.length).fill(NaN) : null;
        const topIds = wantLogprobs ? new Int32Array(rows.length * topK).fill(-1) : undefined;
        const topLogprobs = wantLogprobs ? new Float32Array(rows.length * topK).fill(NaN) : undefined;
        rows.forEach((r, row) => {
            const kv = this.span(r.s, r.pos);
            const k = this.samplers.get(r.s)?.logprobs ?? -1;
            const d = fakeDist(kv ?? 0x5a5a5a5a, this.vocab, Math.max(0, k));
            tokens[row] = kv === null ? (d.token + 1) % this.vocab : d.token;
            if (this.inject("badToken")) {
                tokens[row] = [-1, -2, this.vocab, 1 << 30][Math.floor(this.faults!.random() * 4)];
                return;
            }
            if (logprobs && k >= 0) {
                logprobs[row] = d.logprob;
                for (let j = 0; j < d.topIds.length; j++) {
                    topIds![row * topK + j] = d.topIds[j];
                    topLogprobs![row * topK + j] = d.topLogprobs[j];
                }
            }
        });
        this.decodes++;
        this.tokensDecoded += n;
        return { tokens, logprobs, topK, topIds, topLogprobs, decodeMs: 0, sampleMs: 0 };
    }
}
