// A stand-in for LlamaContext that simulates llama.cpp's unified KV pool: cells with a position and a
// set of sequence ids, seqCopy sharing cells, seqRemove dropping them, a fixed capacity, the position
// checks of llama_decode, and KV calls refused while a decode is in flight. Its "model" samples the
// next token from a hash of everything the sequence holds in KV, so a KV mapping error (a missing, extra
// or foreign cell) changes the output, exactly as it would with real weights.
import type { DecodeBatch, DecodeResult, SamplerParams } from "../lib/binding/index.js";
import type { SchedulerBackend } from "../lib/scheduler/scheduler.js";

interface Cell {
    pos: number;
    token: number;
    seqs: Set<number>;
}

export const FAKE_EOS = 0;

/** The fake model: the token after `tokens` (greedy). */
export function fakeNext(tokens: ArrayLike<number>, vocab: number): number {
    let h = 2166136261;
    for (let i = 0; i < tokens.length; i++) {
        h ^= tokens[i] + 0x9e3779b9 + i;
        h = Math.imul(h, 16777619) >>> 0;
    }
    h ^= h >>> 13;
    h = Math.imul(h, 0x5bd1e995) >>> 0;
    h ^= h >>> 15;
    return (h >>> 0) % vocab;
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

export class FakeBackend implements SchedulerBackend {
    private readonly cells = new Set<Cell>();
    /** Per sequence id: position -> cell. */
    private readonly bySeq = new Map<number, Map<number, Cell>>();
    private busy = false;
    readonly samplers = new Map<number, SamplerParams | null>();
    decodes = 0;
    tokensDecoded = 0;

    constructor(readonly capacity: number, readonly numSeqIds: number, readonly vocab: number) {}

    get usedCells(): number {
        return this.cells.size;
    }

    private idle(what: string): void {
        if (this.busy) throw Object.assign(new Error(`${what} while a decode is in flight`), { code: "ERR_CONTEXT_BUSY" });
    }

    private seq(s: number): Map<number, Cell> {
        if (!Number.isInteger(s) || s < 0 || s >= this.numSeqIds) throw new Error(`sequence id ${s} out of range`);
        let m = this.bySeq.get(s);
        if (!m) this.bySeq.set(s, (m = new Map()));
        return m;
    }

    /** What sequence `s` holds, by position (throws on a hole). */
    contents(s: number): number[] {
        const m = this.seq(s);
        const out: number[] = [];
        for (let p = 0; p < m.size; p++) {
            const c = m.get(p);
            if (!c) throw new Error(`sequence ${s} has a hole at position ${p} (holds ${m.size} cells)`);
            out.push(c.token);
        }
        return out;
    }

    seqRemove(s: number, p0 = -1, p1 = -1): boolean {
        this.idle("seqRemove");
        const lo = p0 < 0 ? 0 : p0, hi = p1 < 0 ? Infinity : p1;
        const m = this.seq(s);
        for (const [p, c] of [...m]) {
            if (p >= lo && p < hi) {
                m.delete(p);
                c.seqs.delete(s);
                if (c.seqs.size === 0) this.cells.delete(c);
            }
        }
        return true;
    }

    seqCopy(src: number, dst: number, p0 = -1, p1 = -1): void {
        this.idle("seqCopy");
        const lo = p0 < 0 ? 0 : p0, hi = p1 < 0 ? Infinity : p1;
        const from = this.seq(src), to = this.seq(dst);
        for (const [p, c] of from) {
            if (p >= lo && p < hi) {
                if (to.has(p)) throw new Error(`seqCopy ${src}->${dst}: destination already holds position ${p}`);
                to.set(p, c);
                c.seqs.add(dst);
            }
        }
    }

    setSampler(s: number, params: SamplerParams | null): { backend: boolean } {
        this.idle("setSampler");
        this.seq(s);
        this.samplers.set(s, params);
        return { backend: false };
    }

    async saveSequence(s: number): Promise<Uint8Array> {
        this.idle("saveSequence");
        this.busy = true;
        await new Promise((r) => setImmediate(r));
        this.busy = false;
        return new TextEncoder().encode(JSON.stringify(this.contents(s)));
    }

    async restoreSequence(s: number, state: Uint8Array): Promise<number> {
        this.idle("restoreSequence");
        const tokens = JSON.parse(new TextDecoder().decode(state)) as number[];
        this.seqRemove(s);
        if (this.cells.size + tokens.length > this.capacity) throw Object.assign(new Error("no KV space to restore"), { code: "ERR_STATE_FAILED" });
        this.busy = true;
        await new Promise((r) => setImmediate(r));
        this.busy = false;
        const m = this.seq(s);
        tokens.forEach((token, pos) => {
            const c: Cell = { pos, token, seqs: new Set([s]) };
            this.cells.add(c);
            m.set(pos, c);
        });
        return state.byteLength;
    }

    async decode(b: DecodeBatch): Promise<DecodeResult> {
        this.idle("decode");
        const n = b.tokens.length;
        if (n === 0) throw new Error("empty batch");
        // llama_decode's checks: each sequence continues where its KV ends, positions consecutive
        const next = new Map<number, number>();
        for (let i = 0; i < n; i++) {
            const s = b.seqIds[i];
            const expect = next.get(s) ?? this.seq(s).size;
            if (b.positions[i] !== expect) throw Object.assign(new Error(`seq ${s}: position ${b.positions[i]} does not continue its KV (expected ${expect})`), { code: "ERR_BATCH_INVALID" });
            if (b.tokens[i] < 0 || b.tokens[i] >= this.vocab) throw new Error(`token ${b.tokens[i]} out of range`);
            next.set(s, expect + 1);
        }
        if (this.cells.size + n > this.capacity) {
            throw Object.assign(new Error(`no KV space: ${this.cells.size} + ${n} cells > ${this.capacity}`), { code: "ERR_KV_FULL" });
        }
        const batch = { tokens: b.tokens.slice(), positions: b.positions.slice(), seqIds: b.seqIds.slice(), outputs: b.outputs.slice() };
        this.busy = true;
        await new Promise((r) => setImmediate(r));
        this.busy = false;
        const out: number[] = [];
        for (let i = 0; i < n; i++) {
            const s = batch.seqIds[i];
            const c: Cell = { pos: batch.positions[i], token: batch.tokens[i], seqs: new Set([s]) };
            this.cells.add(c);
            this.seq(s).set(c.pos, c);
            if (batch.outputs[i]) out.push(fakeNext(this.contents(s), this.vocab));
        }
        this.decodes++;
        this.tokensDecoded += n;
        return { tokens: Int32Array.from(out), logprobs: null, topK: 0, decodeMs: 0, sampleMs: 0 };
    }
}
