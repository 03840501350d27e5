// Fuzz over the binding's entry points: every call, with arguments of every type and at and around
// each limit (vocabulary size, context size, sequence count, batch size, 2^31, -1, NaN, ...), either
// returns a well-formed value or throws a BatchwiseError with a stable code. A native abort or segfault
// kills this file's process, and node --test reports the file as failed; the input in flight is in the
// breadcrumb file printed at the start (BATCHWISE_FUZZ_BREADCRUMB overrides where it goes).
// Long run: BATCHWISE_FUZZ_SECONDS=600 node --test dist/test/fuzz-binding.test.js (see test/fuzz-common.ts).
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, before, describe, it } from "node:test";
import fc from "fast-check";
import { BatchwiseError, ErrorCode, jsonSchemaToGrammar, LlamaContext, LlamaModel, type SamplerParams } from "../lib/index.js";
import { ChatParser, ChatTemplates, LIMITS, vocabDir, type ChatApplyResult } from "../lib/binding/index.js";
import { deepSchemaText, fuzz, grammarish, intAround, longFuzz, NASTY_NUMBERS, nastyText, oddSchema, testTimeoutMs, wrongType } from "./fuzz-common.js";
import { contextOptions, gpu, gpuLayers, modelPath, tinyQwen } from "./helpers.js";

/** Calls slower than this are reported (a slow call on the JS thread stalls everything else). */
const SLOW_MS = Number(process.env.BATCHWISE_FUZZ_SLOW_MS ?? 1000);
const CODES = new Set<string>(Object.values(ErrorCode));
const breadcrumb = process.env.BATCHWISE_FUZZ_BREADCRUMB ?? join(tmpdir(), `batchwise-fuzz-binding-${process.pid}.txt`);

/** A short, printable description of an input (typed arrays and long strings summarized). */
function show(v: unknown, limit = 600, full = false): string {
    const seen = new WeakSet<object>();
    let s: string;
    try {
        s = JSON.stringify(v, (_k, x) => {
            if (typeof x === "bigint") return `${x}n`;
            if (typeof x === "number" && !Number.isFinite(x)) return String(x);
            if (x === undefined) return "undefined";
            if (typeof x === "function") return "[function]";
            if (typeof x === "string" && x.length > (full ? 1_000_000 : 80)) return `${JSON.stringify(x.slice(0, 40))}... (${x.length} chars)`;
            if (ArrayBuffer.isView(x)) {
                const a = x as unknown as ArrayLike<unknown>;
                return `${x.constructor.name}(${a.length})[${Array.from({ length: Math.min(a.length, 12) }, (_, i) => String(a[i])).join(",")}${a.length > 12 ? ",..." : ""}]`;
            }
            if (Array.isArray(x) && x.length > 24) return [...x.slice(0, 24), `... (${x.length} items)`];
            if (x !== null && typeof x === "object") {
                if (seen.has(x)) return "[seen]";
                seen.add(x);
            }
            return x;
        }) ?? String(v);
    } catch (e) {
        s = `<unprintable: ${(e as Error).message}>`;
    }
    return s.length > limit ? s.slice(0, limit) + `... (${s.length} chars)` : s;
}

/** Outcomes by call (ok, or the error code), printed after each property: what the fuzz reached. */
const tallies = new Map<string, Map<string, number>>();
function tally(what: string, outcome: string): void {
    const name = what;
    let t = tallies.get(name);
    if (!t) tallies.set(name, (t = new Map()));
    t.set(outcome, (t.get(outcome) ?? 0) + 1);
}
function printTallies(): void {
    const lines = [...tallies].map(([what, t]) => `  ${what}: ${[...t].map(([k, n]) => `${k} ${n}`).join(", ")}`);
    process.stderr.write(`fuzz-binding: outcomes\n${lines.join("\n")}\n`);
    tallies.clear();
}

type Outcome<T> = { ok: true; value: T } | { ok: false; error: BatchwiseError };

/**
 * Runs one call: its value, or the BatchwiseError it threw. Anything else (another error type, an unknown
 * code, ERR_INTERNAL) fails the property with the call and its input.
 */
async function call<T>(what: string, input: unknown, fn: () => T | Promise<T>): Promise<Outcome<T>> {
    writeFileSync(breadcrumb, `${what} ${show(input, 2_000_000, true)}\n`);
    const t0 = performance.now();
    try {
        const value = await fn();
        tally(what, "ok");
        return { ok: true, value };
    } catch (e) {
        tally(what, e instanceof BatchwiseError ? e.code : "other");
        if (!(e instanceof BatchwiseError)) {
            throw new Error(`${what} threw ${(e as Error)?.constructor?.name ?? typeof e} (not a BatchwiseError): ${(e as Error)?.message ?? e}\n  input: ${show(input)}`);
        }
        if (!CODES.has(e.code)) throw new Error(`${what} threw an unknown code ${e.code}: ${e.message}\n  input: ${show(input)}`);
        if (e.code === ErrorCode.Internal) throw new Error(`${what} failed with ERR_INTERNAL: ${e.message}\n  input: ${show(input)}`);
        return { ok: false, error: e };
    } finally {
        const ms = performance.now() - t0;
        if (ms > SLOW_MS) process.stderr.write(`fuzz-binding: slow call (${Math.round(ms)} ms): ${what} ${show(input, 300)}\n`);
    }
}

/** An option object: some known keys with values from `fields` or of the wrong type, maybe an unknown key, or not an object at all. */
function options(fields: Record<string, fc.Arbitrary<unknown>>): fc.Arbitrary<unknown> {
    const record = fc.record(Object.fromEntries(Object.entries(fields).map(([k, a]) => [k, fc.oneof({ weight: 5, arbitrary: a }, { weight: 1, arbitrary: wrongType })])), { requiredKeys: [] });
    return fc.oneof(
        { weight: 8, arbitrary: record },
        { weight: 1, arbitrary: fc.tuple(record, fc.string({ maxLength: 6 }), wrongType).map(([r, k, v]) => ({ ...(r as object), [k]: v })) },
        { weight: 1, arbitrary: wrongType },
    );
}

/** An option object with only the values in `fields` (all of the right type), some keys left out. */
function validOptions(fields: Record<string, fc.Arbitrary<unknown>>): fc.Arbitrary<unknown> {
    return fc.record(fields, { requiredKeys: [] });
}

/** Mostly `valid`, sometimes `invalid` (4 to 1). */
function mostly<T, U>(valid: fc.Arbitrary<T>, invalid: fc.Arbitrary<U>): fc.Arbitrary<T | U> {
    return fc.oneof({ weight: 4, arbitrary: valid }, { weight: 1, arbitrary: invalid });
}

/** Options whose fields all come from `fields` (3 in 4), or options() with wrong types mixed in. */
function fieldsMostlyValid(fields: Record<string, fc.Arbitrary<unknown>>): fc.Arbitrary<unknown> {
    return fc.oneof({ weight: 3, arbitrary: validOptions(fields) }, { weight: 1, arbitrary: options(fields) });
}

/** Every kind of array-ish value a batch field or token list might be given. */
function arrayOf(elem: fc.Arbitrary<number>, maxLength: number): fc.Arbitrary<unknown> {
    const list = fc.array(elem, { maxLength });
    return fc.oneof(
        { weight: 4, arbitrary: list.map((a) => Int32Array.from(a, (x) => x | 0)) },
        { weight: 2, arbitrary: list },
        {
            weight: 2,
            arbitrary: fc.tuple(list, fc.constantFrom("Uint8Array", "Int8Array", "Uint8ClampedArray", "Int16Array", "Uint16Array", "Uint32Array", "Float32Array", "Float64Array", "BigInt64Array", "offset", "detached", "shared"))
                .map(([a, kind]) => {
                    switch (kind) {
                        case "Uint8Array": return Uint8Array.from(a);
                        case "Int8Array": return Int8Array.from(a);
                        case "Uint8ClampedArray": return Uint8ClampedArray.from(a);
                        case "Int16Array": return Int16Array.from(a);
                        case "Uint16Array": return Uint16Array.from(a);
                        case "Uint32Array": return Uint32Array.from(a);
                        case "Float32Array": return Float32Array.from(a);
                        case "Float64Array": return Float64Array.from(a);
                        case "BigInt64Array": return BigInt64Array.from(a, (x) => BigInt(Number.isFinite(x) ? Math.trunc(x) : 0));
                        case "offset": { // a view into the middle of a larger buffer
                            const buf = new Int32Array(a.length + 8);
                            const v = new Int32Array(buf.buffer, 16, a.length);
                            v.set(a.map((x) => x | 0));
                            return v;
                        }
                        case "detached": {
                            const v = Int32Array.from(a, (x) => x | 0);
                            structuredClone(v.buffer, { transfer: [v.buffer] });
                            return v;
                        }
                        default: {
                            const v = new Int32Array(new SharedArrayBuffer(4 * a.length));
                            v.set(a.map((x) => x | 0));
                            return v;
                        }
                    }
                }),
        },
        { weight: 1, arbitrary: fc.integer({ min: 0, max: 64 }).map((n) => new Array(n)) }, // holes
        { weight: 1, arbitrary: wrongType },
    );
}

describe("fuzz: binding", { timeout: testTimeoutMs(90, 8) }, () => {
    let path: string;
    let model: LlamaModel;
    let vocab: number;
    /** non-paged, unified */
    let ctx: LlamaContext;
    /** a paged KV cache (blocks of 16), when this build can page this model */
    let paged: LlamaContext | null = null;
    /** one KV stream per sequence */
    let split: LlamaContext;
    const CTX = 256, SEQS = 4, BATCH = 64;
    let saved: Buffer;
    let prompt: Int32Array;

    before(async () => {
        process.stderr.write(`fuzz-binding: the call in flight is written to ${breadcrumb} (read it after a crash)\n`);
        path = await modelPath(tinyQwen);
        model = await LlamaModel.load(path, { gpuLayers });
        vocab = model.metadata.vocabSize;
        ctx = await model.createContext(contextOptions({ contextSize: CTX, seqIds: SEQS, batchSize: BATCH }));
        split = await model.createContext(contextOptions({ contextSize: CTX, seqIds: 2, batchSize: BATCH, kvUnified: false }));
        try {
            paged = await model.createContext(contextOptions({ contextSize: CTX, seqIds: SEQS, batchSize: BATCH, kvBlockSize: gpu ? 128 : 16, flashAttention: "on" }));
        } catch (e) {
            process.stderr.write(`fuzz-binding: no paged context on this build (${(e as Error).message}); its cases are skipped\n`);
        }
        prompt = await model.tokenize("<|im_start|>user\nhello there, fuzz<|im_end|>", { parseSpecial: true });
        await ctx.decode(batchFor(0, prompt, 0));
        saved = await ctx.saveSequence(0);
        ctx.clear();
    });
    afterEach(() => {
        printTallies();
        for (const c of [ctx, split, paged]) if (c && !c.disposed) resetSamplers(c);
    });
    after(() => {
        paged?.dispose();
        split.dispose();
        ctx.dispose();
        model.dispose();
    });

    function batchFor(seq: number, tokens: ArrayLike<number>, pos0: number) {
        const n = tokens.length;
        return {
            tokens: Int32Array.from(tokens), positions: Int32Array.from({ length: n }, (_, i) => pos0 + i),
            seqIds: new Int32Array(n).fill(seq), outputs: Uint8Array.from({ length: n }, (_, i) => (i === n - 1 ? 1 : 0)),
        };
    }

    /** With the paged cache: each sequence its own share of the pool's blocks, in order. */
    function giveBlocks(c: LlamaContext): void {
        const pool = Math.floor(c.info.contextSize / c.info.kvBlockSize);
        const each = Math.max(1, Math.floor(pool / SEQS));
        for (let s = 0; s < SEQS && (s + 1) * each <= pool; s++) c.setBlockTable(s, Int32Array.from({ length: each }, (_, i) => s * each + i));
    }

    /** Every sequence back to greedy sampling. */
    function resetSamplers(c: LlamaContext): void {
        for (let s = 0; s < c.info.seqIds; s++) c.setSampler(s, null);
    }

    /** The context still decodes after whatever the case did to it. */
    async function stillWorks(c: LlamaContext): Promise<void> {
        c.clear();
        if (c === paged) giveBlocks(c);
        c.setSampler(0, null);
        const r = await c.decode(batchFor(0, prompt.subarray(0, 8), 0));
        assert.equal(r.tokens.length, 1);
        assert.ok(r.tokens[0] >= 0 && r.tokens[0] < vocab, `sanity decode gave token ${r.tokens[0]}`);
        c.clear();
    }

    const tokenId = () => intAround(0, vocab - 1, vocab, 151643, 151645);

    it("model calls: tokenize, detokenize, tokenToPiece, isEog, applyChatTemplate", { timeout: testTimeoutMs(6) }, async () => {
        const special = options({ addSpecial: fc.boolean(), parseSpecial: fc.boolean(), special: fc.boolean() });
        const messageFields = { role: fc.oneof(fc.constantFrom("user", "system", "assistant", "tool", ""), nastyText(8)), content: nastyText(200) };
        const message = mostly(fc.record(messageFields), options(messageFields));
        const op = fc.oneof(
            { weight: 3, arbitrary: fc.record({ op: fc.constant("tokenize"), text: fc.oneof({ weight: 6, arbitrary: nastyText() }, { weight: 1, arbitrary: wrongType }), o: special }) },
            { weight: 3, arbitrary: fc.record({ op: fc.constant("detokenize"), tokens: arrayOf(tokenId(), 64), o: special }) },
            { weight: 2, arbitrary: fc.record({ op: fc.constantFrom("tokenToPiece", "isEog"), token: fc.oneof(tokenId(), wrongType as fc.Arbitrary<number>), o: special }) },
            {
                weight: 2,
                arbitrary: fc.record({
                    op: fc.constant("applyChatTemplate"),
                    messages: fc.oneof({ weight: 5, arbitrary: fc.array(message, { maxLength: 6 }) }, { weight: 1, arbitrary: wrongType }),
                    o: options({ addAssistant: fc.boolean(), template: fc.oneof(fc.constantFrom("chatml", "llama3", "gemma", "mistral-v7", "{{ nope", "", "x"), nastyText(50)) }),
                }),
            },
        );
        await fuzz("model calls", op, async (c) => {
            const m = model as unknown as Record<string, (...a: unknown[]) => unknown>;
            const args = c.op === "tokenize" ? [c.text, c.o] : c.op === "detokenize" ? [c.tokens, c.o] : c.op === "applyChatTemplate" ? [c.messages, c.o] : [c.token, c.o];
            const r = await call(`model.${c.op}`, args, () => m[c.op].apply(model, args));
            if (!r.ok) return;
            const v = r.value;
            if (c.op === "tokenize") {
                assert.ok(v instanceof Int32Array, "tokenize resolves with an Int32Array");
                for (const t of v) assert.ok(t >= 0 && t < vocab, `tokenize gave token ${t} for ${show(args)}`);
            } else if (c.op === "detokenize" || c.op === "applyChatTemplate") {
                assert.equal(typeof v, "string");
            } else if (c.op === "tokenToPiece") {
                assert.ok(v instanceof Uint8Array);
            } else {
                assert.equal(typeof v, "boolean");
            }
        }, 250, 6);
    });

    it("grammars: checkGrammar and jsonSchemaToGrammar", { timeout: testTimeoutMs(6) }, async () => {
        const op = fc.oneof(
            { weight: 3, arbitrary: fc.record({ op: fc.constant("checkGrammar"), grammar: fc.oneof({ weight: 8, arbitrary: grammarish() }, { weight: 1, arbitrary: wrongType }), root: fc.oneof(fc.constantFrom(undefined, "root", "r", "", "x ::= y"), wrongType) }) },
            { weight: 3, arbitrary: fc.record({ op: fc.constant("jsonSchemaToGrammar"), schema: fc.oneof({ weight: 6, arbitrary: oddSchema() }, { weight: 1, arbitrary: deepSchemaText() }, { weight: 1, arbitrary: nastyText(50) }, { weight: 1, arbitrary: wrongType }), asText: fc.boolean() }) },
        );
        await fuzz("grammars", op, async (c) => {
            if (c.op === "checkGrammar") {
                await call("model.checkGrammar", [c.grammar, c.root], () => model.checkGrammar(c.grammar as string, c.root as string));
                return;
            }
            let schema: unknown = c.schema;
            if (c.asText && typeof schema === "object" && schema !== null) {
                try {
                    schema = JSON.stringify(schema);
                } catch {
                    // too deep for JSON.stringify: pass the object
                }
            }
            const r = await call("jsonSchemaToGrammar", schema, () => jsonSchemaToGrammar(schema as object));
            if (!r.ok) return;
            assert.equal(typeof r.value, "string");
            // what the converter makes, the grammar parser takes (or refuses with a code, never a crash)
            await call("model.checkGrammar(converted)", { schema, grammar: r.value }, () => model.checkGrammar(r.value));
        }, 200, 6);
    });

    it("chat: ChatTemplates.create, apply with garbage inputs, ChatParser with forged specs and any text", { timeout: testTimeoutMs(8) }, async () => {
        const templatesDir = join(vocabDir(), "templates");
        const real = ["Qwen3-Coder.jinja", "Qwen-Qwen2.5-7B-Instruct.jinja", "openai-gpt-oss-120b.jinja", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"]
            .map((n) => readFileSync(join(templatesDir, n), "utf8"));
        const made = real.map((t) => ChatTemplates.create(model, { template: t }));
        const specs: ChatApplyResult["parser"][] = made.map((ct) => ct.apply({ messages: [{ role: "user", content: "hi" }], tools: [{ type: "function", function: { name: "f", parameters: { type: "object", properties: { a: { type: "integer" } } } } }] }).parser);
        const jsonish: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
            v: fc.oneof({ depthSize: "small", withCrossShrink: true },
                fc.constantFrom(null, true, false, 0, -1, 1e308, "", "user", "assistant", "tool", "system", "function", "text", "auto", "required", "none"),
                nastyText(10), wrongType,
                fc.array(tie("v"), { maxLength: 4 }),
                fc.dictionary(fc.constantFrom("role", "content", "tool_calls", "tool_call_id", "name", "type", "function", "arguments", "parameters", "text", "id", "reasoning_content", "x"), tie("v"), { maxKeys: 5 })),
        })).v;
        const message = fc.oneof(
            fc.record({ role: fc.constantFrom("user", "assistant", "system", "tool", "developer", ""), content: fc.oneof(nastyText(20), fc.constant(null), fc.array(fc.record({ type: fc.constantFrom("text", "image_url"), text: nastyText(5) }), { maxLength: 2 })) }),
            fc.record({ role: fc.constant("assistant"), content: fc.constant(null), tool_calls: fc.array(fc.record({ id: fc.string(), type: fc.constant("function"), function: fc.record({ name: fc.constantFrom("f", "g", ""), arguments: fc.oneof(fc.constantFrom("{}", '{"a":1}', "{", ""), jsonish,
                // nested at and past the depth the template layer takes (100,000 levels overflowed its stack)
                fc.constantFrom(127, 128, 129, 100_000).map((n) => "[".repeat(n) + "]".repeat(n))) }) }), { maxLength: 3 }) }),
            fc.record({ role: fc.constant("tool"), tool_call_id: fc.string(), content: nastyText(10) }),
            jsonish,
        );
        const tool = fc.oneof(
            fc.record({ type: fc.constant("function"), function: fc.record({ name: fc.constantFrom("f", "g", "with space", "", "ünï"), description: nastyText(10), parameters: fc.oneof(oddSchema(), jsonish) }, { requiredKeys: ["name"] }) }),
            jsonish,
        );
        const validMessage = fc.oneof(
            fc.record({ role: fc.constantFrom("user", "system"), content: nastyText(20) }),
            fc.record({ role: fc.constant("assistant"), content: fc.constant(null), tool_calls: fc.array(fc.record({ id: fc.string(), type: fc.constant("function"), function: fc.record({ name: fc.constantFrom("f", "g"), arguments: fc.constantFrom("{}", '{"a":1}') }) }), { minLength: 1, maxLength: 2 }) }),
            fc.record({ role: fc.constant("tool"), tool_call_id: fc.string(), content: nastyText(10) }),
        );
        const validTool = fc.record({ type: fc.constant("function"), function: fc.record({ name: fc.constantFrom("f", "g", "h_1"), parameters: fc.oneof(fc.constant({ type: "object", properties: { a: { type: "integer" }, b: { type: "string", enum: ["x", "y"] } }, required: ["a"] }), oddSchema()) }) });
        const inputs = fc.oneof(
            { weight: 6, arbitrary: fc.record({
                messages: fc.tuple(fc.record({ role: fc.constant("user"), content: nastyText(20) }), fc.array(validMessage, { maxLength: 4 })).map(([a, b]) => [a, ...b]),
                tools: fc.array(validTool, { maxLength: 3 }),
                toolChoice: fc.constantFrom("auto", "required", "none"),
                parallelToolCalls: fc.boolean(),
                enableThinking: fc.boolean(),
                reasoningFormat: fc.constantFrom("none", "auto", "deepseek"),
                chatTemplateKwargs: fc.dictionary(fc.constantFrom("enable_thinking", "reasoning_effort", "x"), fc.oneof(fc.boolean(), fc.constantFrom("low", "high")), { maxKeys: 2 }),
            }, { requiredKeys: ["messages"] }) },
            { weight: 6, arbitrary: fc.record({
                messages: fc.oneof({ weight: 5, arbitrary: fc.array(message, { maxLength: 5 }) }, { weight: 1, arbitrary: jsonish }),
                tools: fc.oneof(fc.array(tool, { maxLength: 4 }), jsonish),
                toolChoice: fc.oneof(fc.constantFrom("auto", "required", "none"), jsonish),
                parallelToolCalls: fc.oneof(fc.boolean(), wrongType),
                jsonSchema: fc.oneof(oddSchema(), jsonish),
                grammar: fc.oneof(grammarish(), wrongType),
                addGenerationPrompt: fc.oneof(fc.boolean(), wrongType),
                continueFinalMessage: fc.oneof(fc.boolean(), wrongType),
                enableThinking: fc.oneof(fc.boolean(), wrongType),
                chatTemplateKwargs: fc.oneof(fc.dictionary(fc.constantFrom("enable_thinking", "reasoning_effort", "x"), jsonish, { maxKeys: 3 }), jsonish),
                reasoningFormat: fc.oneof(fc.constantFrom("none", "auto", "deepseek", "x"), wrongType),
                addBos: fc.oneof(fc.boolean(), wrongType),
                addEos: fc.oneof(fc.boolean(), wrongType),
            }, { requiredKeys: ["messages"] }) },
            { weight: 1, arbitrary: jsonish },
            { weight: 1, arbitrary: fc.constantFrom(LIMITS.maxChatJsonDepth - 4, LIMITS.maxChatJsonDepth + 1, 5000).map((d) => ({ messages: [{ role: "user", content: "x" }], chatTemplateKwargs: { d: JSON.parse("[".repeat(d) + "]".repeat(d)) } })) },
        );
        const op = fc.oneof(
            { weight: 2, arbitrary: fc.record({ op: fc.constant("create"), template: fc.oneof(fc.constantFrom(undefined, "", "chatml", "llama3", "{{", "{% for %}", "{{ raise_exception('x') }}", "{% for m in messages %}{{ m.content }}{% endfor %}", "{{ messages[0]['content'] | tojson }}{{ tools | tojson }}"), nastyText(30), wrongType) }) },
            { weight: 6, arbitrary: fc.record({ op: fc.constant("apply"), which: fc.nat(made.length - 1), inputs }) },
            { weight: 4, arbitrary: fc.record({
                op: fc.constant("parse"), which: fc.nat(specs.length - 1),
                forge: fc.oneof({ weight: 4, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.record({ format: fc.oneof(intAround(0, 4, 5), wrongType), parser: fc.oneof(fc.constantFrom("{}", '{"parsers":[{"type":"sequence","children":[99]}],"rules":{},"root":0}'), nastyText(10)), tag: fc.oneof(fc.string(), wrongType) }, { requiredKeys: [] }) }),
                options: fc.oneof(
                    { weight: 4, arbitrary: fc.record({ reasoningFormat: fc.constantFrom("none", "auto", "deepseek"), parseToolCalls: fc.boolean(), isContinuation: fc.boolean() }, { requiredKeys: [] }) },
                    { weight: 1, arbitrary: fc.record({ reasoningFormat: fc.oneof(fc.constantFrom("none", "auto", "deepseek", "x"), wrongType), parseToolCalls: fc.oneof(fc.boolean(), wrongType), isContinuation: fc.oneof(fc.boolean(), wrongType) }, { requiredKeys: [] }) },
                    { weight: 1, arbitrary: wrongType }),
                pieces: fc.array(fc.tuple(fc.oneof(nastyText(20), fc.constantFrom("<tool_call>", "\n", "</tool_call>", "<function=f>", "<parameter=a>", "</parameter>", "</function>", '{"name": "f", "arguments": {"a": 1}}', "<think>", "</think>", "<|channel|>analysis<|message|>", "<|end|>", "<|start|>assistant", "<|channel|>commentary to=functions.f <|constrain|>json<|message|>", "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>f<｜tool▁sep｜>")), fc.oneof({ weight: 6, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.boolean() }, { weight: 1, arbitrary: wrongType })), { maxLength: 12 }),
            }) },
        );
        try {
            await fuzz("chat", op, async (c) => {
                if (c.op === "create") {
                    const r = await call("ChatTemplates.create", c.template, () => ChatTemplates.create(model, c.template === undefined ? undefined : { template: c.template as string }));
                    if (r.ok) {
                        assert.equal(typeof r.value.caps.jinja, "boolean");
                        await call("ChatTemplates.apply(plain)", c.template, () => r.value.apply({ messages: [{ role: "user", content: "hi" }] }));
                        r.value.dispose();
                    }
                    return;
                }
                if (c.op === "apply") {
                    const r = await call("ChatTemplates.apply", c.inputs, () => made[c.which].apply(c.inputs as never));
                    if (!r.ok) return;
                    assert.equal(typeof r.value.prompt, "string");
                    // what apply gives, the sampler takes
                    if (r.value.grammar) {
                        await call("checkGrammar(apply)", r.value.grammar.slice(0, 200), () => model.checkGrammar(r.value.grammar!, "root", { lazy: r.value.grammarLazy, triggers: r.value.grammarTriggers }));
                    }
                    return;
                }
                const spec = c.forge ? { ...specs[c.which], ...(c.forge as object) } : specs[c.which];
                const p = await call("ChatParser.create", [c.forge, c.options], () => ChatParser.create(spec as never, c.options as never));
                if (!p.ok) return;
                for (const [text, partial] of c.pieces) {
                    const u = await call("ChatParser.update", [text, partial], () => p.value.update(text as string, partial as boolean));
                    if (u.ok) assert.ok(Array.isArray(u.value));
                }
                await call("ChatParser.update(final)", null, () => p.value.update("", false));
                const m = p.value.message;
                assert.equal(typeof m.content, "string");
                assert.ok(Array.isArray(m.toolCalls));
            }, 300, 8);
        } finally {
            for (const ct of made) ct.dispose();
        }
    });

    /** In range (8 in 9), or at and around the limits. */
    const inRange = (valid: fc.Arbitrary<unknown>, limits: fc.Arbitrary<unknown>) => fc.oneof({ weight: 8, arbitrary: valid }, { weight: 1, arbitrary: limits });
    const samplerParams = (): fc.Arbitrary<unknown> => fieldsMostlyValid({
        temperature: inRange(fc.constantFrom(0, 0.7, 1, 2), fc.oneof(fc.constantFrom(1e-30, 100, -0, -1e-9), fc.double({ noNaN: false }))),
        topK: inRange(fc.integer({ min: 0, max: 100 }), intAround(0, 1, 40, 128 * 1024, vocab - 1, vocab, 2 ** 31)),
        topP: inRange(fc.double({ min: 0.01, max: 1, noNaN: true }), fc.oneof(fc.constantFrom(0, 1e-9, 1, 1 + 1e-9, -1), fc.double())),
        minP: inRange(fc.double({ min: 0, max: 1, noNaN: true }), fc.oneof(fc.constantFrom(0, 1e-9, 1, 1 + 1e-9, -1), fc.double())),
        repeatPenalty: inRange(fc.constantFrom(0.5, 1, 1.1, 2), fc.oneof(fc.constantFrom(0, 1e-9, 1e30, -1), fc.double())),
        presencePenalty: inRange(fc.double({ min: -2, max: 2, noNaN: true }), fc.oneof(fc.constantFrom(1e30, -1e30), fc.double())),
        frequencyPenalty: inRange(fc.double({ min: -2, max: 2, noNaN: true }), fc.oneof(fc.constantFrom(1e30, -1e30), fc.double())),
        penaltyLastN: inRange(fc.integer({ min: -1, max: 256 }), intAround(-1, 0, 64, CTX, 2 ** 31)),
        seed: inRange(fc.nat(), intAround(0, 2 ** 32 - 1, 2 ** 31)),
        logprobs: inRange(fc.integer({ min: -1, max: 20 }), intAround(-1, 0, 20, 100, vocab)),
        backend: fc.boolean(),
        grammar: inRange(fc.constantFrom("root ::= \"a\"", "root ::= [a-z]+", "root ::= \"<|im_end|>\"", "root ::= x\nx ::= [0-9]{1,3}", "root ::= [^x]*"), grammarish()),
        grammarRoot: inRange(fc.constant("root"), fc.constantFrom("x", "nope", "")),
        logitBias: inRange(
            fc.array(fc.tuple(fc.integer({ min: 0, max: vocab - 1 }), fc.oneof(fc.double({ min: -100, max: 100, noNaN: true }), fc.constant(-Infinity))), { maxLength: 8 }),
            fc.oneof(
                fc.array(fc.tuple(fc.oneof(tokenId(), wrongType as fc.Arbitrary<number>), fc.oneof(fc.constantFrom(-Infinity, Infinity, NaN, 0, 100, -100, 1e30), fc.double(), wrongType as fc.Arbitrary<number>)), { maxLength: 8 }),
                fc.dictionary(fc.oneof(fc.constantFrom("0", "1", "-1", "1e3", "0x10", " 5", "5 ", "", "151935", "151936", "2147483648", "NaN", "Infinity", "1.5"), fc.string({ maxLength: 4 })),
                    fc.oneof(fc.double(), fc.constantFrom(-Infinity, Infinity), wrongType as fc.Arbitrary<number>), { maxKeys: 8 }),
                fc.constantFrom([[1, 2, 3]], [[]], [1], [["1", 2]], [[1, "2"]]),
                fc.integer({ min: 1, max: longFuzz ? 200_000 : 5_000 }).map((n) => Array.from({ length: n }, (_, i) => [i % 151936, -1])),
            ),
        ),
        history: inRange(fc.array(fc.integer({ min: 0, max: vocab - 1 }), { maxLength: 64 }).map((a) => Int32Array.from(a)), arrayOf(tokenId(), 64)),
        grammarLazy: fc.boolean(),
        grammarTriggers: inRange(fc.array(trigger(), { maxLength: 4 }), fc.oneof(
            fc.array(fc.oneof(trigger(), wrongType, fc.record({ type: fc.constantFrom("token", "word", "pattern", "patternFull", "x"), value: fc.oneof(nastyText(20), wrongType), token: fc.oneof(tokenId(), wrongType) }, { requiredKeys: [] })), { maxLength: 8 }),
            fc.integer({ min: LIMITS.maxGrammarTriggers - 1, max: LIMITS.maxGrammarTriggers + 1 }).map((n) => Array.from({ length: n }, () => ({ type: "word", value: "x" }))),
            fc.constantFrom(LIMITS.maxGrammarTriggerBytes - 1, LIMITS.maxGrammarTriggerBytes, LIMITS.maxGrammarTriggerBytes + 1).map((n) => [{ type: "pattern", value: "a".repeat(n) }]),
            wrongType,
        )),
        grammarPrefill: inRange(fc.constantFrom("", "a", "<|im_start|>assistant\n", " "), fc.oneof(nastyText(50),
            fc.constantFrom(LIMITS.maxSamplerPrefillBytes, LIMITS.maxSamplerPrefillBytes + 1).map((n) => "a".repeat(n)), wrongType)),
        reasoningBudget: inRange(budget(), fc.oneof(
            fc.record({ tokens: fc.oneof(intAround(-1, 0, 2 ** 31 - 1, 2 ** 31), fc.double(), wrongType), startTag: fc.oneof(nastyText(5), wrongType), endTags: fc.oneof(fc.array(fc.oneof(nastyText(5), wrongType), { maxLength: 20 }), wrongType), message: fc.oneof(nastyText(5), wrongType), prefill: fc.oneof(nastyText(5), wrongType) }, { requiredKeys: [] }),
            fc.constantFrom(LIMITS.maxReasoningTagBytes, LIMITS.maxReasoningTagBytes + 1).map((n) => ({ tokens: 1, startTag: "<".repeat(n), endTags: [">"] })),
            wrongType,
        )),
    });

    /** A trigger of the kinds ChatTemplates.apply returns, some with regexes that do not compile. */
    function trigger(): fc.Arbitrary<unknown> {
        return fc.oneof(
            fc.record({ type: fc.constant("word"), value: fc.constantFrom("<tool_call>", "{", "<|im_end|>", "a") }),
            fc.record({ type: fc.constantFrom("pattern", "patternFull"), value: fc.constantFrom("[\\s\\S]*?(<tool_call>)", "^\\s*\\{", "(", "[z-a]", "a{2,1}", "(?<n>x)", "\\", "", "x*+", "(a|b)*c") }),
            fc.record({ type: fc.constant("token"), value: fc.constant("<|im_end|>"), token: tokenId() }),
        );
    }

    /** A reasoning budget over tags this vocabulary has (or not). */
    function budget(): fc.Arbitrary<unknown> {
        return fc.record({
            tokens: fc.oneof(fc.integer({ min: 0, max: 8 }), fc.constant(2 ** 31 - 1)),
            startTag: fc.constantFrom("<think>", "<|im_start|>", "a"),
            endTags: fc.array(fc.constantFrom("</think>", "<|im_end|>", "b"), { minLength: 1, maxLength: 3 }),
            message: fc.constantFrom("", " done.", "<|im_end|>"),
            prefill: fc.constantFrom("", "<think>", "<|im_start|>assistant\n<think>\n"),
        }, { requiredKeys: ["tokens", "startTag", "endTags"] });
    }

    it("setSampler at and around each limit, then a decode with that sampler", { timeout: testTimeoutMs(8) }, async () => {
        const seq = mostly(fc.integer({ min: 0, max: SEQS - 1 }), intAround(0, SEQS - 1, SEQS, 256));
        await fuzz("setSampler", fc.tuple(seq, samplerParams(), fc.boolean()), async ([s, params, detach]) => {
            ctx.clear();
            if (detach) await call("ctx.setSampler(null)", s, () => ctx.setSampler(s, null));
            const r = await call("ctx.setSampler", [s, params], () => ctx.setSampler(s, params as SamplerParams));
            // whatever happens below, the sequence goes back to greedy (a sampler left broken must not take the next case down)
            if (r.ok) try {
                assert.equal(typeof r.value.backend, "boolean");
                // the sampler set must sample: a prompt, then two more tokens with what it picked
                let d = await call("ctx.decode(after setSampler)", [s, params], () => ctx.decode(batchFor(s, prompt.subarray(0, 6), 0)));
                let pos = 6;
                for (let step = 0; step < 2 && d.ok; step++) {
                    const t = d.value.tokens[0];
                    assert.equal(d.value.tokens.length, 1);
                    assert.ok(Number.isInteger(t) && t >= -1 && t < vocab, `sampled token ${t} outside [-1, ${vocab}) with ${show(params)}`);
                    if (d.value.logprobs) assert.equal(d.value.logprobs.length, 1);
                    if (t < 0) break;
                    d = await call("ctx.decode(next token)", [s, params, t], () => ctx.decode(batchFor(s, [t], pos++)));
                }
            } finally {
                ctx.setSampler(s, null);
            }
        }, 250, 8);
        await stillWorks(ctx);
    });

    it("decode with bad token ids, positions, sequence ids, lengths and array kinds", { timeout: testTimeoutMs(8) }, async () => {
        const contexts = () => [ctx, split, ...(paged ? [paged] : [])];
        const field = (elem: fc.Arbitrary<number>) => arrayOf(elem, BATCH + 2);
        // a batch llama.cpp takes on a cleared context: each sequence's tokens at consecutive positions from 0
        const valid = fc.array(fc.tuple(fc.integer({ min: 0, max: SEQS - 1 }), fc.integer({ min: 0, max: vocab - 1 }), fc.boolean()), { minLength: 1, maxLength: 24 }).map((rows) => {
            const next = new Map<number, number>();
            const positions = rows.map(([s]) => {
                const p = next.get(s) ?? 0;
                next.set(s, p + 1);
                return p;
            });
            return {
                tokens: Int32Array.from(rows, (r) => r[1]), positions: Int32Array.from(positions),
                seqIds: Int32Array.from(rows, (r) => r[0]), outputs: Uint8Array.from(rows, (r) => (r[2] ? 1 : 0)),
            };
        });
        // a valid batch with one value at or around a limit
        const broken = fc.tuple(valid, fc.constantFrom("tokens", "positions", "seqIds", "outputs"), fc.nat(), intAround(-1, 0, SEQS, 256, vocab - 1, vocab, CTX, 2 ** 31 - 1, -(2 ** 31)))
            .map(([b, k, at, v]) => {
                const a = (b as Record<string, Int32Array | Uint8Array>)[k];
                a[at % a.length] = v;
                return b;
            });
        const structured = fc.integer({ min: 0, max: BATCH + 2 }).chain((n) => fc.record({
            tokens: fc.oneof({ weight: 5, arbitrary: fc.array(tokenId(), { minLength: n, maxLength: n }).map((a) => Int32Array.from(a, (x) => x | 0)) }, { weight: 1, arbitrary: field(tokenId()) }),
            positions: fc.oneof(
                { weight: 3, arbitrary: fc.integer({ min: -1, max: CTX + 1 }).map((p0) => Int32Array.from({ length: n }, (_, i) => p0 + i)) },
                { weight: 2, arbitrary: fc.array(intAround(0, CTX - 1, CTX, 2 ** 31 - 1, -(2 ** 31)), { minLength: n, maxLength: n }).map((a) => Int32Array.from(a, (x) => x | 0)) },
                { weight: 1, arbitrary: field(intAround(0, CTX)) },
            ),
            seqIds: fc.oneof(
                { weight: 4, arbitrary: fc.array(fc.integer({ min: 0, max: SEQS - 1 }), { minLength: n, maxLength: n }).map((a) => Int32Array.from(a)) },
                { weight: 2, arbitrary: fc.array(intAround(-1, 0, SEQS - 1, SEQS, 256), { minLength: n, maxLength: n }).map((a) => Int32Array.from(a, (x) => x | 0)) },
                { weight: 1, arbitrary: field(intAround(0, SEQS)) },
            ),
            outputs: fc.oneof(
                { weight: 4, arbitrary: fc.array(fc.integer({ min: 0, max: 255 }), { minLength: n, maxLength: n }).map((a) => Uint8Array.from(a)) },
                { weight: 1, arbitrary: field(fc.integer({ min: -1, max: 256 })) },
            ),
        }));
        const missing = structured.chain((b) => fc.subarray(Object.keys(b)).map((keep) => Object.fromEntries(keep.map((k) => [k, (b as Record<string, unknown>)[k]]))));
        const batch = fc.oneof({ weight: 6, arbitrary: valid }, { weight: 4, arbitrary: broken }, { weight: 4, arbitrary: structured }, { weight: 1, arbitrary: missing }, { weight: 1, arbitrary: wrongType });
        const tables = fc.array(fc.tuple(fc.integer({ min: 0, max: SEQS - 1 }), fc.array(intAround(0, CTX / 16 - 1, CTX / 16), { maxLength: 20 })), { maxLength: 3 });
        await fuzz("decode", fc.tuple(fc.nat(), batch, fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }), tables), async ([which, b, clear, tbl]) => {
            const list = contexts();
            const c = list[which % list.length];
            if (clear) c.clear();
            if (c === paged) {
                // each sequence its own 4 blocks, then the fuzzed tables over them
                giveBlocks(c);
                for (const [s, t] of tbl) await call("paged.setBlockTable", [s, t], () => c.setBlockTable(s, Int32Array.from(t, (x) => x | 0)));
            }
            const r = await call("ctx.decode", b, () => c.decode(b as never));
            if (!r.ok) return;
            const outs = Array.from((b as { outputs: ArrayLike<number> }).outputs).filter((x) => x !== 0).length;
            assert.equal(r.value.tokens.length, outs, `one token per output row for ${show(b)}`);
            for (const t of r.value.tokens) assert.ok(t >= -1 && t < vocab, `decode gave token ${t}`);
        }, 300, 8);
        for (const c of contexts()) await stillWorks(c);
    });

    it("KV memory calls and sequence state, real states mutated", { timeout: testTimeoutMs(8) }, async () => {
        const seq = mostly(fc.integer({ min: 0, max: SEQS - 1 }), intAround(-1, 0, SEQS - 1, SEQS, 256));
        const pos = fc.oneof(intAround(-1, 0, 7, CTX), wrongType as fc.Arbitrary<number>);
        const state = fc.oneof(
            fc.constant("saved"),
            fc.tuple(fc.integer({ min: 0, max: 4096 }), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 1, max: 8 })).map(([at, byte, count]) => ({ flip: at, byte, count })),
            fc.integer({ min: 0, max: 8192 }).map((n) => ({ truncate: n })),
            fc.integer({ min: 1, max: 64 }).map((n) => ({ extend: n })),
            fc.uint8Array({ maxLength: 256 }),
            wrongType,
        );
        const op = fc.oneof(
            fc.record({ op: fc.constant("seqRemove"), a: fc.tuple(seq, pos, pos) }),
            fc.record({ op: fc.constant("seqCopy"), a: fc.tuple(seq, seq, pos, pos) }),
            fc.record({ op: fc.constantFrom("seqKeep", "seqPosMin", "seqPosMax"), a: fc.tuple(fc.oneof(seq, wrongType as fc.Arbitrary<number>)) }),
            fc.record({ op: fc.constant("clear"), a: fc.constant([]) }),
            fc.record({ op: fc.constant("setBlockTable"), a: fc.tuple(seq, arrayOf(intAround(0, CTX / 16 - 1, CTX / 16, 2 ** 31 - 1), 40)) }),
            fc.record({ op: fc.constant("saveSequence"), a: fc.tuple(fc.oneof(seq, wrongType as fc.Arbitrary<number>)) }),
            fc.record({ op: fc.constant("restoreSequence"), a: fc.tuple(seq, state) }),
        );
        const contexts = () => [ctx, split, ...(paged ? [paged] : [])];
        await fuzz("KV memory and state", fc.tuple(fc.nat(), fc.array(op, { minLength: 1, maxLength: 6 })), async ([which, ops]) => {
            const list = contexts();
            const c = list[which % list.length];
            // something in the cache to act on
            c.clear();
            if (c === paged) giveBlocks(c);
            await c.decode(batchFor(0, prompt, 0));
            for (const o of ops) {
                let args: unknown[] = o.a as unknown[];
                if (o.op === "restoreSequence") {
                    const st = args[1] as unknown;
                    let bytes: unknown = st;
                    if (st === "saved") bytes = saved;
                    else if (st && typeof st === "object" && "flip" in st) {
                        const b = Buffer.from(saved);
                        const f = st as { flip: number; byte: number; count: number };
                        for (let i = 0; i < f.count; i++) b[(f.flip + i * 7) % b.length] = (f.byte + i * 31) & 255;
                        bytes = b;
                    } else if (st && typeof st === "object" && "truncate" in st) bytes = saved.subarray(0, (st as { truncate: number }).truncate % (saved.length + 1));
                    else if (st && typeof st === "object" && "extend" in st) bytes = Buffer.concat([saved, Buffer.alloc((st as { extend: number }).extend, 0xff)]);
                    args = [args[0], bytes];
                }
                const fn = (c as unknown as Record<string, (...a: unknown[]) => unknown>)[o.op];
                const r = await call(`ctx.${o.op}`, args, () => fn.apply(c, args));
                if (r.ok && o.op === "restoreSequence" && typeof args[0] === "number" && args[0] >= 0 && args[0] < (c === split ? 2 : SEQS)) {
                    const s = args[0];
                    const max = c.seqPosMax(s);
                    assert.ok(max >= -1 && max < CTX, `restored sequence ${s} ends at position ${max}`);
                    // and it can be continued (or refuses with a code)
                    if (max >= 0 && max + 1 < CTX) await call("ctx.decode(after restore)", [s, max + 1], () => c.decode(batchFor(s, [prompt[0]], max + 1)));
                }
            }
        }, 200, 8);
        for (const c of contexts()) await stillWorks(c);
    });

    it("LlamaModel.load and createContext options", { timeout: testTimeoutMs(8) }, async () => {
        const loadFields = {
            gpuLayers: intAround(-1, 0, 2, 1000, 2 ** 31), splitMode: fc.constantFrom("none", "layer", "row", "tensor", "", "LAYER"),
            tensorSplit: fc.array(fc.oneof(fc.double(), fc.constantFrom(-1, 0, 1, NaN, Infinity)), { maxLength: 20 }), mainGpu: intAround(-1, 0, 1, 16, 2 ** 31),
            useMmap: fc.boolean(), vocabOnly: fc.boolean(), checkTensors: fc.boolean(),
            onProgress: fc.constantFrom(() => {}, () => { throw new Error("progress callback throws"); }, 42),
        };
        const loadOpts = fc.oneof(options(loadFields), validOptions({
            gpuLayers: fc.constantFrom(-1, 0, 1, 2, 1000), splitMode: fc.constantFrom("none", "layer", "row"), mainGpu: fc.constantFrom(-1, 0),
            useMmap: fc.boolean(), vocabOnly: fc.boolean(), checkTensors: fc.boolean(), tensorSplit: fc.constantFrom([], [1], [0, 0]),
            onProgress: fc.constantFrom(() => {}, () => { throw new Error("progress callback throws"); }),
        }));
        // KV sizes stay small: the fuzz is about the arguments, not about allocating gigabytes
        const ctxOpts = fc.oneof(options({
            contextSize: fc.constantFrom(0, 1, 2, 15, 16, 17, 255, 256, 257, -1, 2 ** 31, 2 ** 32, 16 * 1024 * 1024 + 1, 1.5, NaN),
            seqIds: intAround(0, 1, 2, 255, 256),
            maxSequences: intAround(0, 1, 2, 255, 256), // the old name of seqIds
            batchSize: intAround(0, 1, 16, 512, 2 ** 31),
            ubatchSize: intAround(0, 1, 16, 512, 2 ** 31),
            flashAttention: fc.constantFrom(true, false, "auto", "on", "off", "ON", ""),
            kvCacheTypeK: fc.constantFrom("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "q2_k", "F16", ""),
            kvCacheTypeV: fc.constantFrom("f32", "f16", "q8_0", "q4_0", "iq4_nl", "x"),
            kvUnified: fc.boolean(),
            kvBlockSize: fc.constantFrom(0, 1, 3, 15, 16, 17, 128, 256, 4096, 8192, -16, 2 ** 31),
            offloadKqv: fc.boolean(),
            threads: intAround(0, 1, 2, 512, 2 ** 31),
            threadsBatch: intAround(0, 1, 2, 512, 2 ** 31),
        }), validOptions({
            contextSize: fc.constantFrom(0, 16, 17, 255, 256, 257, 1, 2),
            seqIds: fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 4 }) }, { weight: 1, arbitrary: fc.constantFrom(16, 255, 256) }),
            batchSize: fc.constantFrom(1, 2, 16, 512, 2 ** 31 - 1),
            ubatchSize: fc.constantFrom(1, 2, 16, 512),
            flashAttention: fc.constantFrom(true, false, "auto", "on", "off"),
            kvCacheTypeK: fc.constantFrom("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"),
            kvCacheTypeV: fc.constantFrom("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"),
            kvUnified: fc.boolean(),
            kvBlockSize: fc.constantFrom(0, 1, 2, 16, 128, 256, 4096),
            offloadKqv: fc.boolean(),
            threads: fc.constantFrom(1, 2, 3),
            threadsBatch: fc.constantFrom(1, 2, 3),
        }));
        const target = fc.oneof(
            { weight: 6, arbitrary: fc.constant("model") },
            { weight: 1, arbitrary: fc.constantFrom("/nonexistent/x.gguf", "/", "/dev/null", "", "model\u0000.gguf", tmpdir()) },
            { weight: 1, arbitrary: wrongType },
        );
        await fuzz("load and createContext", fc.oneof(
            fc.record({ op: fc.constant("load"), path: target, o: loadOpts }),
            fc.record({ op: fc.constant("createContext"), o: ctxOpts }),
        ), async (c) => {
            if (c.op === "load") {
                const p = c.path === "model" ? path : c.path;
                const r = await call("LlamaModel.load", [p, c.o], () => LlamaModel.load(p as string, c.o as never));
                if (r.ok) {
                    assert.ok(r.value.metadata.vocabSize === vocab);
                    const t = await call("loaded.tokenize", "hi", () => r.value.tokenize("hi"));
                    assert.ok(t.ok, "a loaded model tokenizes");
                    if (r.value.metadata.vocabOnly) {
                        const k = await call("vocabOnly.createContext", {}, () => r.value.createContext({ contextSize: 64 }));
                        assert.ok(!k.ok, "a vocab-only model has no contexts");
                    }
                    r.value.dispose();
                }
                return;
            }
            const o = c.o as Record<string, unknown> | null;
            // a sane KV size: the fuzz is about the arguments, not about allocating gigabytes
            const r = await call("model.createContext", o, () => model.createContext(o as never));
            if (r.ok) {
                try {
                    const info = r.value.info;
                    assert.ok(info.contextSize >= 1 && info.seqIds >= 1 && info.seqIds === info.maxSequences && info.batchSize >= 1, show(info));
                    if (info.kvBlockSize > 0) r.value.setBlockTable(0, Int32Array.of(0));
                    const d = await call("created.decode", o, () => r.value.decode(batchFor(0, prompt.subarray(0, Math.min(4, info.batchSize, info.contextSize)), 0)));
                    if (d.ok) assert.ok(d.value.tokens[0] >= 0 && d.value.tokens[0] < vocab);
                } finally {
                    r.value.dispose();
                }
            }
        }, 60, 8);
    });

    it("disposal and busy contexts: calls during a decode, after dispose, model dispose with contexts alive", { timeout: testTimeoutMs(5) }, async () => {
        const op = fc.constantFrom("seqRemove", "seqCopy", "seqKeep", "seqPosMax", "clear", "setSampler", "saveSequence", "decode", "dispose", "modelDispose", "tokenize", "info");
        await fuzz("disposal and busy contexts", fc.tuple(fc.array(op, { minLength: 1, maxLength: 5 }), fc.boolean()), async ([ops, disposeFirst]) => {
            const c = await model.createContext(contextOptions({ contextSize: 64, seqIds: 2, batchSize: 16 }));
            try {
                if (disposeFirst) c.dispose();
                const inflight = call("tmp.decode", "prompt", () => c.decode(batchFor(0, prompt.subarray(0, 8), 0)));
                for (const o of ops) {
                    const run = (): unknown => {
                        switch (o) {
                            case "seqRemove": return c.seqRemove(0);
                            case "seqCopy": return c.seqCopy(0, 1);
                            case "seqKeep": return c.seqKeep(1);
                            case "seqPosMax": return c.seqPosMax(0);
                            case "clear": return c.clear();
                            case "setSampler": return c.setSampler(0, { temperature: 1, topK: 5, seed: 1 });
                            case "saveSequence": return c.saveSequence(0);
                            case "decode": return c.decode(batchFor(1, prompt.subarray(0, 4), 0));
                            case "dispose": return c.dispose();
                            case "modelDispose": return model.dispose(); // refused: contexts are alive
                            case "tokenize": return model.tokenize("x");
                            default: return c.info;
                        }
                    };
                    await call(`tmp.${o}`, ops, run);
                }
                await inflight;
            } finally {
                c.dispose();
            }
            assert.equal(model.disposed, false);
        }, 40, 5);
    });
});
