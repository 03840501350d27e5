// The engine's output processing without the addon: token bytes to streamed text, stop strings, finish
// reasons, logprobs and the result of a request with several choices.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Generation } from "../lib/engine/generation.js";
import { PieceTable, RequestOutput, type OutputTotals, type SequenceCounters } from "../lib/engine/output.js";
import type { GenerateEvent } from "../lib/engine/types.js";

// a vocabulary of byte strings: "é" (0xC3 0xA9) is split over tokens 3 and 4
const VOCAB = ["Hel", "lo", " wor", "\xC3", "\xA9", "ld", "\n\n", "END"].map((s) => Uint8Array.from(s, (c) => c.charCodeAt(0)));
const table = new PieceTable(VOCAB.length, (t) => VOCAB[t]);

function totals(): OutputTotals {
    return { generatedTokens: 0, cachedTokens: 0, finished: { stop: 0, length: 0, abort: 0, error: 0 } };
}

function seq(o: Partial<SequenceCounters> = {}): SequenceCounters {
    return { promptLength: 7, cachedTokens: 0, sampled: 0, preemptions: 0, firstScheduledAt: -1, ...o };
}

function output(n: number, o: { stop?: string[]; requestStops?: number; logprobs?: boolean; seqs?: SequenceCounters[]; totals?: OutputTotals } = {}) {
    const gen = new Generation();
    const events: GenerateEvent[] = [];
    const out = new RequestOutput(1, gen, o.seqs ?? Array.from({ length: n }, () => seq()), { stopStrings: o.stop ?? [], requestStops: o.requestStops, logprobs: o.logprobs ?? false },
        performance.now(), (t) => table.piece(t), o.totals ?? totals());
    // every event as it is pushed (synchronously), and the same events as an iterating caller gets them
    const push = gen.push.bind(gen);
    gen.push = (e) => {
        events.push(e);
        push(e);
    };
    const collect = (async () => {
        const iterated: GenerateEvent[] = [];
        for await (const e of gen) iterated.push(e);
        assert.deepEqual(iterated, events, "the iterator gives every event, in order");
    })();
    return { gen, out, events, collect };
}

describe("request output", () => {
    it("packs every token's bytes once and hands out views of them", () => {
        for (let t = 0; t < VOCAB.length; t++) assert.deepEqual(table.piece(t), VOCAB[t]);
    });

    it("streams whole UTF-8 characters only, and the result's text is the deltas joined", async () => {
        const { out, events, collect } = output(1);
        for (const t of [0, 1, 2, 3]) assert.equal(out.token(0, { token: t }), false);
        // the half character is held back until its second byte comes
        assert.equal(events.filter((e) => e.type === "delta").map((e) => (e as { text: string }).text).join(""), "Hello wor");
        out.token(0, { token: 4 });
        out.token(0, { token: 5 });
        out.finish(0, "length");
        await collect;
        const deltas = events.filter((e) => e.type === "delta") as Extract<GenerateEvent, { type: "delta" }>[];
        assert.equal(deltas.map((d) => d.text).join(""), "Hello woréld");
        assert.ok(deltas.every((d) => !d.text.includes("\uFFFD")), "no replacement character for the split one");
        const done = events.at(-1) as Extract<GenerateEvent, { type: "done" }>;
        assert.equal(done.type, "done");
        assert.equal(done.text, "Hello woréld");
        assert.deepEqual(done.tokens, [0, 1, 2, 3, 4, 5]);
        assert.equal(done.finishReason, "length");
    });

    it("ends a choice at a stop string spanning tokens, without the stop string, and says so to the caller", async () => {
        const t = totals();
        const { out, events, collect } = output(1, { stop: ["wor"], totals: t });
        assert.equal(out.token(0, { token: 0 }), false);
        assert.equal(out.token(0, { token: 1 }), false);
        assert.equal(out.token(0, { token: 2 }), true, "the stop string completes: the caller must stop the sequence");
        assert.equal(out.finished(0), true);
        assert.equal(out.token(0, { token: 5 }), false, "tokens after the end are ignored");
        await collect;
        const done = events.at(-1) as Extract<GenerateEvent, { type: "done" }>;
        assert.equal(done.text, "Hello ");
        assert.equal(done.finishReason, "stop");
        assert.equal(t.finished.stop, 1);
        assert.equal(t.generatedTokens, 3);
    });

    it("reports which of the request's stop strings ended a choice: the one that begins first, not a template's", async () => {
        // "lo w" begins before "wor"; "llo" (a template's stop, after the request's two) begins earlier still
        const run = async (stop: string[], requestStops: number) => {
            const { out, events, collect } = output(1, { stop, requestStops });
            for (const t of [0, 1, 2]) out.token(0, { token: t });
            await collect;
            const fin = events.find((e) => e.type === "finish") as Extract<GenerateEvent, { type: "finish" }>;
            const done = events.at(-1) as Extract<GenerateEvent, { type: "done" }>;
            assert.equal(fin.stopString, done.choices[0].stopString, "the finish event and the result agree");
            return { text: done.text, stopString: done.choices[0].stopString };
        };
        assert.deepEqual(await run(["wor", "lo w"], 2), { text: "Hel", stopString: "lo w" });
        assert.deepEqual(await run(["wor", "lo w", "llo"], 2), { text: "He", stopString: undefined });
        assert.deepEqual(await run(["wor", "lo w", "llo"], 3), { text: "He", stopString: "llo" });
        // a choice that ends without one reports none
        const { out, events, collect } = output(1, { stop: ["zzz"] });
        out.token(0, { token: 0 });
        out.finish(0, "stop");
        await collect;
        assert.equal((events.at(-1) as Extract<GenerateEvent, { type: "done" }>).choices[0].stopString, undefined);
    });

    it("releases text held back for a stop string that never came when the choice ends", async () => {
        const { out, events, collect } = output(1, { stop: ["\n\nEND"] });
        out.token(0, { token: 0 });
        out.token(0, { token: 6 });
        const shown = () => events.filter((e) => e.type === "delta").map((e) => (e as { text: string }).text).join("");
        assert.equal(shown(), "Hel", "the newlines may start the stop string: held back");
        out.finish(0, "length");
        await collect;
        assert.equal(shown(), "Hel\n\n");
    });

    it("ends the request once every choice has ended, with usage and timings from its sequences", async () => {
        const t0 = performance.now();
        const seqs = [seq({ sampled: 2, cachedTokens: 4, preemptions: 1, firstScheduledAt: t0 + 1 }), seq({ sampled: 3, cachedTokens: 4, firstScheduledAt: t0 + 2 })];
        const t = totals();
        const { out, events, collect } = output(2, { seqs, totals: t });
        let done = 0;
        out.onDone = () => done++;
        out.token(1, { token: 0 });
        out.token(0, { token: 1 });
        out.finish(1, "stop");
        assert.equal(done, 0, "choice 0 is still open");
        out.finish(0, "abort");
        out.finish(0, "error", new Error("late"));
        await collect;
        assert.equal(done, 1);
        const r = events.at(-1) as Extract<GenerateEvent, { type: "done" }>;
        assert.deepEqual(r.choices.map((c) => [c.index, c.text, c.finishReason]), [[0, "lo", "abort"], [1, "Hel", "stop"]]);
        assert.equal(r.finishReason, "abort");
        assert.deepEqual(r.usage, { promptTokens: 7, cachedTokens: 4, completionTokens: 5, totalTokens: 12 });
        assert.equal(r.preemptions, 1);
        assert.ok(r.timings.queueMs >= 0 && r.timings.ttftMs >= 0 && r.timings.e2eMs >= r.timings.ttftMs);
        assert.equal(t.cachedTokens, 4, "a request's cached prompt counts once, not per choice");
        assert.deepEqual(t.finished, { stop: 1, length: 0, abort: 1, error: 0 });
        assert.equal(events.filter((e) => e.type === "finish").length, 2, "one finish event per choice");
    });

    it("keeps logprobs per token, leaving out the top entries the sampler did not fill", async () => {
        const { out, events, collect } = output(1, { logprobs: true });
        out.token(0, { token: 2, logprob: -0.5, topIds: Int32Array.from([2, 5, -1]), topLogprobs: Float32Array.from([-0.5, -1.5, 0]) });
        out.finish(0, "length");
        await collect;
        const delta = events.find((e) => e.type === "delta") as Extract<GenerateEvent, { type: "delta" }>;
        assert.deepEqual(delta.logprobs, [{ token: 2, logprob: -0.5, top: [{ token: 2, logprob: -0.5 }, { token: 5, logprob: -1.5 }] }]);
        const r = events.at(-1) as Extract<GenerateEvent, { type: "done" }>;
        assert.deepEqual(r.logprobs, delta.logprobs);
    });

    it("ends every open choice with the error after an internal failure", async () => {
        const { out, events, collect } = output(3);
        out.finish(1, "stop");
        const failure = new Error("decode loop failed");
        out.finishAll("error", failure);
        await collect;
        const r = events.at(-1) as Extract<GenerateEvent, { type: "done" }>;
        assert.deepEqual(r.choices.map((c) => c.finishReason), ["error", "stop", "error"]);
        assert.equal(r.choices[0].error, failure);
        assert.equal(r.error, failure);
    });
});
