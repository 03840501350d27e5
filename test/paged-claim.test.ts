// claimBlocks (patch 0006, llama_kv_paged_claim): in a paged KV cache a block keeps its K/V after every sequence
// holding it is removed, and a table + claim gives those blocks to any sequence. These tests check that the claimed
// prefix is the one computed (same logprobs and greedy tokens as computing it), that the cell bookkeeping
// (seqPosMin/Max, sharing, swap) follows, and that every misuse is a typed error that changes nothing.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { BatchwiseError, ErrorCode, LlamaContext, LlamaModel } from "../lib/index.js";
import { contextOptions, generate, gpu, loadModel, prefill, randomPrompt, tinyQwen } from "./helpers.js";

// on a GPU the tiny model's head size (16) has no paged attention kernel (test-backend-ops checks the kernel there)
describe("paged KV: claimBlocks", { skip: gpu && "no CUDA paged attention for head size 16" }, () => {
    const bs = 16;
    const paged = { contextSize: 64 * bs, batchSize: 8 * bs, maxSequences: 4, kvBlockSize: bs };
    const table = (...ids: number[]) => Int32Array.from(ids);
    const code = (c: ErrorCode) => (e: unknown) => e instanceof BatchwiseError && e.code === c;

    let model: LlamaModel;
    before(async () => {
        model = await loadModel(tinyQwen);
    });
    after(() => model.dispose());

    async function withContext<T>(o: Parameters<typeof contextOptions>[0], fn: (ctx: LlamaContext) => Promise<T>): Promise<T> {
        const ctx = await model.createContext(contextOptions(o));
        try {
            return await fn(ctx);
        } finally {
            ctx.dispose();
        }
    }

    interface Run {
        tokens: number[];
        /** the top-8 ids and logprobs after the prompt: the logits, more finely than the greedy token */
        topIds: number[];
        topLogprobs: number[];
    }

    /** Decodes `tail` on `seq` from `pos0` and generates greedily, reporting the first output's top logprobs. */
    async function continueOn(ctx: LlamaContext, seq: number, tail: readonly number[], pos0: number, n = 10): Promise<Run> {
        ctx.setSampler(seq, { temperature: 0, logprobs: 8 });
        const first = await ctx.decode({
            tokens: Int32Array.from(tail),
            positions: Int32Array.from(tail, (_, i) => pos0 + i),
            seqIds: new Int32Array(tail.length).fill(seq),
            outputs: Uint8Array.from(tail, (_, i) => (i === tail.length - 1 ? 1 : 0)),
        });
        assert.ok(first.topIds && first.topLogprobs);
        const run: Run = { tokens: [first.tokens[0]], topIds: [...first.topIds.slice(0, 8)], topLogprobs: [...first.topLogprobs.slice(0, 8)] };
        ctx.setSampler(seq, null);
        run.tokens.push(...(await generate(ctx, seq, [run.tokens[0]], n - 1, pos0 + tail.length)));
        return run;
    }

    const prefix = randomPrompt(3 * bs, 51); // three whole blocks
    const tail = randomPrompt(9, 52);

    it("re-attaches the blocks of a removed sequence: the same logprobs and tokens as computing the prompt", async () => {
        // reference 1: the same chunks (prefix, then tail) computed on one sequence: bit-identical K/V and attention
        const ref = await withContext(paged, async (ctx) => {
            ctx.setBlockTable(0, table(0, 1, 2, 3, 4));
            await prefill(ctx, 0, prefix);
            return continueOn(ctx, 0, tail, prefix.length);
        });
        // reference 2: the whole prompt at once in llama.cpp's own (unpaged) cache
        const whole = await withContext({ contextSize: 64 * bs, batchSize: 8 * bs }, (ctx) => generate(ctx, 0, [...prefix, ...tail], 10));
        assert.deepEqual(ref.tokens, whole);

        await withContext(paged, async (ctx) => {
            // A computes the prefix in scattered blocks, then goes entirely: no sequence holds the blocks any more
            ctx.setBlockTable(1, table(40, 3, 17, 9));
            await prefill(ctx, 1, prefix);
            assert.equal(ctx.seqRemove(1), true);
            assert.equal(ctx.seqPosMax(1), -1);

            // without a claim, B holds nothing: decoding from the prefix's end is refused (positions must continue)
            ctx.setBlockTable(2, table(40, 3, 17, 60, 59));
            // (the batch checks only sequences that hold cells; find_slot_paged refuses one that holds none and starts past 0)
            await assert.rejects(continueOn(ctx, 2, tail, prefix.length), code(ErrorCode.KvFull));
            assert.equal(ctx.seqPosMax(2), -1);

            // B's table starts with A's blocks: claim them, decode the rest
            ctx.claimBlocks(2, prefix.length);
            assert.equal(ctx.seqPosMin(2), 0);
            assert.equal(ctx.seqPosMax(2), prefix.length - 1);
            assert.deepEqual(await continueOn(ctx, 2, tail, prefix.length), ref);

            // C claims the same blocks while B holds them (shared cells gain C) and writes its own fourth block
            ctx.setBlockTable(3, table(40, 3, 17, 61, 58));
            ctx.claimBlocks(3, prefix.length);
            assert.deepEqual(await continueOn(ctx, 3, tail, prefix.length), ref);
            // removing B leaves C's cells: C claims again idempotently and goes on
            ctx.seqRemove(2);
            assert.equal(ctx.seqPosMax(3), prefix.length + 9 + 10 - 2);
            ctx.claimBlocks(3, prefix.length);
            assert.equal(ctx.seqPosMax(3), prefix.length + 9 + 10 - 2, "a claim of positions the sequence holds changes nothing");

            // a claim that ends inside a block: the rest of that block (stale rows) is decoded over
            ctx.seqRemove(3);
            ctx.setBlockTable(0, table(40, 3, 17, 62, 57));
            ctx.claimBlocks(0, 2 * bs + 5);
            assert.equal(ctx.seqPosMax(0), 2 * bs + 4);
            assert.deepEqual(await continueOn(ctx, 0, [...prefix.slice(2 * bs + 5), ...tail], 2 * bs + 5), ref);
        });
    });

    it("trusts the table: claiming blocks of another prompt gives that prompt's continuation, not this one's", async () => {
        // the negative control for the test above: the claim does not recompute anything, the blocks are what is read
        const other = randomPrompt(3 * bs, 53);
        await withContext(paged, async (ctx) => {
            ctx.setBlockTable(0, table(10, 11, 12, 13, 14));
            await prefill(ctx, 0, prefix);
            const own = await continueOn(ctx, 0, tail, prefix.length);
            ctx.setBlockTable(1, table(20, 21, 22, 23));
            await prefill(ctx, 1, other);
            ctx.seqRemove(0);
            ctx.seqRemove(1);
            ctx.setBlockTable(2, table(20, 21, 22, 24, 25));
            ctx.claimBlocks(2, prefix.length);
            const wrong = await continueOn(ctx, 2, tail, prefix.length);
            assert.notDeepEqual(wrong.topLogprobs, own.topLogprobs);
        });
    });

    it("saves and restores a claimed sequence (swap) into other blocks", async () => {
        await withContext(paged, async (ctx) => {
            ctx.setBlockTable(0, table(5, 6, 7, 8, 9));
            await prefill(ctx, 0, prefix);
            const ref = await continueOn(ctx, 0, tail, prefix.length);
            ctx.seqRemove(0);

            // B claims the prefix, decodes the tail, is swapped out, and back in with blocks of its own
            ctx.setBlockTable(1, table(5, 6, 7, 30, 32));
            ctx.claimBlocks(1, prefix.length);
            const first = await ctx.decode({
                tokens: Int32Array.from(tail), positions: Int32Array.from(tail, (_, i) => prefix.length + i),
                seqIds: new Int32Array(tail.length).fill(1), outputs: Uint8Array.from(tail, (_, i) => (i === tail.length - 1 ? 1 : 0)),
            });
            assert.equal(first.tokens[0], ref.tokens[0]);
            const state = await ctx.saveSequence(1);
            ctx.seqRemove(1);
            ctx.setBlockTable(1, table(50, 51, 52, 53, 54));
            assert.ok((await ctx.restoreSequence(1, state)) > 0);
            assert.equal(ctx.seqPosMin(1), 0);
            assert.equal(ctx.seqPosMax(1), prefix.length + tail.length - 1);
            const more = await generate(ctx, 1, [first.tokens[0]], 9, prefix.length + tail.length);
            assert.deepEqual([first.tokens[0], ...more], ref.tokens);

            // the original blocks were not touched by the restore: a claim of them still reads the prefix
            ctx.setBlockTable(2, table(5, 6, 7, 31, 33));
            ctx.claimBlocks(2, prefix.length);
            assert.deepEqual(await continueOn(ctx, 2, tail, prefix.length), ref);
        });
    });

    it("refuses bad claims with typed errors and changes nothing", async () => {
        await withContext(paged, async (ctx) => {
            ctx.setBlockTable(0, table(4, 5));
            // beyond the table
            assert.throws(() => ctx.claimBlocks(0, 2 * bs + 1), (e: BatchwiseError) => e.code === ErrorCode.InvalidArgument && e.field === "tokens");
            assert.equal(ctx.seqPosMax(0), -1);
            ctx.setBlockTable(0, table());
            assert.throws(() => ctx.claimBlocks(0, 1), code(ErrorCode.InvalidArgument));
            ctx.claimBlocks(0, 0); // nothing to claim is no error
            assert.equal(ctx.seqPosMax(0), -1);

            // arguments
            for (const bad of [-1, 1.5, Number.NaN, 2 ** 31, "3", null, undefined]) {
                assert.throws(() => ctx.claimBlocks(0, bad as number), (e: BatchwiseError) => e.code === ErrorCode.InvalidArgument && e.field === "tokens", String(bad));
            }
            assert.throws(() => ctx.claimBlocks(4, 0), code(ErrorCode.SeqIdRange));
            assert.throws(() => ctx.claimBlocks(-1, 0), code(ErrorCode.SeqIdRange));

            // a cell holding another position: sequence 1 holds positions 0..bs-1 in block 5; block 5 as sequence 2's
            // second block would give those cells positions bs..2bs-1
            ctx.setBlockTable(1, table(5));
            await prefill(ctx, 1, randomPrompt(bs, 61));
            ctx.setBlockTable(2, table(6, 5));
            assert.throws(() => ctx.claimBlocks(2, 2 * bs), code(ErrorCode.StateFailed));
            assert.equal(ctx.seqPosMax(2), -1, "block 6 was not claimed either");
            // the same block at the position it was computed at is shared
            ctx.setBlockTable(2, table(5, 6));
            ctx.claimBlocks(2, bs);
            assert.equal(ctx.seqPosMax(2), bs - 1);
            ctx.seqRemove(2);

            // a block listed twice would give its cells two positions
            ctx.setBlockTable(3, table(7, 7));
            assert.throws(() => ctx.claimBlocks(3, bs + 1), code(ErrorCode.StateFailed));
            assert.equal(ctx.seqPosMax(3), -1);

            // once no sequence holds block 5, llama.cpp keeps no record of what its rows are: the caller's index
            // (block hashes) is the only one, and a claim at another position is taken at its word
            ctx.seqRemove(1);
            ctx.setBlockTable(2, table(6, 5));
            ctx.claimBlocks(2, 2 * bs);
            assert.equal(ctx.seqPosMax(2), 2 * bs - 1);
        });
    });

    it("random tables, claims, decodes and removals: typed errors only, refusals change nothing, sequences start at 0", async () => {
        // a seeded walk through the calls the engine makes, with tables that collide on purpose
        let x = 12345;
        const rnd = (n: number) => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 16) % n; // the high bits: an LCG's low ones cycle
        const pool = 64, seqs = 4;
        const counts = { claim: 0, claimRefused: 0, decode: 0, decodeRefused: 0, swap: 0, swapRefused: 0 };
        await withContext(paged, async (ctx) => {
            const span = (s: number) => [ctx.seqPosMin(s), ctx.seqPosMax(s)];
            for (let step = 0; step < 300; step++) {
                const s = rnd(seqs), op = rnd(10);
                const before = span(s);
                if (op < 2) {
                    // a table that often shares blocks with the others' (a small region of the pool)
                    ctx.setBlockTable(s, Int32Array.from({ length: 1 + rnd(5) }, () => rnd(step % 3 === 0 ? pool : 12)));
                } else if (op < 5) {
                    const n = rnd(5 * bs + 2);
                    try {
                        ctx.claimBlocks(s, n);
                        counts.claim++;
                        if (n > 0) assert.ok(ctx.seqPosMax(s) >= n - 1);
                    } catch (e) {
                        assert.ok(e instanceof BatchwiseError && (e.code === ErrorCode.InvalidArgument || e.code === ErrorCode.StateFailed), String(e));
                        assert.deepEqual(span(s), before, "a refused claim changes nothing");
                        counts.claimRefused++;
                    }
                } else if (op < 8) {
                    const pos0 = before[1] + 1, k = 1 + rnd(20);
                    try {
                        await prefill(ctx, s, randomPrompt(k, step), pos0);
                        counts.decode++;
                        assert.deepEqual(span(s), [0, pos0 + k - 1]);
                    } catch (e) {
                        assert.ok(e instanceof BatchwiseError && e.code === ErrorCode.KvFull, String(e));
                        assert.deepEqual(span(s), before, "a refused decode leaves nothing behind");
                        counts.decodeRefused++;
                    }
                } else if (op < 9) {
                    ctx.seqRemove(s, rnd(2) === 0 ? -1 : rnd(3 * bs), -1);
                } else if (before[1] >= 0) {
                    // swap out and back into the table it has now (which may have moved since its cells were written)
                    const state = await ctx.saveSequence(s);
                    ctx.seqRemove(s);
                    try {
                        await ctx.restoreSequence(s, state);
                        assert.deepEqual(span(s), before);
                        counts.swap++;
                    } catch (e) {
                        // the table is too short now, or names cells another sequence holds: nothing half-restored
                        assert.ok(e instanceof BatchwiseError && e.code === ErrorCode.StateFailed, String(e));
                        assert.deepEqual(span(s), [-1, -1]);
                        counts.swapRefused++;
                    }
                }
                for (let t = 0; t < seqs; t++) assert.ok([-1, 0].includes(ctx.seqPosMin(t)), `sequence ${t} starts at ${ctx.seqPosMin(t)}`);
            }
            // every path was taken
            process.stderr.write(`paged-claim walk: ${JSON.stringify(counts)}\n`);
            for (const [k, v] of Object.entries(counts)) assert.ok(v > 0, `${k}: ${v}`);
            ctx.clear();
            ctx.setBlockTable(0, table(0, 1, 2));
            ctx.setBlockTable(1, table(3, 4, 5));
            assert.equal(await prefill(ctx, 0, prefix), await prefill(ctx, 1, prefix), "the context still decodes");
        });
    });

    it("refuses a claim of positions the sequence holds in other cells, a claim during a decode, and a context without kvBlockSize", async () => {
        await withContext(paged, async (ctx) => {
            const prompt = randomPrompt(bs, 62);
            ctx.setBlockTable(0, table(8));
            await prefill(ctx, 0, prompt);
            ctx.setBlockTable(0, table(9)); // the table moved, the cells did not
            assert.throws(() => ctx.claimBlocks(0, bs), code(ErrorCode.StateFailed));
            assert.equal(ctx.seqPosMax(0), bs - 1);
            ctx.setBlockTable(0, table(8));
            ctx.claimBlocks(0, bs); // its own cells: nothing to do

            // a decode in flight: the KV memory is not to be touched
            ctx.setBlockTable(1, table(10));
            const pending = prefill(ctx, 1, prompt);
            assert.throws(() => ctx.claimBlocks(0, bs), code(ErrorCode.ContextBusy));
            await pending;
        });
        await withContext(paged, async (ctx) => {
            // the decode side of the rule: two tokens of one batch never share a cell (the second would replace the
            // first and purge its sequence up to it): a table that lists a block twice ...
            ctx.setBlockTable(0, table(7, 7));
            await assert.rejects(prefill(ctx, 0, randomPrompt(bs + 1, 63)), code(ErrorCode.KvFull));
            assert.equal(ctx.seqPosMax(0), -1);
            // ... or two sequences writing a block they share, in one batch
            const p = randomPrompt(4, 64);
            ctx.setBlockTable(1, table(8));
            ctx.setBlockTable(2, table(8));
            await assert.rejects(ctx.decode({
                tokens: Int32Array.from([...p, ...p]), positions: Int32Array.of(0, 1, 2, 3, 0, 1, 2, 3),
                seqIds: Int32Array.of(1, 1, 1, 1, 2, 2, 2, 2), outputs: Uint8Array.of(0, 0, 0, 1, 0, 0, 0, 1),
            }), code(ErrorCode.KvFull));
            assert.deepEqual([ctx.seqPosMax(1), ctx.seqPosMax(2)], [-1, -1]);
            // one after the other, the second finds the first's cells and is refused (it would have to claim them)
            await prefill(ctx, 1, p);
            await assert.rejects(prefill(ctx, 2, p), code(ErrorCode.KvFull));
            ctx.claimBlocks(2, 4);
            assert.equal(ctx.seqPosMax(2), 3);
        });
        await withContext({}, async (ctx) => {
            assert.throws(() => ctx.claimBlocks(0, 0), code(ErrorCode.InvalidArgument));
        });
    });
});
