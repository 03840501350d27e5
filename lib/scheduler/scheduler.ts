// The scheduler: one decode step at a time over many sequences (iteration-level batching).
// plan() picks the step's tokens and makes room for them in the KV cache (admitting, preempting,
// evicting), synchronously: it returns what the step must do, the batch and the swaps before it. The
// engine carries the step out (runSwaps(), then the decode) and hands the results back: swappedOut(),
// restoreFailed(), complete() or fail(). All of them run while no decode is in flight, so the KV memory
// calls they make are safe; the engine does everything else (text, streaming, stop strings) while the
// next decode runs. See docs/scheduler.md for the policy.
import { BatchwiseError, ErrorCode, type DecodeBatch, type DecodeResult, type SamplerParams } from "../binding/index.js";
import { blockHashes } from "../kv/block-pool.js";
import { createKvCache, type KvCache, type KvCacheStats, type KvOps } from "../kv/kv-cache.js";

/** What the scheduler calls on a context while planning (LlamaContext has it; tests use a fake). All synchronous. */
export interface SchedulerBackend extends KvOps {
    setSampler(seqId: number, params: SamplerParams | null): unknown;
}

/** What carrying out a step needs besides (runSwaps() and the engine's decode). */
export interface StepBackend {
    decode(batch: DecodeBatch): Promise<DecodeResult>;
    saveSequence(seqId: number): Promise<Uint8Array>;
    restoreSequence(seqId: number, state: Uint8Array): Promise<number>;
}

export type FinishReason = "stop" | "length" | "abort" | "error";
export type PreemptionMode = "recompute" | "swap";

export interface SchedulerOptions {
    /** KV blocks in the pool and tokens per block. */
    numBlocks: number;
    blockSize: number;
    /** Sequences decoded at once. */
    maxRunning: number;
    /**
     * Sequence ids the context has: at least maxRunning. The paged cache needs no more; with the unified pool the
     * extra ids (the engine's cacheSeqIds) keep ended sequences' prefixes cached.
     */
    seqIds: number;
    /** Tokens per step (decodes first, then prompt chunks). */
    batchTokens: number;
    /**
     * Most prompt tokens one sequence may compute in a step while other sequences run or wait (a lone
     * prompt takes the whole budget). Keeps a long prompt from holding up others' decodes and
     * admissions for whole multi-thousand-token steps. Default: batchTokens (no cap).
     */
    prefillChunk?: number;
    /**
     * While others run or wait, how many long prompts (more than prefillChunk tokens left) compute in
     * one step; the rest wait their turn and shorter prompts go past them. Whatever budget is left at
     * the end of the plan goes back to the prompts that were cut. Default: no limit.
     */
    longPrefills?: number;
    /** Most tokens (prompt + generated) one sequence may hold. */
    maxContext: number;
    /**
     * The context is a paged KV cache with kvBlockSize == blockSize: the block tables own its cells (setBlockTable,
     * claimBlocks). Default false: llama.cpp's unified pool.
     */
    pagedKv?: boolean;
    prefixCache: boolean;
    preemption: PreemptionMode;
    /** Host memory for swapped-out sequences; past it, preemption recomputes. */
    swapSpaceBytes: number;
    /** Share of the blocks kept free when admitting while others run (room for their next tokens). */
    watermark: number;
    /** Whether a token ends generation (EOS, EOT, ...). */
    isEog: (token: number) => boolean;
    /** Token ids are in [0, vocabSize): a sampled id outside it ends its sequence with ERR_DECODE_FAILED. */
    vocabSize: number;
    now?: () => number;
}

export interface RequestSpec {
    prompt: ArrayLike<number>;
    /** Choices; they share the prompt's KV. */
    n: number;
    /** Generated tokens at most (capped so prompt + generated <= maxContext). */
    maxTokens: number;
    /** Lower runs first. */
    priority: number;
    ignoreEos: boolean;
    stopTokens: ReadonlySet<number>;
    /** Sampler of each choice (length n); null: greedy. */
    samplers: (SamplerParams | null)[];
    /** Look up and keep this request's prefix in the cache. */
    useCache: boolean;
    cacheSalt: string;
}

export class SchedRequest {
    readonly seqs: Sequence[];
    constructor(readonly id: number, readonly arrival: number, readonly spec: RequestSpec) {
        this.seqs = Array.from({ length: spec.n }, (_, i) => new Sequence(this, i));
    }
}

/** swapping: preempted by swap in the current step, its state being saved (it holds its seqId until swappedOut()). */
export type SeqState = "waiting" | "running" | "swapping" | "swapped" | "finished";

export class Sequence {
    /** Prompt, then every generated token that is part of the output. */
    readonly tokens: number[];
    readonly promptLength: number;
    /** Tokens whose KV is in the cache (the next input is tokens[numComputed]). */
    numComputed = 0;
    /** Content hashes of the full blocks of `tokens` computed so far. */
    hashes: string[] = [];
    /** The llama.cpp sequence id while running (and while swapping out); -1 otherwise. */
    seqId = -1;
    state: SeqState = "waiting";
    /** Tokens sampled (output tokens, plus a final EOS or stop token). */
    sampled = 0;
    /** Prompt tokens found in the cache at first admission. */
    cachedTokens = 0;
    firstScheduledAt = -1;
    preemptions = 0;
    /** Asked to end (abort, stop string): done at the next plan(). */
    pendingFinish: FinishReason | null = null;
    swapState: Uint8Array | null = null;
    admitted = false;

    constructor(readonly request: SchedRequest, readonly index: number) {
        this.tokens = Array.from(request.spec.prompt);
        this.promptLength = this.tokens.length;
    }
}

export type SchedulerEvent =
    | { kind: "token"; seq: Sequence; token: number; logprob?: number; topIds?: Int32Array; topLogprobs?: Float32Array }
    | { kind: "finish"; seq: Sequence; reason: FinishReason; error?: unknown };

interface StepEntry {
    seq: Sequence;
    /** This sequence's tokens in the batch: tokens[numComputed, numComputed + n). */
    n: number;
    output: boolean;
}

/** A swapped sequence admitted in this step: its state goes back into its (new) seqId before the decode. */
export interface SwapIn {
    readonly seq: Sequence;
    readonly state: Uint8Array;
}

/**
 * What one step must do, in this order: save the state of each `swapOut` sequence (preempted by swap) and
 * report it with swappedOut(); restore each `swapIn` sequence's state into its seqId, reporting a failure
 * with restoreFailed(); then, if the batch is not empty, decode it and hand the result to complete() (or the
 * error to fail()). runSwaps() does the first two.
 */
export interface Step {
    /** The step's tokens. Views of the scheduler's buffers: valid until the next plan(). */
    readonly batch: DecodeBatch;
    readonly entries: readonly StepEntry[];
    readonly swapOut: readonly Sequence[];
    readonly swapIn: readonly SwapIn[];
    readonly promptTokens: number;
    readonly decodeTokens: number;
}

type MutableStep = { -readonly [K in keyof Step]: Step[K] } & { entries: StepEntry[] };

export interface SchedulerStats {
    running: number;
    waiting: number;
    swapped: number;
    preemptions: number;
    swapBytes: number;
    steps: number;
    kv: KvCacheStats;
}

function better(a: Sequence, b: Sequence): number {
    const ra = a.request, rb = b.request;
    return ra.spec.priority - rb.spec.priority || ra.arrival - rb.arrival || a.index - b.index;
}

/**
 * Sampler fields that keep no state between tokens (a seed does once sampling is random, which greedy is not; the
 * penalties do once they are on). Any other field (a grammar, a thinking budget, whatever is added next) makes the
 * chain stateful: listed by what is known stateless, so that a new field is set fresh per sequence until said otherwise.
 */
const STATELESS_FIELDS = new Set(["temperature", "topK", "topP", "minP", "logitBias", "logprobs", "backend", "seed",
    "repeatPenalty", "presencePenalty", "frequencyPenalty", "penaltyLastN"]);

function samplerKey(p: SamplerParams | null): string | null {
    // a chain whose result depends only on the logits can be kept between requests; one with a random
    // generator, a token history or state of its own must be set fresh for each sequence
    if (p === null) return "host-greedy";
    const greedy = (p.temperature ?? 1) <= 0;
    const fields = p as Record<string, unknown>;
    const stateless = greedy && (p.repeatPenalty ?? 1) === 1 && !p.presencePenalty && !p.frequencyPenalty &&
        Object.keys(fields).every((k) => fields[k] === undefined || STATELESS_FIELDS.has(k));
    return stateless ? JSON.stringify(p) : null;
}

export class Scheduler {
    readonly kv: KvCache;
    private readonly waiting: Sequence[] = [];
    private readonly running: Sequence[] = [];
    private readonly pending = new Set<Sequence>();
    private events: SchedulerEvent[] = [];
    private readonly seqSampler: (string | null | undefined)[];
    private readonly now: () => number;
    private readonly watermarkBlocks: number;
    private preemptions = 0;
    private swapBytes = 0;
    private steps = 0;
    private nextArrival = 0;
    /** Swap-outs planned and not yet reported with swappedOut(). */
    private unsaved = 0;
    private readonly tokens: Int32Array;
    private readonly positions: Int32Array;
    private readonly batchSeqIds: Int32Array;
    private readonly outputs: Uint8Array;
    private readonly emptyBatch: DecodeBatch = { tokens: new Int32Array(0), positions: new Int32Array(0), seqIds: new Int32Array(0), outputs: new Uint8Array(0) };

    constructor(private readonly backend: SchedulerBackend, readonly options: SchedulerOptions) {
        const o = options;
        if (o.batchTokens < o.maxRunning) throw new RangeError(`batchTokens (${o.batchTokens}) must be at least maxRunning (${o.maxRunning})`);
        if (o.seqIds < o.maxRunning) throw new RangeError(`seqIds (${o.seqIds}) must be at least maxRunning (${o.maxRunning})`);
        if (o.maxContext > o.numBlocks * o.blockSize) throw new RangeError(`maxContext (${o.maxContext}) exceeds the KV pool (${o.numBlocks * o.blockSize} tokens)`);
        this.kv = createKvCache(backend, o.numBlocks, o.blockSize, o.seqIds, o.pagedKv ?? false);
        this.seqSampler = new Array(o.seqIds);
        this.now = o.now ?? (() => performance.now());
        this.watermarkBlocks = Math.floor(o.numBlocks * o.watermark);
        this.tokens = new Int32Array(o.batchTokens);
        this.positions = new Int32Array(o.batchTokens);
        this.batchSeqIds = new Int32Array(o.batchTokens);
        this.outputs = new Uint8Array(o.batchTokens);
    }

    /** Queues a request (validated by the caller: prompt non-empty and prompt + maxTokens <= maxContext). */
    submit(spec: RequestSpec, id: number): SchedRequest {
        if (spec.prompt.length < 1 || spec.prompt.length >= this.options.maxContext) throw new RangeError("prompt length out of range: it must leave room for a token");
        const r = new SchedRequest(id, this.nextArrival++, spec);
        for (const s of r.seqs) this.insert(this.waiting, s);
        return r;
    }

    /** Ends a sequence at the next plan() (abort, stop string). Its finish event comes then. */
    finish(seq: Sequence, reason: FinishReason): void {
        if (seq.state === "finished" || seq.pendingFinish) return;
        seq.pendingFinish = reason;
        this.pending.add(seq);
    }

    /** Whether there is anything to plan (work queued, running, or ends to carry out). */
    get busy(): boolean {
        return this.running.length > 0 || this.waiting.length > 0 || this.pending.size > 0;
    }

    /** Requests waiting for admission (not counting preempted sequences). */
    /** Sequences submitted and not yet admitted (every choice of every prompt counts): what the intake bound counts. */
    get waitingSequences(): number {
        let n = 0;
        for (const s of this.waiting) if (!s.admitted) n++;
        return n;
    }

    /** Events since the last call, in order: tokens and finishes. */
    takeEvents(): SchedulerEvent[] {
        const e = this.events;
        this.events = [];
        return e;
    }

    stats(): SchedulerStats {
        let swapped = 0;
        for (const s of this.waiting) if (s.state === "swapped" || s.state === "swapping") swapped++;
        return {
            running: this.running.length, waiting: this.waiting.length - swapped, swapped, preemptions: this.preemptions,
            swapBytes: this.swapBytes, steps: this.steps, kv: this.kv.stats(),
        };
    }

    /**
     * Picks the next step and reserves its KV blocks: every running decode, then prompt chunks of running
     * sequences, then admissions from the queue, until the token budget is spent. Synchronous: it does no
     * I/O, the swaps it decides are in the step for the engine to carry out. Null when there is nothing to
     * do (no tokens and no swaps).
     */
    plan(): Step | null {
        if (this.unsaved > 0) throw new Error(`${this.unsaved} swap-outs of the last step were not reported (swappedOut)`);
        this.reap();
        const o = this.options;
        let budget = o.batchTokens;
        const entries: StepEntry[] = [];
        const swapOut: Sequence[] = [];
        const swapIn: SwapIn[] = [];
        const scheduled = new Map<Sequence, StepEntry>();
        // preempting a sequence already in this step takes it (and its tokens) back out
        const unschedule = (v: Sequence) => {
            const e = scheduled.get(v);
            if (!e) return;
            scheduled.delete(v);
            entries.splice(entries.indexOf(e), 1);
            budget += e.n;
        };
        const running = this.running.slice();
        // with company, no prompt takes more than prefillChunk of the step: the rest goes to the others
        const company = this.running.length + this.waiting.length > 1;
        const chunkCap = company ? Math.min(o.prefillChunk ?? o.batchTokens, o.batchTokens) : o.batchTokens;
        const longLimit = company ? (o.longPrefills ?? Infinity) : Infinity;
        let longs = 0;
        for (const decoding of [true, false]) {
            for (const seq of running) {
                if (seq.state !== "running" || scheduled.has(seq)) continue;
                const remaining = seq.tokens.length - seq.numComputed;
                if ((remaining === 1) !== decoding) continue;
                if (budget <= 0) break;
                if (!decoding && remaining > chunkCap && longs++ >= longLimit) continue; // its turn comes
                let n = Math.min(remaining, budget, decoding ? 1 : chunkCap);
                if (!decoding) {
                    // a prompt chunk shrinks to the room there is before it preempts anyone
                    const room = (this.kv.blocksOf(seq.seqId).length + this.kv.freeBlocks) * o.blockSize - seq.numComputed;
                    if (room > 0) n = Math.min(n, room);
                }
                while (seq.state === "running" && !this.kv.reserve(seq.seqId, seq.numComputed + n)) {
                    // victim: the lowest priority, latest arrival of all running (the list's last), maybe seq itself
                    const victim = this.running[this.running.length - 1];
                    unschedule(victim);
                    this.preempt(victim, swapOut);
                }
                if (seq.state !== "running") continue;
                const e = this.entry(seq, n);
                entries.push(e);
                scheduled.set(seq, e);
                budget -= n;
            }
        }
        // admissions, in queue order
        for (const seq of this.waiting.slice()) {
            if (budget <= 0 || this.running.length >= o.maxRunning) break;
            // preempted by swap this step: it cannot come back before its state is saved, and nobody overtakes it
            if (seq.state === "swapping") break;
            if (seq.state !== "waiting" && seq.state !== "swapped") continue;
            // a long prompt waits while the long-prompt turns are taken (cached blocks may shorten it: not counted)
            if (seq.tokens.length - seq.numComputed > chunkCap && longs >= longLimit) continue;
            const r = this.admit(seq, Math.min(budget, chunkCap), swapIn);
            if (r === "blocked") break;
            if (r === "skip" || r === 0) continue;
            if (seq.tokens.length - seq.numComputed > r) longs++;
            const e = this.entry(seq, r);
            entries.push(e);
            scheduled.set(seq, e);
            budget -= r;
        }
        // what is left goes back to the prompts the cap cut short, where the KV has room (no preemption); but only when
        // nobody gets a token from this step (no decode, no prompt that ends here): every token of a step delays those,
        // and a long prompt's full-budget chunk (four micro-batches, at 32K tokens of context about 160 ms on an H100)
        // would set everyone's inter-token latency and the first token of whoever was admitted (head-of-line blocking)
        const someoneWaits = entries.some((e) => e.output);
        for (const e of entries) {
            if (budget <= 0 || someoneWaits) break;
            const seq = e.seq;
            const more = Math.min(seq.tokens.length - seq.numComputed - e.n, budget);
            if (more <= 0 || e.n === 0 || !this.kv.reserve(seq.seqId, seq.numComputed + e.n + more)) continue;
            e.n += more;
            e.output = seq.numComputed + e.n === seq.tokens.length;
            budget -= more;
        }
        if (entries.length === 0 && swapOut.length === 0) return null;
        this.unsaved = swapOut.length;
        if (entries.length > 0) this.steps++;
        const step: MutableStep = { batch: this.emptyBatch, entries, swapOut, swapIn, promptTokens: 0, decodeTokens: 0 };
        this.fill(step);
        return step;
    }

    /**
     * A swap-out of this step is done: `state` is the sequence's saved KV, or null if saving failed (it is
     * recomputed instead). Its seqId and cells are released here.
     */
    swappedOut(seq: Sequence, state: Uint8Array | null): void {
        if (seq.state !== "swapping") throw new Error(`swappedOut: the sequence of request ${seq.request.id} is ${seq.state}, not swapping`);
        this.unsaved--;
        this.kv.releaseSaved(seq.seqId, this.caches(seq));
        seq.seqId = -1;
        if (state && this.swapBytes + state.byteLength <= this.options.swapSpaceBytes) {
            seq.swapState = state;
            seq.state = "swapped";
            this.swapBytes += state.byteLength;
        } else {
            seq.numComputed = 0;
            seq.state = "waiting";
        }
    }

    /**
     * A swap-in of this step failed: the sequence's rows leave the step's batch, its seqId is released (the
     * restore may have written part of it) and it waits to be computed again (its tokens are all known).
     */
    restoreFailed(step: Step, seq: Sequence): void {
        const st = step as MutableStep;
        const i = st.entries.findIndex((e) => e.seq === seq);
        if (seq.state !== "running" || i < 0) throw new Error(`restoreFailed: the sequence of request ${seq.request.id} is not in the step`);
        st.entries.splice(i, 1);
        if (st.entries.length === 0) this.steps--;
        this.kv.release(seq.seqId, false);
        this.remove(this.running, seq);
        seq.seqId = -1;
        seq.numComputed = 0;
        seq.state = "waiting";
        this.insert(this.waiting, seq);
        this.fill(st);
    }

    /** Takes a step's sampled tokens: advances each sequence, ends those that hit a stop token or a limit. */
    complete(step: Step, result: DecodeResult): void {
        const o = this.options;
        let row = 0;
        for (const e of step.entries) {
            const seq = e.seq;
            if (seq.state !== "running") throw new Error(`sequence of request ${seq.request.id} left the running set during its step`);
            seq.numComputed += e.n;
            if (this.caches(seq)) {
                // only blocks whose KV is now written: hashes may run ahead (admission hashes the whole prompt)
                const full = Math.floor(seq.numComputed / o.blockSize);
                if (full > seq.hashes.length) seq.hashes = blockHashes(seq.tokens, o.blockSize, seq.request.spec.cacheSalt, seq.hashes, seq.numComputed);
                this.kv.commit(seq.seqId, seq.hashes, full);
            }
            if (!e.output) continue;
            const r = row++;
            if (seq.pendingFinish) continue;
            const token = result.tokens[r];
            if (token === -1) {
                this.end(seq, "error", new BatchwiseError(ErrorCode.SamplerInvalid,
                    "the grammar and the sampler (a logit bias of -Infinity) leave no token to sample"));
                continue;
            }
            if (!(token >= 0 && token < o.vocabSize)) {
                // never trusted: a bad id ends its own sequence, not the step (isEog and the detokenizer would throw)
                this.end(seq, "error", new BatchwiseError(ErrorCode.DecodeFailed, `the sampler returned no valid token id (${token})`));
                continue;
            }
            seq.sampled++;
            const spec = seq.request.spec;
            if ((!spec.ignoreEos && o.isEog(token)) || spec.stopTokens.has(token)) {
                this.end(seq, "stop");
                continue;
            }
            seq.tokens.push(token);
            const ev: SchedulerEvent = { kind: "token", seq, token };
            if (result.logprobs) {
                ev.logprob = result.logprobs[r];
                if (result.topK > 0 && result.topIds && result.topLogprobs) {
                    ev.topIds = result.topIds.slice(r * result.topK, (r + 1) * result.topK);
                    ev.topLogprobs = result.topLogprobs.slice(r * result.topK, (r + 1) * result.topK);
                }
            }
            this.events.push(ev);
            if (seq.sampled >= spec.maxTokens || seq.tokens.length >= o.maxContext) this.end(seq, "length");
        }
    }

    /** A step's decode failed: its sequences end with the error (their KV is dropped, it may be partly written). */
    fail(step: Step, error: unknown): void {
        for (const e of step.entries) if (e.seq.state === "running") this.end(e.seq, "error", error);
    }

    /** Ends everything (engine close): queued and running sequences finish with `reason`. */
    finishAll(reason: FinishReason): void {
        for (const s of [...this.running, ...this.waiting]) this.finish(s, reason);
    }

    /** Checks the KV accounting against the sequences (tests). */
    checkInvariants(): void {
        this.kv.checkInvariants();
        const ids = new Set<number>();
        for (const s of this.running) {
            if (s.state !== "running" || s.seqId < 0) throw new Error(`running list holds a ${s.state} sequence`);
            if (ids.has(s.seqId)) throw new Error(`sequence id ${s.seqId} used twice`);
            ids.add(s.seqId);
            if (this.kv.blocksOf(s.seqId).length * this.options.blockSize < s.numComputed) throw new Error(`sequence with id ${s.seqId} holds fewer blocks than tokens`);
        }
        let swapping = 0;
        for (const s of this.waiting) {
            if (s.state === "swapping") {
                // its id and cells stay until its state is saved
                swapping++;
                if (s.seqId < 0 || ids.has(s.seqId) || this.kv.stateOf(s.seqId) !== "saving") throw new Error(`a swapping sequence does not hold its own saving sequence id (${s.seqId})`);
                ids.add(s.seqId);
                continue;
            }
            if (s.state !== "waiting" && s.state !== "swapped") throw new Error(`waiting list holds a ${s.state} sequence`);
            if (s.seqId !== -1) throw new Error("a waiting sequence holds a sequence id");
            if ((s.state === "swapped") !== (s.swapState !== null)) throw new Error(`a ${s.state} sequence ${s.swapState ? "holds" : "lacks"} a saved state`);
        }
        let bytes = 0;
        for (const s of this.waiting) if (s.swapState) bytes += s.swapState.byteLength;
        if (bytes !== this.swapBytes) throw new Error(`swapBytes is ${this.swapBytes}, the saved states hold ${bytes}`);
        if (swapping !== this.unsaved) throw new Error(`${swapping} sequences swapping out, ${this.unsaved} swap-outs unreported`);
        if (this.running.length > this.options.maxRunning) throw new Error("more sequences running than maxRunning");
        const stats = this.kv.stats();
        if (stats.activeSeqIds !== this.running.length) throw new Error(`${stats.activeSeqIds} active KV sequence ids for ${this.running.length} running sequences`);
    }

    // ---- internals ------------------------------------------------------------------------------

    /** Writes the step's batch from its entries. */
    private fill(step: MutableStep): void {
        let k = 0;
        let promptTokens = 0;
        for (const e of step.entries) {
            const s = e.seq;
            for (let j = 0; j < e.n; j++, k++) {
                this.tokens[k] = s.tokens[s.numComputed + j];
                this.positions[k] = s.numComputed + j;
                this.batchSeqIds[k] = s.seqId;
                this.outputs[k] = 0;
            }
            if (e.output) this.outputs[k - 1] = 1;
            if (s.numComputed < s.promptLength) promptTokens += Math.min(e.n, s.promptLength - s.numComputed);
        }
        step.batch = { tokens: this.tokens.subarray(0, k), positions: this.positions.subarray(0, k), seqIds: this.batchSeqIds.subarray(0, k), outputs: this.outputs.subarray(0, k) };
        step.promptTokens = promptTokens;
        step.decodeTokens = k - promptTokens;
    }

    private caches(seq: Sequence): boolean {
        return this.options.prefixCache && seq.request.spec.useCache;
    }

    private entry(seq: Sequence, n: number): StepEntry {
        return { seq, n, output: seq.numComputed + n === seq.tokens.length };
    }

    /** Inserts in (priority, arrival, index) order: a preempted sequence goes back ahead of later arrivals. */
    private insert(list: Sequence[], seq: Sequence): void {
        let lo = 0, hi = list.length;
        while (lo < hi) {
            const mid = (lo + hi) >> 1;
            if (better(list[mid], seq) <= 0) lo = mid + 1;
            else hi = mid;
        }
        list.splice(lo, 0, seq);
    }

    private remove(list: Sequence[], seq: Sequence): void {
        const i = list.indexOf(seq);
        if (i >= 0) list.splice(i, 1);
    }

    /** Carries out the ends asked for since the last step. */
    private reap(): void {
        for (const seq of this.pending) this.end(seq, seq.pendingFinish!);
        this.pending.clear();
    }

    private end(seq: Sequence, reason: FinishReason, error?: unknown): void {
        if (seq.state === "finished") return;
        if (seq.state === "swapping") throw new Error("a sequence being swapped out cannot end before its state is saved");
        if (seq.state === "running") {
            this.kv.release(seq.seqId, reason !== "error" && this.caches(seq));
            this.remove(this.running, seq);
            seq.seqId = -1;
        } else {
            this.remove(this.waiting, seq);
            if (seq.swapState) {
                this.swapBytes -= seq.swapState.byteLength;
                seq.swapState = null;
            }
        }
        this.pending.delete(seq);
        seq.state = "finished";
        this.events.push(error === undefined ? { kind: "finish", seq, reason } : { kind: "finish", seq, reason, error });
    }

    /**
     * Takes a running sequence out. Recompute: its KV is dropped now. Swap: its blocks go back to the pool
     * now, and it joins `swapOut`: its seqId and cells stay until the engine has saved its state (swappedOut()).
     */
    private preempt(seq: Sequence, swapOut: Sequence[]): void {
        this.preemptions++;
        seq.preemptions++;
        const o = this.options;
        this.remove(this.running, seq);
        if (o.preemption === "swap" && seq.numComputed > 0 && this.swapBytes < o.swapSpaceBytes) {
            this.kv.suspend(seq.seqId);
            seq.state = "swapping";
            swapOut.push(seq);
        } else {
            this.kv.release(seq.seqId, this.caches(seq));
            seq.seqId = -1;
            seq.numComputed = 0;
            seq.state = "waiting";
        }
        this.insert(this.waiting, seq);
    }

    /**
     * Tries to start a queued sequence with at most `budget` tokens this step. Returns the tokens scheduled,
     * "skip" (not yet: it waits on its first choice's prompt, let others pass) or "blocked" (no room: stop
     * admitting, so that later arrivals do not overtake it).
     */
    private admit(seq: Sequence, budget: number, swapIn: SwapIn[]): number | "skip" | "blocked" {
        const o = this.options, bs = o.blockSize;
        const spec = seq.request.spec;
        const wm = this.running.length > 0 ? this.watermarkBlocks : 0;
        const parent = seq.request.seqs[0];
        const shareBlocks = seq.index > 0 && !seq.admitted && this.kv.sharing ? Math.floor((seq.promptLength - 1) / bs) : 0;
        if (shareBlocks > 0 && (parent.state === "waiting" || parent.state === "swapped" || parent.state === "swapping" || (parent.state === "running" && parent.numComputed < shareBlocks * bs))) {
            return "skip"; // its prompt is being computed by the first choice: share it rather than compute it twice
        }
        if (seq.state === "swapped") {
            const state = seq.swapState!;
            const n = Math.min(seq.tokens.length - seq.numComputed, budget);
            if (this.kv.pool.blocksFor(seq.numComputed + n) + wm > this.kv.freeBlocks) return "blocked";
            const seqId = this.kv.acquireSeqId();
            if (seqId === null) return "blocked";
            this.kv.reserve(seqId, seq.numComputed + n);
            this.swapBytes -= state.byteLength;
            seq.swapState = null;
            if (!this.start(seq, seqId)) return 0;
            swapIn.push({ seq, state }); // restored by the engine before the decode (restoreFailed() if it cannot be)
            return n;
        }
        // a parent swapped in by this step has no KV to share until the engine restores it
        if (shareBlocks > 0 && parent.state === "running" && swapIn.some((x) => x.seq === parent)) return "skip";
        const fork = shareBlocks > 0 && parent.state === "running";
        const limit = Math.floor((seq.tokens.length - 1) / bs);
        if (!fork && this.caches(seq)) seq.hashes = blockHashes(seq.tokens, bs, spec.cacheSalt, seq.hashes, limit * bs);
        // capacity first, then a sequence id (claiming one may drop a parked prefix: not the one this request uses)
        const fits = (hit: { blocks: number; free: number }) => {
            const n = Math.min(seq.tokens.length - hit.blocks * bs, budget);
            return this.kv.pool.blocksFor(hit.blocks * bs + n) - hit.blocks + wm <= this.kv.freeBlocks - hit.free ? n : 0;
        };
        const lookup = () => (fork ? { blocks: shareBlocks, free: 0, last: null } : this.caches(seq) && this.kv.sharing ? this.kv.peek(seq.hashes, limit) : { blocks: 0, free: 0, last: null });
        let hit = lookup();
        if (fits(hit) === 0) return "blocked";
        const seqId = this.kv.acquireSeqId(hit.last);
        if (seqId === null) return "blocked";
        hit = lookup();
        const n = fits(hit);
        if (n === 0) {
            this.kv.release(seqId, false);
            return "blocked";
        }
        let computed = 0;
        if (fork || (this.caches(seq) && this.kv.sharing)) {
            computed = (fork ? (this.kv.fork(parent.seqId, seqId, shareBlocks) ? shareBlocks : 0) : this.kv.attachPrefix(seqId, seq.hashes, limit)) * bs; // counts the lookup, hit or miss
            if (!this.kv.sharing) {
                // the context refused to share cells (it cannot, for this model): planned with a hit, so plan again
                this.kv.release(seqId, false);
                return "blocked";
            }
        }
        if (!this.kv.reserve(seqId, computed + n)) throw new Error("KV reservation failed after the capacity check");
        seq.numComputed = computed;
        if (!seq.admitted) seq.cachedTokens = computed;
        return this.start(seq, seqId) ? n : 0;
    }

    /** Moves an admitted sequence to the running set with its sampler. False if the sampler was refused (the sequence ended). */
    private start(seq: Sequence, seqId: number): boolean {
        this.remove(this.waiting, seq);
        if (!seq.admitted) {
            seq.admitted = true;
            seq.firstScheduledAt = this.now();
        }
        seq.seqId = seqId;
        seq.state = "running";
        this.insert(this.running, seq);
        const params = seq.request.spec.samplers[seq.index];
        const key = samplerKey(params);
        if (key === null || this.seqSampler[seqId] !== key) {
            // a sequence resumed after preemption replays what it generated into its fresh chain, so its
            // grammar state and penalty window go on where they were
            const generated = seq.tokens.length - seq.promptLength;
            const withHistory = params !== null && key === null && generated > 0
                ? { ...params, history: Int32Array.from(seq.tokens.slice(seq.promptLength)) } : params;
            try {
                this.backend.setSampler(seqId, withHistory);
                this.seqSampler[seqId] = key;
            } catch (e) {
                this.seqSampler[seqId] = undefined;
                this.end(seq, "error", e);
                return false;
            }
        }
        return true;
    }
}

/**
 * Carries out a step's swaps, in order, and reports each to the scheduler: saves every swap-out's state
 * (a failure: recomputed instead), then restores every swap-in's (a failure: its rows leave the batch and it
 * is recomputed). The engine awaits this between plan() and the decode; nothing else may use the context meanwhile.
 */
export async function runSwaps(scheduler: Scheduler, backend: Pick<StepBackend, "saveSequence" | "restoreSequence">, step: Step): Promise<void> {
    for (const seq of step.swapOut) {
        let state: Uint8Array | null = null;
        try {
            state = await backend.saveSequence(seq.seqId);
        } catch {
            // recompute instead
        }
        scheduler.swappedOut(seq, state);
    }
    for (const { seq, state } of step.swapIn) {
        try {
            await backend.restoreSequence(seq.seqId, state);
        } catch {
            scheduler.restoreFailed(step, seq);
        }
    }
}
