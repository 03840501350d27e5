// The scheduler and the KV mapping over a fake context (test/fake-backend.ts) whose output depends on
// what each sequence really holds in KV, on both KV layouts (llama.cpp's unified pool, and the paged cache
// where block tables place every token). A property test drives random arrivals, aborts, priorities, pool
// sizes, preemption modes, logprobs and injected failures (decodes, samplers, swaps, sampled ids), and after
// every step checks the invariants, that every sequence's KV holds exactly its tokens and that nothing read
// or wrote a cell it should not; at the end every request must have ended exactly once with a reason,
// every block must be free, and every output must equal what the request generates alone (with its
// logprobs), or for a request that failed or was aborted, begin it.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { BatchwiseError, ErrorCode } from "../lib/binding/index.js";
import { runSwaps, Scheduler, type FinishReason, type PreemptionMode, type SchedRequest, type SchedulerOptions } from "../lib/scheduler/scheduler.js";
import { FAKE_EOS, FakeBackend, fakeLogprobs, fakeReference, type FakeFaults } from "./fake-backend.js";

const VOCAB = 64;

type Layout = "unified" | "paged";
const LAYOUTS: Layout[] = ["unified", "paged"];

interface Output {
    tokens: number[][];
    /** Per choice, per token: the logprob and top ids the event carried (choices that asked for them). */
    logprobs: { logprob: number; topIds: number[]; topLogprobs: number[] }[][];
    reasons: (FinishReason | null)[];
    errors: unknown[];
}

interface Run {
    sched: Scheduler;
    fake: FakeBackend;
    opts: SchedulerOptions;
    outputs: Map<SchedRequest, Output>;
}

function setup(o: Partial<SchedulerOptions> & { capacity?: number; layout?: Layout; faults?: FakeFaults; claimsUnsupported?: boolean } = {}): Run {
    const { capacity, layout, faults, claimsUnsupported, ...rest } = o;
    const opts: SchedulerOptions = {
        numBlocks: 32, blockSize: 4, maxRunning: 4, seqIds: 8, batchTokens: 32, maxContext: 128, prefixCache: true,
        preemption: "recompute", swapSpaceBytes: 1 << 20, watermark: 0, isEog: (t) => t === FAKE_EOS, vocabSize: VOCAB,
        pagedKv: layout === "paged", ...rest,
    };
    const fake = new FakeBackend(capacity ?? opts.numBlocks * opts.blockSize, opts.seqIds, VOCAB, { blockSize: opts.pagedKv ? opts.blockSize : 0, faults, claimsUnsupported });
    return { sched: new Scheduler(fake, opts), fake, opts, outputs: new Map() };
}

function submit(run: Run, prompt: number[], extra: { maxTokens?: number; priority?: number; n?: number; useCache?: boolean; salt?: string; logprobs?: number } = {}): SchedRequest {
    const n = extra.n ?? 1;
    const r = run.sched.submit({
        prompt, n, maxTokens: extra.maxTokens ?? 8, priority: extra.priority ?? 0, ignoreEos: false, stopTokens: new Set(),
        samplers: Array.from({ length: n }, () => (extra.logprobs === undefined ? { temperature: 0 } : { temperature: 0, logprobs: extra.logprobs })),
        useCache: extra.useCache ?? true, cacheSalt: extra.salt ?? "",
    }, run.outputs.size + 1);
    const each = <T>(f: () => T) => Array.from({ length: n }, f);
    run.outputs.set(r, { tokens: each(() => []), logprobs: each(() => []), reasons: each(() => null), errors: each(() => undefined) });
    return r;
}

/** Every running sequence's KV holds exactly its computed tokens. */
function checkKv(run: Run): void {
    run.sched.checkInvariants();
    for (const r of run.outputs.keys()) {
        for (const s of r.seqs) {
            if (s.state !== "running") continue;
            assert.deepEqual(run.fake.contents(s.seqId), s.tokens.slice(0, s.numComputed), `KV of request ${r.id} choice ${s.index}`);
        }
    }
    assert.ok(run.fake.usedCells <= run.fake.capacity);
    assert.deepEqual(run.fake.violations, [], "no sequence read or wrote a cell it should not");
}

/** One turn of the engine's loop: plan, the swaps, the decode (its failure to fail()), the results. */
async function step(run: Run): Promise<boolean> {
    const plan = run.sched.plan();
    if (plan) {
        run.sched.checkInvariants();
        await runSwaps(run.sched, run.fake, plan);
        if (plan.entries.length > 0) {
            let res;
            try {
                res = await run.fake.decode(plan.batch);
            } catch (e) {
                run.sched.fail(plan, e);
            }
            if (res) run.sched.complete(plan, res);
        }
    }
    for (const e of run.sched.takeEvents()) {
        const o = run.outputs.get(e.seq.request)!;
        if (e.kind === "token") {
            o.tokens[e.seq.index].push(e.token);
            if (e.logprob !== undefined && (e.seq.request.spec.samplers[e.seq.index]?.logprobs ?? -1) >= 0) {
                o.logprobs[e.seq.index].push({ logprob: e.logprob, topIds: Array.from(e.topIds ?? []), topLogprobs: Array.from(e.topLogprobs ?? []) });
            }
        } else {
            assert.equal(o.reasons[e.seq.index], null, "one finish per sequence");
            o.reasons[e.seq.index] = e.reason;
            o.errors[e.seq.index] = e.error;
        }
    }
    checkKv(run);
    return plan !== null;
}

async function drain(run: Run, limit = 10_000): Promise<void> {
    for (let i = 0; i < limit && run.sched.busy; i++) await step(run);
    assert.equal(run.sched.busy, false, "the scheduler went idle");
}

function prompt(len: number, seed: number, prefix: number[] = []): number[] {
    let x = seed * 7919 + 13;
    const out = prefix.slice(0, len);
    while (out.length < len) {
        x = (x * 1103515245 + 12345) >>> 0;
        out.push(1 + (x % (VOCAB - 1)));
    }
    return out;
}

for (const layout of LAYOUTS) describe(`scheduler (${layout} KV)`, () => {
    it("runs a request to the same tokens as the greedy reference", async () => {
        const run = setup({ layout });
        const p = prompt(10, 1);
        const r = submit(run, p, { maxTokens: 12 });
        await drain(run);
        const want = fakeReference(p, 12, 128, VOCAB);
        assert.deepEqual(run.outputs.get(r)!.tokens[0], want.tokens);
        assert.equal(run.outputs.get(r)!.reasons[0], want.reason);
        assert.equal(run.sched.kv.stats().used, 0, "every block is free at the end");
    });

    it("chunks a long prompt across steps while a running sequence keeps decoding", async () => {
        const run = setup({ layout, batchTokens: 8, numBlocks: 64 });
        const a = submit(run, prompt(5, 2), { maxTokens: 30 });
        await step(run); // a's prompt
        const b = submit(run, prompt(60, 3), { maxTokens: 2 });
        const seen: number[] = [];
        for (let i = 0; i < 6; i++) {
            const before = a.seqs[0].tokens.length;
            await step(run);
            seen.push(a.seqs[0].tokens.length - before);
            assert.ok(b.seqs[0].numComputed <= 8 * (i + 1), "the long prompt takes at most the step budget");
        }
        assert.ok(seen.every((d) => d === 1) || a.seqs[0].state === "finished", `a decoded every step: ${seen}`);
        await drain(run);
        for (const r of [a, b]) {
            const want = fakeReference(r.seqs[0].tokens.slice(0, r.seqs[0].promptLength), r.spec.maxTokens, 128, VOCAB);
            assert.deepEqual(run.outputs.get(r)!.tokens[0], want.tokens);
        }
    });

    it("lets a short prompt past long ones: one long prompt prefills at a time while others wait, and the step's leftover goes back to it only when nobody gets a token from the step", async () => {
        const run = setup({ layout, batchTokens: 32, prefillChunk: 8, longPrefills: 1, numBlocks: 256, maxContext: 256, maxRunning: 4 });
        const long = submit(run, prompt(200, 4), { maxTokens: 2 });
        await step(run);
        assert.equal(long.seqs[0].numComputed, 32, "alone: the whole budget");
        const long2 = submit(run, prompt(150, 6), { maxTokens: 2 });
        const short = submit(run, prompt(6, 5), { maxTokens: 3 });
        await step(run);
        assert.equal(short.seqs[0].numComputed, 6, "the short prompt went in at once, past the second long one");
        assert.equal(run.outputs.get(short)!.tokens[0].length, 1, "and has its first token");
        assert.equal(long2.seqs[0].state, "waiting", "the second long prompt waits for the first one's turn to end");
        assert.equal(long.seqs[0].numComputed, 32 + 8, "the first long prompt: only its chunk, since the short one gets its first token from this step");
        await step(run);
        assert.equal(long.seqs[0].numComputed, 32 + 8 + 8, "a decode and one long prompt share the next step: again only the chunk, so the decode's step stays short");
        while (short.seqs[0].state !== "finished") await step(run);
        const before = long.seqs[0].numComputed;
        await step(run);
        assert.equal(long.seqs[0].numComputed, before + 32, "with nobody waiting for a token, the long prompt takes the whole step again");
        await drain(run);
        for (const r of [long, long2, short]) {
            const want = fakeReference(r.seqs[0].tokens.slice(0, r.seqs[0].promptLength), r.spec.maxTokens, 256, VOCAB);
            assert.deepEqual(run.outputs.get(r)!.tokens[0], want.tokens);
        }
    });

    it("shares a cached prefix instead of recomputing it, and keeps tenants apart", async () => {
        const run = setup({ layout, numBlocks: 64 });
        const common = prompt(24, 4);
        submit(run, prompt(30, 5, common));
        await drain(run);
        const before = run.fake.tokensDecoded;
        const b = submit(run, prompt(30, 6, common));
        await drain(run);
        assert.equal(b.seqs[0].cachedTokens, 24, "six full blocks of the common prefix were found");
        assert.ok(run.fake.tokensDecoded - before < 30, "the shared part was not computed again");
        const c = submit(run, prompt(30, 6, common), { salt: "tenant-2" });
        await drain(run);
        assert.equal(c.seqs[0].cachedTokens, 0, "another cache salt sees nothing");
        const d = submit(run, prompt(30, 6, common), { useCache: false });
        await drain(run);
        assert.equal(d.seqs[0].cachedTokens, 0, "a request that opts out computes everything");
        for (const r of [b, c, d]) {
            assert.deepEqual(run.outputs.get(r)!.tokens[0], fakeReference(r.seqs[0].tokens.slice(0, 30), 8, 128, VOCAB).tokens);
        }
    });

    it("computes the prompt of n choices once", async () => {
        const run = setup({ layout, numBlocks: 64, prefixCache: false });
        const p = prompt(41, 7);
        const r = submit(run, p, { n: 4, maxTokens: 5 });
        await drain(run);
        const want = fakeReference(p, 5, 128, VOCAB).tokens;
        for (let i = 0; i < 4; i++) assert.deepEqual(run.outputs.get(r)!.tokens[i], want, `choice ${i}`);
        const prompts = run.fake.tokensDecoded - 4 * Math.max(0, want.length - 1);
        assert.ok(prompts <= 41 + 3 * 4 + 3, `prompt tokens computed: ${prompts}`);
    });

    it("preempts the latest arrival of the lowest priority when KV runs out, and finishes everyone correctly", async () => {
        for (const preemption of ["recompute", "swap"] as PreemptionMode[]) {
            const run = setup({ layout, numBlocks: 12, maxRunning: 4, preemption, maxContext: 48 });
            const reqs = [0, 1, 2, 3].map((i) => submit(run, prompt(8, 20 + i), { maxTokens: 16, priority: i === 1 ? -1 : 0 }));
            await drain(run);
            assert.ok(run.sched.stats().preemptions > 0, `${preemption}: the pool was too small for all four`);
            assert.equal(reqs[1].seqs[0].preemptions, 0, "the high-priority request is never the victim");
            for (const r of reqs) {
                const want = fakeReference(r.seqs[0].tokens.slice(0, 8), 16, 48, VOCAB);
                assert.deepEqual(run.outputs.get(r)!.tokens[0], want.tokens, `${preemption}: request ${r.id}`);
            }
            assert.equal(run.sched.stats().swapBytes, 0);
        }
    });

    it("plans synchronously: a swap victim keeps its id and cells until the engine saves its state, and its blocks go to others at once", async () => {
        const run = setup({ layout, numBlocks: 12, maxRunning: 4, preemption: "swap", maxContext: 48 });
        const reqs = [0, 1, 2, 3].map((i) => submit(run, prompt(8, 20 + i), { maxTokens: 16 }));
        let swaps = 0;
        for (let i = 0; i < 500 && run.sched.busy; i++) {
            const plan = run.sched.plan();
            assert.ok(!(plan as unknown instanceof Promise), "plan() returns the step itself");
            run.sched.checkInvariants();
            for (const v of plan?.swapOut ?? []) {
                swaps++;
                assert.equal(v.state, "swapping");
                assert.equal(run.sched.kv.stateOf(v.seqId), "saving");
                assert.deepEqual(run.fake.contents(v.seqId), v.tokens.slice(0, v.numComputed), "its cells are intact until saved");
                assert.ok(!plan!.batch.seqIds.includes(v.seqId), "its id is not reused in the step");
            }
            if (plan?.swapOut.length) {
                assert.throws(() => run.sched.plan(), /not reported/, "the next plan waits for the swap-outs");
                const held = new Set<number>();
                for (const r of run.outputs.keys()) for (const s of r.seqs) if (s.state === "running") for (const b of run.sched.kv.blocksOf(s.seqId)) held.add(b.id);
                assert.equal(run.sched.kv.stats().used, held.size, "a victim's blocks went back to the pool in the plan: only running sequences hold blocks");
            }
            if (plan) {
                await runSwaps(run.sched, run.fake, plan);
                if (plan.entries.length > 0) run.sched.complete(plan, await run.fake.decode(plan.batch));
            }
            run.sched.takeEvents();
            checkKv(run);
        }
        assert.equal(run.sched.busy, false);
        assert.ok(swaps > 0, "the pool was too small for all four: sequences were swapped out");
        assert.ok(reqs.every((r) => r.seqs[0].state === "finished"));
    });

    it("recomputes a sequence whose state could not be saved, or restored, and every request still gets its tokens", async () => {
        for (const kind of ["save", "restore"] as const) {
            // every save (or every restore, part-way) fails
            const run = setup({ layout, numBlocks: 12, maxRunning: 4, preemption: "swap", maxContext: 48, faults: { random: () => 0, [kind]: 1 } });
            const reqs = [0, 1, 2, 3].map((i) => submit(run, prompt(8, 20 + i), { maxTokens: 16, logprobs: 1 }));
            await drain(run);
            assert.ok(run.fake.injected[kind] > 0, `${kind}: failures were injected`);
            if (kind === "save") assert.equal(run.fake.calls.restoreSequence, 0, "nothing was swapped out, so nothing was restored");
            for (const r of reqs) {
                const out = run.outputs.get(r)!;
                assert.deepEqual(out.tokens[0], fakeReference(r.seqs[0].tokens.slice(0, 8), 16, 48, VOCAB).tokens, `${kind}: request ${r.id}`);
                assert.notEqual(out.reasons[0], "error");
            }
            assert.equal(run.sched.stats().swapBytes, 0);
            assert.equal(run.sched.kv.stats().used, 0);
        }
    });

    it("does not offer a block to other requests before its KV is written", async () => {
        // a prompt chunk ending mid-block, and the same prompt arriving in between
        const run = setup({ layout, batchTokens: 6 });
        const p = prompt(10, 40);
        const a = submit(run, p, { maxTokens: 3 });
        await step(run);
        assert.equal(a.seqs[0].numComputed, 6);
        const b = submit(run, p.slice(), { maxTokens: 3 });
        await drain(run);
        assert.equal(b.seqs[0].cachedTokens, 4, "only the one block whose KV was complete is shared");
        const want = fakeReference(p, 3, 128, VOCAB);
        for (const r of [a, b]) {
            assert.deepEqual(run.outputs.get(r)!.reasons, [want.reason]);
            assert.deepEqual(run.outputs.get(r)!.tokens[0], want.tokens);
        }
    });

    if (layout === "unified") it("claims a sequence id without dropping the cached prefix the request is about to use", async () => {
        const run = setup({ layout, maxRunning: 1, seqIds: 2, numBlocks: 64 });
        const pa = prompt(20, 41), pb = prompt(20, 42);
        submit(run, pa, { maxTokens: 2 });
        await drain(run);
        submit(run, pb, { maxTokens: 2 });
        await drain(run);
        const again = submit(run, pa.slice(), { maxTokens: 2 });
        await drain(run);
        assert.equal(again.seqs[0].cachedTokens, 16, "the LRU parked id held this prefix: another one was dropped instead");
    });

    if (layout === "paged") it("keeps cached prefixes without sequence ids: the prefix cache is bounded by blocks alone", async () => {
        // one sequence id in all (maxRunning 1): the unified pool could keep no prefix at all
        const run = setup({ layout, maxRunning: 1, seqIds: 1, numBlocks: 64 });
        const prompts = [41, 42, 43, 44].map((seed) => prompt(20, seed));
        for (const p of prompts) {
            submit(run, p, { maxTokens: 2 });
            await drain(run);
        }
        assert.equal(run.fake.usedCells, 0, "no cells are held once nothing runs");
        for (const p of prompts) {
            const again = submit(run, p.slice(), { maxTokens: 2 });
            await drain(run);
            assert.equal(again.seqs[0].cachedTokens, 16, "every prefix was kept");
            assert.deepEqual(run.outputs.get(again)!.tokens[0], fakeReference(p, 2, 128, VOCAB).tokens);
        }
        assert.equal(run.fake.calls.seqCopy, 0, "the paged cache shares cells by claims, not through sequence ids");
        assert.ok(run.fake.calls.claimBlocks >= 4);
        assert.equal(run.sched.kv.stats().parkedSeqIds, 0);
    });

    if (layout === "paged") it("stops sharing cells when the context cannot claim them (M-RoPE), and every request still gets its tokens", async () => {
        const run = setup({ layout, numBlocks: 64, claimsUnsupported: true });
        const common = prompt(24, 4);
        const first = submit(run, prompt(30, 5, common), { maxTokens: 4 });
        await drain(run);
        const later = [submit(run, prompt(30, 6, common), { maxTokens: 4 }), submit(run, prompt(30, 7, common), { maxTokens: 4, n: 3 })];
        await drain(run);
        assert.equal(run.sched.kv.sharing, false, "the refusal turned sharing off");
        assert.equal(run.fake.calls.claimBlocks, 1, "one refused claim, then none");
        for (const r of [first, ...later]) {
            for (const s of r.seqs) {
                assert.equal(s.cachedTokens, 0);
                assert.deepEqual(run.outputs.get(r)!.tokens[s.index], fakeReference(s.tokens.slice(0, 30), 4, 128, VOCAB).tokens, `request ${r.id} choice ${s.index}`);
            }
        }
        assert.equal(run.sched.kv.stats().used, 0);
    });

    it("preempts lower-priority decodes for a higher-priority prompt, not the other way round", async () => {
        const run = setup({ layout, numBlocks: 14, blockSize: 4, maxRunning: 4, seqIds: 4, batchTokens: 8, maxContext: 48, prefixCache: false });
        const low = [1, 2, 3].map((i) => submit(run, prompt(6, 50 + i), { priority: 5, maxTokens: 30 }));
        await step(run);
        await step(run);
        const high = submit(run, prompt(40, 59), { priority: -10, maxTokens: 4 });
        await drain(run);
        assert.equal(high.seqs[0].preemptions, 0, "the urgent request was never the victim");
        assert.ok(low.some((r) => r.seqs[0].preemptions > 0), "lower-priority sequences made room");
        for (const r of [...low, high]) {
            const want = fakeReference(r.seqs[0].tokens.slice(0, r.seqs[0].promptLength), r.spec.maxTokens, 48, VOCAB);
            assert.deepEqual(run.outputs.get(r)!.tokens[0], want.tokens);
        }
    });

    it("ends aborted requests at the next step and frees their blocks", async () => {
        const run = setup({ layout });
        const a = submit(run, prompt(20, 30), { maxTokens: 100 });
        const b = submit(run, prompt(20, 31), { maxTokens: 100 });
        await step(run);
        await step(run);
        run.sched.finish(a.seqs[0], "abort");
        run.sched.finish(b.seqs[0], "abort");
        await step(run);
        assert.deepEqual(run.outputs.get(a)!.reasons, ["abort"]);
        assert.equal(run.sched.kv.stats().used, 0);
        assert.equal(run.sched.busy, false);
    });
});

describe("scheduler properties", () => {
    const action = fc.oneof(
        { weight: 4, arbitrary: fc.record({ kind: fc.constant("arrive" as const), len: fc.integer({ min: 1, max: 40 }), family: fc.integer({ min: 0, max: 3 }), shared: fc.integer({ min: 0, max: 30 }), maxTokens: fc.integer({ min: 1, max: 20 }), priority: fc.integer({ min: -2, max: 2 }), n: fc.constantFrom(1, 1, 1, 2, 3), cache: fc.boolean(), salt: fc.constantFrom("", "", "x"), logprobs: fc.constantFrom(undefined, undefined, 0, 3) }) },
        { weight: 1, arbitrary: fc.record({ kind: fc.constant("abort" as const), pick: fc.nat() }) },
        { weight: 3, arbitrary: fc.record({ kind: fc.constant("step" as const), steps: fc.integer({ min: 1, max: 4 }) }) },
    );
    const rate = fc.constantFrom(0, 0.02, 0.1, 0.3);
    const config = fc.record({
        blockSize: fc.constantFrom(1, 2, 4, 8),
        // small pools preempt often
        poolTokens: fc.oneof(fc.integer({ min: 16, max: 64 }), fc.integer({ min: 64, max: 256 })),
        maxRunning: fc.integer({ min: 1, max: 6 }),
        extraSeqIds: fc.integer({ min: 0, max: 4 }),
        batchTokens: fc.integer({ min: 6, max: 48 }),
        prefillChunk: fc.option(fc.integer({ min: 1, max: 16 }), { nil: undefined }),
        longPrefills: fc.option(fc.integer({ min: 1, max: 2 }), { nil: undefined }),
        preemption: fc.constantFrom<PreemptionMode>("recompute", "swap"),
        prefixCache: fc.boolean(),
        watermark: fc.constantFrom(0, 0.05),
        swapSpaceBytes: fc.constantFrom(0, 2048, 1 << 16),
        // half the runs inject failures: a decode that rejects part-way, setSampler, save and restore failing, bad ids
        faults: fc.option(fc.record({ seed: fc.integer(), decode: rate, setSampler: rate, save: rate, restore: rate, badToken: rate }), { nil: undefined }),
    });

    /** A seeded generator for the injected failures (mulberry32), so fast-check can replay a run. */
    const random = (seed: number) => () => {
        seed = (seed + 0x6d2b79f5) | 0;
        let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
        t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };

    const COVERING_SEED = Number(process.env.BATCHWISE_COVERING_SEED ?? 1);
    for (const layout of LAYOUTS) {
        const seen = { decode: 0, setSampler: 0, save: 0, restore: 0, badToken: 0, swapOuts: 0, swapIns: 0, preemptions: 0, hits: 0, tables: 0, claims: 0, logprobs: 0 };
        it(`keeps blocks, ref counts and KV contents consistent under random load and failures, and matches the greedy reference (${layout} KV)`, async (t) => {
            const property =
                fc.asyncProperty(config, fc.array(action, { minLength: 1, maxLength: 40, size: "max" }), async (c, actions) => {
                    const numBlocks = Math.floor(c.poolTokens / c.blockSize);
                    const maxContext = Math.min(64, numBlocks * c.blockSize);
                    const faults = c.faults ? { ...c.faults, random: random(c.faults.seed) } : undefined;
                    const run = setup({
                        layout, faults, numBlocks, blockSize: c.blockSize, maxRunning: c.maxRunning, seqIds: c.maxRunning + c.extraSeqIds,
                        batchTokens: Math.max(c.batchTokens, c.maxRunning), prefillChunk: c.prefillChunk, longPrefills: c.longPrefills, maxContext, preemption: c.preemption, prefixCache: c.prefixCache,
                        watermark: c.watermark, swapSpaceBytes: c.swapSpaceBytes,
                    });
                    const families = [0, 1, 2, 3].map((f) => prompt(40, 100 + f));
                    const aborted = new Set<SchedRequest>();
                    for (const a of actions) {
                        if (a.kind === "arrive") {
                            const len = Math.min(a.len, maxContext - 1);
                            const p = prompt(len, run.outputs.size + 1000, families[a.family].slice(0, Math.min(a.shared, len)));
                            submit(run, p, { maxTokens: Math.min(a.maxTokens, maxContext - len), priority: a.priority, n: a.n, useCache: a.cache, salt: a.salt, logprobs: a.logprobs });
                        } else if (a.kind === "abort") {
                            const live = [...run.outputs.keys()].filter((r) => r.seqs.some((s) => s.state !== "finished"));
                            if (live.length > 0) {
                                const r = live[a.pick % live.length];
                                aborted.add(r);
                                for (const s of r.seqs) run.sched.finish(s, "abort");
                            }
                        } else {
                            for (let i = 0; i < a.steps; i++) await step(run);
                        }
                    }
                    await drain(run);
                    assert.equal(run.sched.kv.stats().used, 0, "no block leaked");
                    assert.equal(run.sched.stats().swapBytes, 0, "no swap state leaked");
                    assert.equal(run.sched.kv.stats().activeSeqIds, 0, "no sequence id left active");
                    if (run.sched.kv.stats().parkedSeqIds === 0) assert.equal(run.fake.usedCells, 0, "no cells left but parked prefixes");
                    const injected = run.fake.injected;
                    for (const k of Object.keys(injected) as (keyof typeof injected)[]) seen[k] += injected[k];
                    seen.swapOuts += run.fake.calls.saveSequence;
                    seen.swapIns += run.fake.calls.restoreSequence;
                    seen.preemptions += run.sched.stats().preemptions;
                    seen.hits += run.sched.kv.stats().hits;
                    seen.tables += run.fake.calls.setBlockTable;
                    seen.claims += run.fake.calls.claimBlocks;
                    if (layout === "paged") assert.equal(run.fake.calls.seqCopy, 0, "the paged cache never shares cells through sequence ids");
                    for (const [r, o] of run.outputs) {
                        for (const s of r.seqs) {
                            const reason = o.reasons[s.index];
                            const what = `request ${r.id} choice ${s.index}`;
                            assert.notEqual(reason, null, `${what} ended with a reason`);
                            const want = fakeReference(s.tokens.slice(0, s.promptLength), r.spec.maxTokens, maxContext, VOCAB);
                            const got = o.tokens[s.index];
                            if (reason === "error") {
                                // only a failure injected into it (its decode, its sampler, its sampled id) ends a sequence with an error
                                const e = o.errors[s.index];
                                const injectedHere = e instanceof Error && /^injected: (decode|setSampler)/.test(e.message)
                                    || (injected.badToken > 0 && e instanceof BatchwiseError && (e.code === ErrorCode.DecodeFailed || e.code === ErrorCode.SamplerInvalid));
                                assert.ok(injectedHere, `${what} failed with no failure injected into it: ${String(e)}`);
                                assert.deepEqual(got, want.tokens.slice(0, got.length), `${what}: a failed request's tokens begin its output`);
                            } else if (aborted.has(r) && reason === "abort") {
                                assert.deepEqual(got, want.tokens.slice(0, got.length), "an aborted request's tokens are a prefix of its output");
                            } else {
                                assert.equal(reason, want.reason, what);
                                assert.deepEqual(got, want.tokens, what);
                            }
                            const k = r.spec.samplers[s.index]?.logprobs;
                            if (k !== undefined) {
                                seen.logprobs += got.length;
                                assert.equal(o.logprobs[s.index].length, got.length, `${what}: a logprob with every token`);
                                o.logprobs[s.index].forEach((lp, i) => {
                                    const ref = fakeLogprobs([...s.tokens.slice(0, s.promptLength), ...got.slice(0, i)], VOCAB, k);
                                    assert.equal(lp.logprob, Math.fround(ref.logprob), `${what} token ${i}: logprob`);
                                    assert.deepEqual(lp.topIds.slice(0, k), ref.topIds, `${what} token ${i}: top ids`);
                                    assert.deepEqual(lp.topLogprobs.slice(0, k), ref.topLogprobs.map(Math.fround), `${what} token ${i}: top logprobs`);
                                });
                            }
                        }
                    }
                });
            // a fixed seed whose runs reach every kind of event (a save failure needs swap preemption, swap space and
            // an injected fault together: 150 random runs miss it now and then), then fresh random runs
            // (BATCHWISE_FUZZ_SEED replays one)
            await fc.assert(property, { numRuns: 150, seed: COVERING_SEED });
            const replay = process.env.BATCHWISE_FUZZ_SEED;
            await fc.assert(property, { numRuns: 150, ...(replay !== undefined && { seed: Number(replay) }) });
            t.diagnostic(`${layout}: ${JSON.stringify(seen)}`);
            // the runs reached what they are meant to test (save and restore failures are rarer: tested on their own above)
            for (const [k, v] of Object.entries(seen)) {
                if (k === "save" || k === "restore" || ((k === "tables" || k === "claims") && layout !== "paged")) continue;
                assert.ok(v > 0, `${layout}: no ${k} in any run`);
            }
            if (layout === "unified") assert.equal(seen.tables + seen.claims, 0);
        });
    }
});
