// The regex and choice converters (lib/engine/constraints.ts) against llama.cpp's grammar engine: a text is
// in a grammar's language when the addon takes it, then end-of-generation, as a sequence's history (the
// replay refuses a token the grammar does not allow, and an end it does not allow yet). Known patterns,
// the refusals, and a property test over generated regexes of the supported subset compared with
// JavaScript's RegExp (with the u flag, as the converter reads a pattern) on generated texts.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import { BatchwiseError, choiceToGrammar, ErrorCode, gbnfLiteral, LlamaContext, LlamaModel, regexToGrammar } from "../lib/index.js";
import { LIMITS } from "../lib/binding/index.js";
import { MAX_REGEX_LENGTH, MAX_REGEX_REPEAT } from "../lib/engine/constraints.js";
import { contextOptions, loadModel, tinyQwen } from "./helpers.js";

const refused = (field: string, reason?: RegExp) => (e: unknown) => {
    assert.ok(e instanceof BatchwiseError, `expected a BatchwiseError, got ${e}`);
    assert.equal(e.code, ErrorCode.InvalidArgument, e.message);
    assert.equal(e.field, field, e.message);
    if (reason) assert.match(e.reason ?? "", reason);
    return true;
};

describe("regex and choice constraints as grammars", () => {
    let model: LlamaModel;
    let ctx: LlamaContext;
    let eot: number;

    before(async () => {
        model = await loadModel(tinyQwen);
        ctx = await model.createContext(contextOptions({ contextSize: 1024, seqIds: 1, batchSize: 64 }));
        eot = model.metadata.tokens.eot;
    });
    after(() => {
        ctx.dispose();
        model.dispose();
    });

    /** Whether the grammar's language holds `text`: its tokens and then end-of-generation fit it. */
    async function accepts(grammar: string, text: string): Promise<boolean> {
        const tokens = text.length > 0 ? Array.from(await model.tokenize(text, { addSpecial: false, parseSpecial: false })) : [];
        try {
            ctx.setSampler(0, { grammar, history: Int32Array.from([...tokens, eot]) });
            return true;
        } catch (e) {
            if (e instanceof BatchwiseError && e.code === ErrorCode.SamplerInvalid && e.field === "history") return false;
            throw e;
        }
    }

    const seen = { matched: 0, unmatched: 0 };

    /** Checks the grammar of `pattern` against JavaScript's full match on each text. */
    async function agrees(pattern: string, texts: string[]): Promise<void> {
        const grammar = regexToGrammar(pattern);
        model.checkGrammar(grammar);
        const re = new RegExp(`^(?:${pattern})$`, "u");
        for (const t of texts) {
            const expected = re.test(t);
            seen[expected ? "matched" : "unmatched"]++;
            assert.equal(await accepts(grammar, t), expected, `/${pattern}/ on ${JSON.stringify(t)}; grammar:\n${grammar}`);
        }
    }

    it("converts common patterns: each text the regex matches is taken, the others refused", async () => {
        await agrees("\\d{4}-\\d{2}-\\d{2}", ["2024-01-31", "2024-1-31", "20240-01-31", "2024-01-3", "abcd-ef-gh", ""]);
        await agrees("[\\w.+-]+@[\\w-]+\\.[a-z]{2,}", ["a.b+c@ex-ample.com", "x@y.io", "x@y.i", "@y.com", "x@.com", "x@y.COM"]);
        await agrees("(true|false)", ["true", "false", "tru", "truefalse", "TRUE"]);
        await agrees("^(?:yes|no)$", ["yes", "no", "yesno", ""]);
        await agrees("-?(0|[1-9]\\d*)(\\.\\d+)?", ["0", "-12.5", "012", "1.", "-", "3.14159"]);
        await agrees("[^\"\\\\\\n]*", ["plain text", "with \" quote", "back\\slash", "new\nline", ""]);
        await agrees("a.c", ["abc", "a c", "a\nc", "a\rc", "a\u2028c", "aéc", "a😀c", "ac"]);
        await agrees("\\s+\\S\\D\\W", ["  x!?", "\t\u3000a-+", "x a!", "  11!"]);
        await agrees("(ab|cd){2,3}e*?f+?", ["ababf", "abcdcdeeff", "abf", "abababababf"]);
        await agrees("x{0}y{1,}z{2}", ["yzz", "yyyzz", "xyzz", "zz"]);
        await agrees("[a-c\\d\\-]{3}", ["a-1", "c9b", "-\\-", "abd"]);
        await agrees("[^a-z\\s]", ["A", "a", " ", "é", "1"]);
        await agrees("(?<year>\\d{2})|(?<word>[a-z]+)", ["19", "abc", "1a"]);
        await agrees("\\x41\\u00e9\\u{1F600}\\t\\.\\*\\/", ["Aé😀\t.*/", "Aé😀 .*/"]);
        // a brace that starts no repetition is itself (as JavaScript without the u flag and Python read it)
        const braces = regexToGrammar("{\"a\": \\d+}");
        assert.equal(await accepts(braces, "{\"a\": 12}"), true);
        assert.equal(await accepts(braces, "{\"a\": }"), false);
        // Python's named groups are groups
        assert.equal(await accepts(regexToGrammar("(?P<w>[a-z]+)!"), "abc!"), true);
        await agrees("", ["", "a"]);
        await agrees("[^]", ["x", "\n", "", "xy"]);
    });

    it("refuses what a grammar cannot honour, naming the field it was given", () => {
        const cases: [string, RegExp][] = [
            ["a(?=b)", /lookaround/], ["(?<!a)b", /lookaround/], ["(?!x)y", /lookaround/], ["(a)\\1", /backreference/],
            ["(?<n>a)\\k<n>", /named backreference/], ["(?P<n>a)(?P=n)", /backreference/], ["\\bword\\b", /word-boundary/],
            ["(?i)abc", /inline flag/], ["a^b", /only a leading/], ["a$b", /only a leading/], ["\\p{L}", /Unicode property/],
            ["a**", /repeats a repetition/], ["a{2}{3}", /repeats a repetition/], ["*a", /nothing to repeat/], ["a{3,2}", /below the least/],
            [`a{${MAX_REGEX_REPEAT + 1}}`, /at most 1000/], ["(a|)*", /empty text/], ["(a*)+", /empty text/], ["(ab", /without its '\)'/],
            ["ab)", /without its '\('/], ["[ab", /without its '\]'/], ["[]", /matches no character/], ["\\", /lone backslash/], ["\\q", /unknown escape/],
            ["(".repeat(101) + "a" + ")".repeat(101), /nests groups/], ["(a{1000}){1000}", /expands to/], ["x".repeat(MAX_REGEX_LENGTH + 1), /characters long/],
            ["a\ud800", /lone UTF-16 surrogate/], ["[[:alpha:]]", /POSIX/], ["a++", /possessive/], ["\\Aabc", /anchor/], ["[\\d-z]", /range/],
        ];
        for (const [pattern, why] of cases) {
            assert.throws(() => regexToGrammar(pattern, "structured_outputs.regex"), refused("structured_outputs.regex", why), pattern);
        }
        // within bounds, a grammar's size is held to the addon's limit: many alternatives of long literals
        const big = Array.from({ length: 35 }, (_, i) => `${"x".repeat(100)}${i}`).join("|");
        assert.doesNotThrow(() => regexToGrammar(big));
        // each \S is a class of ten ranges: 2,000 of them write more than 128 KiB
        assert.throws(() => regexToGrammar("\\S".repeat(2000), "guided_regex"), refused("guided_regex", /bytes allowed/));
        assert.throws(() => choiceToGrammar(Array.from({ length: 2000 }, (_, i) => "c".repeat(80) + i), "guided_choice"),
            refused("guided_choice", new RegExp(`more than the ${LIMITS.maxGrammarBytes} bytes allowed`)));
    });

    it("turns choices into literals: quotes, backslashes, newlines, control characters and UTF-8 round-trip exactly", async () => {
        const choices = ["yes", "no", "say \"hi\"", "C:\\path\\", "two\nlines\r\n", "tab\there", "\u0001ctl\u007f", "naïve 😀 中文", "[x] -y- #z", ""];
        const g = choiceToGrammar(choices, "guided_choice");
        model.checkGrammar(g);
        for (const c of choices) assert.equal(await accepts(g, c), true, JSON.stringify(c));
        for (const c of ["ye", "yesno", "say \"hi", "C:\\path", "two\nlines\n", "naïve 😀", " "]) assert.equal(await accepts(g, c), false, JSON.stringify(c));
        // a duplicate is one alternative
        assert.equal(choiceToGrammar(["a", "a", "b"]), 'root ::= "a" | "b"\n');
        assert.equal(gbnfLiteral("a\"b\\c\nd"), '"a\\"b\\\\c\\nd"');
        assert.throws(() => choiceToGrammar([], "structured_outputs.choice"), refused("structured_outputs.choice"));
        assert.throws(() => choiceToGrammar(["a", 3 as unknown as string], "guided_choice"), refused("guided_choice[1]"));
        assert.throws(() => choiceToGrammar(["a", "\udc00"], "guided_choice"), refused("guided_choice[1]", /surrogate/));
    });

    // ---- property test: generated regexes of the supported subset against JavaScript's RegExp ----------

    type Rx =
        | { k: "char"; c: string }
        | { k: "class"; src: string }
        | { k: "seq"; items: Rx[] }
        | { k: "alt"; branches: Rx[]; group: "(" | "(?:" }
        | { k: "rep"; node: Rx; q: string; min: number; max: number };

    const META = new Set([..."\\^$.|?*+()[]{}/"]);
    const CHARS = ["a", "b", "c", "x", "0", "7", "_", " ", "\n", "\t", "é", "😀", "中", ".", "-", "\"", "\\", "(", "{", "]", "*"];
    const render = (r: Rx): string => {
        switch (r.k) {
            case "char": return META.has(r.c) ? "\\" + r.c : r.c === "\n" ? "\\n" : r.c === "\t" ? "\\t" : r.c;
            case "class": return r.src;
            case "seq": return r.items.map(render).join("");
            case "alt": return r.group + r.branches.map(render).join("|") + ")";
            case "rep": return render(r.node) + r.q;
        }
    };
    const nullable = (r: Rx): boolean => {
        switch (r.k) {
            case "char": case "class": return false;
            case "seq": return r.items.every(nullable);
            case "alt": return r.branches.some(nullable);
            case "rep": return r.min === 0 || nullable(r.node);
        }
    };
    const classes = ["\\d", "\\w", "\\s", "\\D", "\\W", "\\S", ".", "[a-c]", "[^a-c]", "[\\d_x]", "[^\\s\\d]", "[é-ê😀]", "[\\-\\]a]", "[^\\n]", "[ -/]", "[\\w\\s]"];
    const quantifiers = [
        { q: "?", min: 0, max: 1 }, { q: "*", min: 0, max: Infinity }, { q: "+", min: 1, max: Infinity }, { q: "{2}", min: 2, max: 2 },
        { q: "{0,2}", min: 0, max: 2 }, { q: "{1,}", min: 1, max: Infinity }, { q: "{1,3}", min: 1, max: 3 }, { q: "*?", min: 0, max: Infinity },
        { q: "+?", min: 1, max: Infinity }, { q: "??", min: 0, max: 1 }, { q: "{0,1}?", min: 0, max: 1 },
    ];
    const { rx } = fc.letrec<{ rx: Rx; atom: Rx; seq: Rx; alt: Rx }>((tie) => ({
        atom: fc.oneof(
            { weight: 4, arbitrary: fc.constantFrom(...CHARS).map((c): Rx => ({ k: "char", c })) },
            { weight: 3, arbitrary: fc.constantFrom(...classes).map((src): Rx => ({ k: "class", src })) },
            { weight: 2, depthSize: "small", arbitrary: tie("alt") },
        ),
        rx: fc.oneof(
            { weight: 3, arbitrary: tie("atom") },
            {
                weight: 2,
                arbitrary: fc.tuple(tie("atom"), fc.constantFrom(...quantifiers))
                    // a repetition without bound of what can be empty is refused (tested above), not generated
                    .filter(([node, q]) => q.max !== Infinity || !nullable(node))
                    .map(([node, q]): Rx => ({ k: "rep", node, q: q.q, min: q.min, max: q.max })),
            },
        ),
        seq: fc.array(tie("rx"), { minLength: 0, maxLength: 4 }).map((items): Rx => ({ k: "seq", items })),
        alt: fc.tuple(fc.array(tie("seq"), { minLength: 1, maxLength: 3 }), fc.constantFrom("(" as const, "(?:" as const))
            .map(([branches, group]): Rx => ({ k: "alt", branches, group })),
    }));

    /** A text the regex matches, picked with `rand` (a class's character among those that match it). */
    function sample(r: Rx, rand: () => number): string {
        const pick = <T>(xs: T[]) => xs[Math.floor(rand() * xs.length)];
        switch (r.k) {
            case "char": return r.c;
            case "class": {
                const re = new RegExp(`^${r.src}$`, "u");
                return pick([...CHARS, "Z", "ß", "\u3000", "!"].filter((c) => re.test(c)));
            }
            case "seq": return r.items.map((x) => sample(x, rand)).join("");
            case "alt": return sample(pick(r.branches), rand);
            case "rep": {
                const n = r.min + Math.floor(rand() * ((r.max === Infinity ? 3 : r.max) - r.min + 1));
                return Array.from({ length: n }, () => sample(r.node, rand)).join("");
            }
        }
    }

    it("agrees with JavaScript's RegExp on generated regexes and texts (fast-check)", async () => {
        seen.matched = seen.unmatched = 0;
        await fc.assert(fc.asyncProperty(rx, fc.integer(), fc.array(fc.string({ unit: fc.constantFrom(...CHARS), maxLength: 6 }), { maxLength: 3 }),
            async (r, seed, randoms) => {
                const pattern = render(r);
                let s = seed >>> 0;
                const rand = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
                const texts = new Set<string>(randoms);
                for (let i = 0; i < 3; i++) {
                    const m = sample(r, rand);
                    texts.add(m);
                    const chars = [...m];
                    const at = Math.floor(rand() * (chars.length + 1));
                    // near misses: a character left out, one put in, one doubled
                    texts.add([...chars.slice(0, at), ...chars.slice(at + 1)].join(""));
                    texts.add([...chars.slice(0, at), CHARS[Math.floor(rand() * CHARS.length)], ...chars.slice(at)].join(""));
                    if (at < chars.length) texts.add([...chars.slice(0, at + 1), ...chars.slice(at)].join(""));
                }
                await agrees(pattern, [...texts].filter((t) => [...t].length < 200));
            }), { numRuns: 300 });
        // both answers were asked for, many times: the texts are not all matches, nor all misses
        assert.ok(seen.matched > 300 && seen.unmatched > 300, JSON.stringify(seen));
    });
});
