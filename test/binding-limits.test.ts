// What the fuzz suites (fuzz-binding, fuzz-http) found, pinned: each input here aborted or crashed the
// process, or took gigabytes or seconds, before the binding refused it. Each must now be a
// BatchwiseError with ERR_INVALID_ARGUMENT, at once.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { BatchwiseError, ErrorCode, jsonSchemaToGrammar, LlamaContext, LlamaModel } from "../lib/index.js";
import { LIMITS } from "../lib/binding/index.js";
import { validateRequest } from "../lib/engine/request.js";
import { contextOptions, loadModel, modelPath, tinyQwen } from "./helpers.js";

const invalid = (pattern?: RegExp) => (e: unknown) => {
    assert.ok(e instanceof BatchwiseError, `expected a BatchwiseError, got ${e}`);
    assert.equal(e.code, ErrorCode.InvalidArgument, e.message);
    if (pattern) assert.match(e.message, pattern);
    return true;
};

/** Runs fn and checks it took less than `ms` (the inputs below used to take seconds). */
async function quick<T>(ms: number, fn: () => T | Promise<T>): Promise<T> {
    const t0 = performance.now();
    try {
        return await fn();
    } finally {
        const took = performance.now() - t0;
        assert.ok(took < ms, `took ${took.toFixed(0)} ms`);
    }
}

describe("binding limits (fuzz findings)", () => {
    let model: LlamaModel;
    let ctx: LlamaContext;

    before(async () => {
        model = await loadModel(tinyQwen);
        ctx = await model.createContext(contextOptions({ contextSize: 256, seqIds: 2, batchSize: 64 }));
    });
    after(() => {
        ctx.dispose();
        model.dispose();
    });

    it("reads its limits from the addon's one table (LIMITS), and the addon enforces each", () => {
        assert.ok(Object.isFrozen(LIMITS));
        assert.deepEqual({ ...LIMITS }, {
            maxLogprobs: 20, maxLogitBias: 1024, maxGrammarBytes: 128 * 1024, maxGrammarNesting: 1000, maxSchemaBytes: 1024 * 1024,
            maxSchemaDepth: 128, maxSchemaOptionalPropertiesSquared: 256 * 256, maxChatJsonBytes: 32 * 1024 * 1024, maxChatJsonDepth: 136,
            maxChatTemplateBytes: 1024 * 1024, maxGrammarTriggers: 256, maxGrammarTriggerBytes: 4096, maxSamplerPrefillBytes: 64 * 1024,
            maxReasoningTagBytes: 256, maxReasoningEndTags: 16, maxThreads: 512, maxContextSize: 16 * 1024 * 1024, maxKvBlockSize: 4096,
        });
        assert.throws(() => { (LIMITS as { maxLogprobs: number }).maxLogprobs = 100; }, TypeError);
        // logprobs: the addon took up to 100 while the engine's intake took 20
        const field = (name: string, code: string = ErrorCode.InvalidArgument) => (e: unknown) => {
            assert.ok(e instanceof BatchwiseError, String(e));
            assert.equal(e.code, code, e.message);
            assert.equal(e.field, name, e.message);
            return true;
        };
        assert.throws(() => ctx.setSampler(0, { logprobs: LIMITS.maxLogprobs + 1 }), field("logprobs", ErrorCode.SamplerInvalid));
        ctx.setSampler(0, { logprobs: LIMITS.maxLogprobs });
        const bias = (n: number) => Array.from({ length: n }, (_, i) => [i + 10, -1] as [number, number]);
        assert.throws(() => ctx.setSampler(0, { logitBias: bias(LIMITS.maxLogitBias + 1) }), field("logitBias"));
        assert.throws(() => ctx.setSampler(0, { logitBias: Object.fromEntries(bias(LIMITS.maxLogitBias + 1)) }), field("logitBias"));
        ctx.setSampler(0, { logitBias: bias(LIMITS.maxLogitBias) });
        // a history longer than the context (256) cannot be one the sequence generated: refused before each token is replayed
        assert.throws(() => ctx.setSampler(0, { history: new Int32Array(257).fill(100) }), field("history"));
        ctx.setSampler(0, { history: new Int32Array(256).fill(100) });
        ctx.setSampler(0, null);
    });

    it("the addon checks a grammar's and a schema's limits itself, with the field named", () => {
        const raw = ctx.native; // no JS checks in front of it
        const deep = "root ::= " + "(".repeat(LIMITS.maxGrammarNesting + 1) + '"a"' + ")".repeat(LIMITS.maxGrammarNesting + 1);
        for (const call of [() => raw.setSampler(0, { grammar: deep }), () => model.native.checkGrammar(deep)]) {
            assert.throws(call, (e: { code?: string; field?: string; reason?: string }) =>
                e.code === ErrorCode.InvalidArgument && e.field === "grammar" && e.reason === `nests groups more than ${LIMITS.maxGrammarNesting} deep`);
        }
        model.checkGrammar("root ::= " + "(".repeat(LIMITS.maxGrammarNesting) + '"a"' + ")".repeat(LIMITS.maxGrammarNesting));
        assert.throws(() => raw.setSampler(0, { grammar: 'root ::= "a"{ 12 # twelve\n, 011 }' }), (e: { field?: string; message: string }) =>
            e.field === "grammar" && /repeats something \{ 12 # twelve\n, 011 \}: the most times is below the least/.test(e.message));
        model.checkGrammar('root ::= "a"{ 9 , 0010 }');
        assert.throws(() => jsonSchemaToGrammar('{"type":"array","items":'.repeat(LIMITS.maxSchemaDepth) + "{}" + "}".repeat(LIMITS.maxSchemaDepth)),
            (e: BatchwiseError) => e.field === "schema" && /nests objects and arrays more than 128 deep/.test(e.message));
        // strings are skipped when counting nesting
        assert.equal(typeof jsonSchemaToGrammar({ type: "string", description: "[[[[{{{{".repeat(100) }), "string");
    });

    it("a grammar nested 20,000 groups deep is refused (llama.cpp's parser recursed until the stack overflowed: SIGSEGV)", () => {
        const g = "root ::= " + "(".repeat(20_000) + '"a"' + ")".repeat(20_000);
        assert.throws(() => model.checkGrammar(g), invalid(/nests groups more than 1000 deep/));
        assert.throws(() => ctx.setSampler(0, { grammar: g }), invalid(/nests groups/));
        // parentheses inside strings, classes and comments are not groups
        model.checkGrammar('root ::= "((((" [(] "a" # ((((((\n');
    });

    it("a repetition whose maximum is below its minimum is refused (llama.cpp made 2^64 rules: memory until killed)", () => {
        assert.throws(() => model.checkGrammar('root ::= "a"{5,2}'), invalid(/\{5,2\}/));
        assert.throws(() => model.checkGrammar('root ::= "a"{ 5 # five\n , 2 }'), invalid(/most times is below the least/));
        assert.throws(() => ctx.setSampler(0, { grammar: 'root ::= [a-z]{3,1}' }), invalid());
        model.checkGrammar('root ::= "a"{2,5} "{5,2}"'); // in order, or inside a string: fine
        // a JSON schema with minLength > maxLength converts to such a grammar
        const g = jsonSchemaToGrammar({ type: "string", minLength: 5, maxLength: 2 });
        assert.throws(() => model.checkGrammar(g), invalid());
    });

    it("grammars over 128 KiB are refused (parsing one of 20,000 alternatives took seconds on the JS thread)", async () => {
        const g = "root ::= " + Array.from({ length: 20_000 }, (_, i) => `"${i}"`).join(" | ");
        await quick(100, () => assert.throws(() => model.checkGrammar(g), invalid(/bytes long/)));
    });

    it("JSON schemas nested deeper than 128 are refused (20,000 deep: SIGSEGV; 5,000 deep: a 187 MB grammar in 5 s)", async () => {
        const deep = (d: number) => '{"type":"array","items":'.repeat(d) + "{}" + "}".repeat(d);
        assert.throws(() => jsonSchemaToGrammar(deep(20_000)), invalid(/nests objects and arrays more than 128 deep/));
        await quick(200, () => assert.throws(() => jsonSchemaToGrammar(deep(5_000)), invalid()));
        assert.equal(typeof jsonSchemaToGrammar(deep(100)), "string");
        // as an object too deep for JSON.stringify, or one it cannot write at all: a BatchwiseError, not a RangeError or TypeError
        let o: object = {};
        for (let i = 0; i < 100_000; i++) o = { items: o };
        assert.throws(() => jsonSchemaToGrammar(o), invalid());
        const cyclic: Record<string, unknown> = { type: "object" };
        cyclic.properties = { self: cyclic };
        assert.throws(() => jsonSchemaToGrammar(cyclic), invalid(/cannot be written as JSON/));
        assert.throws(() => jsonSchemaToGrammar({ type: "integer", minimum: 10n } as unknown as object), invalid());
    });

    it("objects with too many optional properties are refused (1,000 took 3.5 s, 2,000 took 30 s)", async () => {
        const props = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`p${i}`, { type: "string" }]));
        await quick(200, () => assert.throws(() => jsonSchemaToGrammar({ type: "object", properties: props(1000) }), invalid(/optional properties/)));
        // required ones are cheap, and are not counted
        const all = props(1000);
        assert.equal(typeof jsonSchemaToGrammar({ type: "object", properties: all, required: Object.keys(all) }), "string");
        assert.equal(typeof jsonSchemaToGrammar({ type: "object", properties: props(200) }), "string");
    });

    it("more sequences than min(contextSize, batchSize) are refused (GGML_ASSERT(n_outputs_max <= cparams.n_outputs_max): abort)", async () => {
        await assert.rejects(model.createContext({ contextSize: 256, seqIds: 4, batchSize: 2 }), invalid(/seqIds/));
        await assert.rejects(model.createContext({ contextSize: 3, seqIds: 4 }), invalid(/seqIds/));
        await assert.rejects(model.createContext({ contextSize: 3, maxSequences: 4 }), invalid(/maxSequences/)); // named as given
        (await model.createContext({ contextSize: 4, seqIds: 4, batchSize: 4 })).dispose();
    });

    it("more threads than ggml's 512 are refused (pthread_create failed: GGML_ASSERT(rc == 0), abort)", async () => {
        await assert.rejects(model.createContext({ contextSize: 64, threads: 100_000 }), invalid(/threads/));
        await assert.rejects(model.createContext({ contextSize: 64, threadsBatch: 2 ** 31 - 1 }), invalid(/threadsBatch/));
    });

    it("sampler numbers beyond a 32-bit float are refused (temperature 1e300 + a grammar: NaN logits, ERR_INTERNAL, then an abort on the next decode)", () => {
        assert.throws(() => ctx.setSampler(0, { temperature: 1e300, grammar: 'root ::= "a"' }), invalid(/temperature/));
        assert.throws(() => ctx.setSampler(0, { temperature: 3.4028235677973366e38 }), invalid(/temperature/));
        assert.throws(() => ctx.setSampler(0, { repeatPenalty: 1e39 }), invalid(/repeatPenalty/));
        assert.throws(() => ctx.setSampler(0, { logitBias: [[100, 1e300]] }), invalid(/logitBias/));
        assert.throws(() => ctx.setSampler(0, { logitBias: { 100: Infinity } }), invalid(/logitBias/));
        ctx.setSampler(0, { temperature: 1e30, logitBias: [[100, -Infinity]], grammar: 'root ::= "a"' });
        ctx.setSampler(0, null);
        // and at the engine's intake, as a 400 rather than a failed choice
        assert.throws(() => validateRequest({ temperature: 1e300 }, 1000), invalid(/'temperature'/));
        assert.throws(() => validateRequest({ repeatPenalty: 1e300 }, 1000), invalid(/'repeatPenalty'/));
        assert.throws(() => validateRequest({ logitBias: { 5: 1e300 } }, 1000), invalid(/'logitBias'/));
        assert.equal(validateRequest({ temperature: 1e30, logitBias: { 5: -Infinity } }, 1000).samplers.length, 1);
    });

    it("the addon itself refuses sampler numbers beyond a 32-bit float (it cast them to Infinity when the JS checks were passed by)", () => {
        const raw = ctx.native; // no JS checks in front of it
        const refused = (pattern: RegExp) => (e: unknown) => {
            assert.equal((e as { code?: unknown }).code, ErrorCode.InvalidArgument, String(e));
            assert.match((e as Error).message, pattern);
            return true;
        };
        for (const k of ["temperature", "topP", "minP", "repeatPenalty", "presencePenalty", "frequencyPenalty"] as const) {
            for (const v of [1e300, -1e300, 3.4028235677973366e38, 1e39]) {
                assert.throws(() => raw.setSampler(0, { [k]: v }), refused(new RegExp(`'${k}' \\(${String(v).replace("+", "\\+")}\\) is beyond the range of a 32-bit float`)));
            }
        }
        for (const bias of [1e300, -1e300, Infinity, 3.4028235677973366e38]) {
            assert.throws(() => raw.setSampler(0, { logitBias: [[100, bias]] }), refused(/logitBias values must be 32-bit floats or -Infinity/));
            assert.throws(() => raw.setSampler(0, { logitBias: { 100: bias } }), refused(/logitBias/));
        }
        // the largest float (and what rounds to it), and -Infinity as a bias, are taken
        raw.setSampler(0, { temperature: 3.4028234663852886e38, frequencyPenalty: -3.4028235e38, logitBias: [[100, -Infinity], [101, 3.4028235e38]] });
        raw.setSampler(0, null);
    });

    it("a history with an end-of-generation token the grammar does not allow yet is refused (llama.cpp's grammar aborted the process)", () => {
        // found by the long fuzz: GGML_ABORT in llama_grammar_accept_impl, which no try/catch stops
        const eot = model.metadata.tokens.eot;
        assert.ok(model.isEog(eot));
        for (const history of [Int32Array.of(eot), Int32Array.of(...[..."12"].map((c) => c.charCodeAt(0) - 48 + 15), eot)]) {
            assert.throws(() => ctx.setSampler(0, { grammar: "root ::= [0-9]{3}", history }), (e: BatchwiseError) =>
                e.code === ErrorCode.SamplerInvalid && e.field === "history" && /does not fit the grammar/.test(e.message));
        }
        // once the grammar is complete, the end of generation fits
        const digits = Int32Array.from([..."123"].map((c) => c.charCodeAt(0) - 48 + 15));
        assert.equal(Buffer.from(model.tokenToPiece(digits[0])).toString(), "1");
        ctx.setSampler(0, { grammar: "root ::= [0-9]{3}", history: Int32Array.of(...digits, eot) });
        ctx.setSampler(0, null);
    });

    it("the addon refuses a tensorSplit entry that is NaN or beyond a 32-bit float", async () => {
        const path = await modelPath(tinyQwen);
        for (const v of [NaN, 1e300, Infinity]) {
            await assert.rejects(LlamaModel.load(path, { gpuLayers: 0, vocabOnly: true, tensorSplit: [v] }), invalid(/tensorSplit/));
        }
        (await LlamaModel.load(path, { gpuLayers: 0, vocabOnly: true, tensorSplit: [3, 1] })).dispose();
    });
});
