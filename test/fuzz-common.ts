// Shared by the fuzz suites (fuzz-binding, fuzz-http): how long each property runs, and the values
// around the limits that the generators mix into otherwise random input.
//
// By default every property runs a fixed, small number of cases under a time cap, so that the whole
// fuzz stays around a minute in `npm test`. For a longer run:
//   BATCHWISE_FUZZ_RUNS=N      N cases per property
//   BATCHWISE_FUZZ_SECONDS=S   as many cases as fit in S seconds, per property (takes precedence)
//   BATCHWISE_FUZZ_SEED=X      replay a run (fast-check prints the seed and path of a failure)
import fc from "fast-check";

const envInt = (name: string): number | undefined => {
    const v = process.env[name];
    if (v === undefined || v === "") return undefined;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a number >= 0 (got '${v}')`);
    return n;
};

export const fuzzSeconds = envInt("BATCHWISE_FUZZ_SECONDS");
export const fuzzRuns = envInt("BATCHWISE_FUZZ_RUNS");
const fuzzSeed = envInt("BATCHWISE_FUZZ_SEED");

/** True when BATCHWISE_FUZZ_RUNS or BATCHWISE_FUZZ_SECONDS asks for a long run: the generators then go bigger. */
export const longFuzz = fuzzSeconds !== undefined || fuzzRuns !== undefined;

/**
 * fast-check parameters for one property: `defaultRuns` cases (capped at `capSeconds`) unless the
 * environment asks for more. A property that hits its time cap passes with the cases it ran.
 */
export function fuzzParameters<T>(defaultRuns: number, capSeconds: number, extra: fc.Parameters<T> = {}): fc.Parameters<T> {
    const base: fc.Parameters<T> = fuzzSeconds !== undefined
        ? { numRuns: 1_000_000_000, interruptAfterTimeLimit: fuzzSeconds * 1000 }
        : { numRuns: fuzzRuns ?? defaultRuns, ...(fuzzRuns === undefined && { interruptAfterTimeLimit: capSeconds * 1000 }) };
    return { ...base, markInterruptAsFailure: false, ...(fuzzSeed !== undefined && { seed: fuzzSeed }), includeErrorInReport: true, ...extra };
}

/**
 * Checks `predicate` over values of `arb` with fuzzParameters(defaultRuns, capSeconds). fast-check's time
 * limit stops a run without waiting for the case in flight: this waits for it, so that no case of one
 * property runs on into the next. Prints how many cases ran.
 */
export async function fuzz<T>(label: string, arb: fc.Arbitrary<T>, predicate: (v: T) => Promise<void>, defaultRuns: number, capSeconds: number,
    extra: fc.Parameters<[T]> = {}): Promise<void> {
    let inflight: Promise<unknown> = Promise.resolve();
    let cases = 0;
    let firstFailure: unknown = undefined;
    const t0 = performance.now();
    const property = fc.asyncProperty(arb, (v) => {
        cases++;
        const p = predicate(v);
        inflight = p.catch(() => {});
        return p.catch((e) => {
            firstFailure ??= e;
            throw e;
        });
    });
    try {
        await fc.assert(property, fuzzParameters<[T]>(defaultRuns, capSeconds, extra));
    } catch (e) {
        // fast-check writes the counterexample into its report, and a deeply nested one overflows the stack
        // there: the property's own failure is what says what went wrong
        if (e instanceof RangeError && firstFailure !== undefined) throw firstFailure;
        throw e;
    } finally {
        await inflight;
        process.stderr.write(`fuzz: ${label}: ${cases} cases in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
    }
}

/** The time budget (node:test's timeout) of a test or suite that runs `properties` properties of `capSeconds` each, with room for setup. */
export function testTimeoutMs(capSeconds: number, properties = 1): number {
    return (fuzzSeconds !== undefined ? properties * (fuzzSeconds + 120) : fuzzRuns !== undefined ? 24 * 3600 : capSeconds + 120) * 1000;
}

/** Integers at and around a limit. */
export const around = (...limits: number[]): number[] => limits.flatMap((l) => [l - 1, l, l + 1]);

/** Numbers that break careless integer handling. */
export const NASTY_NUMBERS: readonly number[] = [
    0, -0, -1, 1, 2, 2 ** 31 - 1, 2 ** 31, -(2 ** 31), -(2 ** 31) - 1, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 2 ** 53, 2 ** 53 + 2,
    -(2 ** 53), Number.MAX_VALUE, -Number.MAX_VALUE, Number.MIN_VALUE, Infinity, -Infinity, NaN, 0.5, 1.5, -0.5, 1e-300, 1e300,
];

/** An integer near one of `limits`, a nasty number, or any integer. */
export function intAround(...limits: number[]): fc.Arbitrary<number> {
    return fc.oneof(
        { weight: 4, arbitrary: fc.constantFrom(...around(...limits)) },
        { weight: 2, arbitrary: fc.constantFrom(...NASTY_NUMBERS) },
        { weight: 1, arbitrary: fc.integer() },
        { weight: 1, arbitrary: fc.integer({ min: Math.min(0, ...limits) - 2, max: Math.max(2, ...limits) + 2 }) },
    );
}

/** Values of the wrong type for any field. */
export const wrongType: fc.Arbitrary<unknown> = fc.oneof(
    fc.constantFrom(null, undefined, true, false, "", "1", "NaN", "Infinity", "-1", "1e999", "0x10", [], {}, [1], { valueOf: 1 }),
    fc.string({ maxLength: 8 }),
    fc.double(),
    fc.bigInt(),
);

/** A lone UTF-16 surrogate, or text with one inside. */
export const loneSurrogate: fc.Arbitrary<string> = fc.tuple(fc.string({ maxLength: 4 }), fc.integer({ min: 0xd800, max: 0xdfff }), fc.string({ maxLength: 4 }))
    .map(([a, s, b]) => a + String.fromCharCode(s) + b);

/** Special-token text of the Qwen2 tokenizer (and other common ones). */
export const SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<unk>", "<|eot_id|>", "<|begin_of_text|>"];

/** Text of every kind: unicode, lone surrogates, control characters, special tokens (repeated), long runs. */
export function nastyText(maxRepeat = longFuzz ? 20_000 : 1_000): fc.Arbitrary<string> {
    return fc.oneof(
        { weight: 3, arbitrary: fc.string({ maxLength: 40 }) },
        { weight: 2, arbitrary: fc.string({ unit: "binary", maxLength: 40 }) },
        { weight: 2, arbitrary: loneSurrogate },
        { weight: 1, arbitrary: fc.constantFrom("", " ", "\n", "\u0000", "\u0000\u0000abc", "\r\n\t", "\u202e", "\ufeff", "\uffff", "🦙".repeat(3), "é".normalize("NFD")) },
        {
            weight: 2,
            arbitrary: fc.tuple(fc.constantFrom(...SPECIAL_TOKENS, "<|im_start|>user\n", "<|", "|>", "a", " "), fc.integer({ min: 1, max: maxRepeat }))
                .map(([s, n]) => s.repeat(n)),
        },
        { weight: 1, arbitrary: fc.array(fc.constantFrom(...SPECIAL_TOKENS, "hello", " ", "\n", "{", "}"), { maxLength: 200 }).map((a) => a.join("")) },
    );
}

/** A JSON value nested `depth` deep (arrays or objects), built without recursion. */
export function deepJson(depth: number, kind: "array" | "object" = "array"): unknown {
    let v: unknown = 1;
    for (let i = 0; i < depth; i++) v = kind === "array" ? [v] : { a: v };
    return v;
}

/** The JSON text of a value nested `depth` deep, built as text (no stack for JSON.stringify to overflow). */
export function deepJsonText(depth: number, kind: "array" | "object" = "array"): string {
    return kind === "array" ? "[".repeat(depth) + "1" + "]".repeat(depth) : '{"a":'.repeat(depth) + "1" + "}".repeat(depth);
}

/**
 * Odd JSON schemas: random keyword soup, deep nesting, huge bounds, bad refs and patterns. Nesting as
 * objects stays under `maxDepthExtreme` (2,000 by default: deeper objects overflow the stack of whatever
 * walks them recursively, the test's reporting included); deeper schemas are `deepSchemaText`.
 */
export function oddSchema(maxDepthExtreme = 2_000): fc.Arbitrary<unknown> {
    const { schema } = fc.letrec<{ schema: unknown }>((tie) => ({
        schema: fc.oneof(
            { depthSize: "small", withCrossShrink: true },
            fc.constantFrom(
                {}, { type: "object" }, { type: "string" }, { type: "integer" }, { type: "number" }, { type: "boolean" }, { type: "null" },
                { type: "array" }, { type: ["string", "null"] }, { type: "nonsense" }, { type: 42 }, true, false, null, 0, "x", [],
                { $ref: "#" }, { $ref: "#/definitions/nope" }, { $ref: "http://example.com/x.json" }, { $ref: "#/$defs/a", $defs: { a: { $ref: "#/$defs/a" } } },
                { type: "string", pattern: "^(a|b)*$" }, { type: "string", pattern: "((((((((((a))))))))))" }, { type: "string", pattern: "[" },
                { type: "string", pattern: "^\\d{2147483648}$" }, { type: "string", pattern: "^a{1,99999}$" }, { type: "string", pattern: "(?=a)" },
                { type: "string", format: "date-time" }, { type: "string", format: "uuid" }, { type: "string", format: "nope" },
                { type: "string", minLength: 2 ** 31, maxLength: 2 ** 32 }, { type: "string", minLength: 5, maxLength: 2 }, { type: "string", maxLength: -1 },
                { type: "array", minItems: 100000 }, { type: "array", minItems: 3, maxItems: 1 }, { type: "array", maxItems: 1e999 },
                { type: "integer", minimum: 1e308, maximum: -1e308 }, { type: "integer", minimum: -(2 ** 63), maximum: 2 ** 64 }, { type: "number", exclusiveMinimum: 0.5 },
                { enum: [] }, { enum: [1, "a", null, { a: [1] }] }, { const: { a: [1, { b: "\u0000" }] } }, { const: "\ud800" },
                { type: "object", properties: { "": {}, "\u0000": {}, "a\"b": {}, "\\": {} } }, { type: "object", required: ["missing"] },
                { type: "object", additionalProperties: false }, { type: "object", additionalProperties: { type: "integer" }, minProperties: 3, maxProperties: 1 },
                { anyOf: [] }, { oneOf: [] }, { allOf: [] }, { not: {} }, { if: {}, then: {}, else: {} }, { prefixItems: [{}, {}], items: false },
            ),
            fc.record({
                type: fc.constantFrom("object", "array", "string", "integer", "number", "boolean", "null"),
                properties: fc.dictionary(fc.string({ maxLength: 6 }), tie("schema"), { maxKeys: 4 }),
                items: tie("schema"),
                anyOf: fc.array(tie("schema"), { maxLength: 3 }),
                oneOf: fc.array(tie("schema"), { maxLength: 3 }),
                allOf: fc.array(tie("schema"), { maxLength: 3 }),
                prefixItems: fc.array(tie("schema"), { maxLength: 3 }),
                required: fc.array(fc.string({ maxLength: 6 }), { maxLength: 3 }),
                enum: fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 4 }),
                const: fc.jsonValue({ maxDepth: 2 }),
                pattern: fc.oneof(fc.string({ maxLength: 12 }), fc.constantFrom("^[a-z]+$", "^(\\d+)?$", "^.*$", "^[^\\]]$", "^\\p{L}$", "^(a|)+$")),
                minLength: intAround(0, 1, 2 ** 31),
                maxLength: intAround(0, 1, 2 ** 31),
                minItems: intAround(0, 1, 2 ** 31),
                maxItems: intAround(0, 1, 2 ** 31),
                minimum: fc.oneof(fc.double(), intAround(0, 2 ** 31, 2 ** 53)),
                maximum: fc.oneof(fc.double(), intAround(0, 2 ** 31, 2 ** 53)),
                additionalProperties: fc.oneof(fc.boolean(), tie("schema")),
                $ref: fc.constantFrom("#", "#/properties/a", "#/$defs/x", "#/definitions/", "#/items/0", "x"),
                $defs: fc.dictionary(fc.constantFrom("x", "a", ""), tie("schema"), { maxKeys: 2 }),
                format: fc.constantFrom("date", "time", "date-time", "uuid", "email", "whatever"),
            }, { requiredKeys: [] }),
        ),
    }));
    return fc.oneof(
        { weight: 8, arbitrary: schema },
        {
            weight: 1,
            arbitrary: fc.tuple(fc.constantFrom("items", "properties", "anyOf", "not"), fc.integer({ min: 1, max: maxDepthExtreme })).map(([k, depth]) => {
                // a schema nested `depth` deep through one keyword, built without recursion
                let s: unknown = { type: "integer" };
                for (let i = 0; i < depth; i++) {
                    s = k === "items" ? { type: "array", items: s } : k === "properties" ? { type: "object", properties: { a: s } } : k === "anyOf" ? { anyOf: [s] } : { not: s };
                }
                return s;
            }),
        },
        {
            weight: 1,
            arbitrary: fc.integer({ min: 1, max: longFuzz ? 20_000 : 2_000 }).map((n) => ({
                // many properties, or a huge enum
                type: "object", properties: Object.fromEntries(Array.from({ length: n }, (_, i) => [`p${i}`, { type: "string", enum: [`v${i}`] }])),
                required: Array.from({ length: Math.min(n, 50) }, (_, i) => `p${i}`),
            })),
        },
    );
}

/** The JSON text of a schema nested up to `max` deep through items, properties or anyOf (no JS object of that depth is made). */
export function deepSchemaText(max = longFuzz ? 200_000 : 20_000): fc.Arbitrary<string> {
    return fc.tuple(fc.constantFrom("items", "properties", "anyOf"), fc.integer({ min: 1, max })).map(([k, d]) =>
        k === "items" ? '{"type":"array","items":'.repeat(d) + "{}" + "}".repeat(d)
            : k === "properties" ? '{"type":"object","properties":{"a":'.repeat(d) + "{}" + "}}".repeat(d)
                : '{"anyOf":['.repeat(d) + "{}" + "]}".repeat(d));
}

/** GBNF-ish text: fragments of the grammar syntax glued at random, plus a few deep or huge grammars. */
export function grammarish(): fc.Arbitrary<string> {
    const piece = fc.constantFrom(
        "root", " ::= ", "::=", " ", "\n", "\"", "\"a\"", "'a'", "[a-z]", "[^\\n]", "[", "]", "^", "(", ")", "*", "+", "?", "|",
        "{", "}", "{0}", "{1,}", "{2,3}", "{3,2}", "{2000}", "{2001}", "{4294967296}", "{99999999999999999999}", "{,5}", "\\", "\\x", "\\u12",
        "\\U0010FFFF", "\\xFF", "x", "rule-name", "r ::= r", "root ::= root", "root ::= x\nx ::= root", "#comment", "<[1]>", "<|im_end|>",
        "\u0000", "🦙", ".", "root ::= \"a\" | \"\"", "root ::= (\"a\"* )*", "root ::= [\\x00-\\uFFFF]", "a ::= \"\"",
    );
    return fc.oneof(
        { weight: 6, arbitrary: fc.array(piece, { maxLength: 30 }).map((a) => a.join("")) },
        { weight: 3, arbitrary: fc.array(piece, { maxLength: 20 }).map((a) => "root ::= " + a.join("")) },
        { weight: 1, arbitrary: fc.string({ maxLength: 60 }) },
        {
            weight: 1,
            arbitrary: fc.tuple(fc.constantFrom("paren", "chain", "alt", "repeat"), fc.integer({ min: 1, max: longFuzz ? 200_000 : 20_000 })).map(([k, n]) => {
                if (k === "paren") return "root ::= " + "(".repeat(n) + "\"a\"" + ")".repeat(n);
                if (k === "chain") return "root ::= r0\n" + Array.from({ length: Math.min(n, 20_000) }, (_, i) => `r${i} ::= r${i + 1}`).join("\n") + `\nr${Math.min(n, 20_000)} ::= "a"`;
                if (k === "alt") return "root ::= " + Array.from({ length: Math.min(n, longFuzz ? 20_000 : 2_000) }, (_, i) => `"${i}"`).join(" | ");
                return `root ::= "a"{${n}}`;
            }),
        },
    );
}
