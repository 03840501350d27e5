// Output constraints as GBNF grammars: a regular expression (the common subset) and a list of choices,
// as vLLM's structured outputs take them. What a grammar cannot honour (lookaround, backreferences,
// word boundaries, inline flags) is refused with a typed error naming the caller's field, never dropped:
// a constraint that is silently weakened lets through output the caller ruled out.
import { ErrorCode, fieldError, type BatchwiseError } from "../binding/index.js";
import { LIMITS } from "../binding/limits.js";

/** Longest regular expression taken, in UTF-16 code units. */
export const MAX_REGEX_LENGTH = 4096;
/** Largest count in a {m,n} repetition. */
export const MAX_REGEX_REPEAT = 1000;
/**
 * Most pieces a regex may expand to once its repetitions are counted out (llama.cpp writes x{m,n} as n
 * copies of x, so (a{1000}){1000} would be a million rules).
 */
export const MAX_REGEX_EXPANSION = 20_000;
/** Deepest nesting of groups in a regex. */
export const MAX_REGEX_NESTING = 100;

const MAX_CODE_POINT = 0x10ffff;

// ---- character sets: sorted, disjoint, non-adjacent [lo, hi] code-point ranges ----------------------

type Ranges = [number, number][];

function normalize(rs: Ranges): Ranges {
    const sorted = rs.filter(([lo, hi]) => lo <= hi).sort((a, b) => a[0] - b[0]);
    const out: Ranges = [];
    for (const [lo, hi] of sorted) {
        const last = out[out.length - 1];
        if (last && lo <= last[1] + 1) last[1] = Math.max(last[1], hi);
        else out.push([lo, hi]);
    }
    return out;
}

function complement(rs: Ranges): Ranges {
    const out: Ranges = [];
    let next = 0;
    for (const [lo, hi] of normalize(rs)) {
        if (lo > next) out.push([next, lo - 1]);
        next = hi + 1;
    }
    if (next <= MAX_CODE_POINT) out.push([next, MAX_CODE_POINT]);
    return out;
}

const cp = (c: string) => c.codePointAt(0)!;
const DIGIT: Ranges = [[0x30, 0x39]];
const WORD: Ranges = [[0x30, 0x39], [0x41, 0x5a], [0x5f, 0x5f], [0x61, 0x7a]];
// JavaScript's \s: WhiteSpace and LineTerminator
const SPACE: Ranges = normalize([
    [0x09, 0x0d], [0x20, 0x20], [0xa0, 0xa0], [0x1680, 0x1680], [0x2000, 0x200a], [0x2028, 0x2029], [0x202f, 0x202f],
    [0x205f, 0x205f], [0x3000, 0x3000], [0xfeff, 0xfeff],
]);
// what '.' does not match: the line terminators
const LINE_TERMINATORS: Ranges = [[0x0a, 0x0a], [0x0d, 0x0d], [0x2028, 0x2029]];

// ---- GBNF text --------------------------------------------------------------------------------------

function hexEscape(c: number): string {
    if (c < 0x100) return "\\x" + c.toString(16).padStart(2, "0");
    if (c < 0x10000) return "\\u" + c.toString(16).padStart(4, "0");
    return "\\U" + c.toString(16).padStart(8, "0");
}

/** One code point inside a GBNF string literal. */
function literalChar(c: number): string {
    switch (c) {
        case 0x22: return '\\"';
        case 0x5c: return "\\\\";
        case 0x0a: return "\\n";
        case 0x0d: return "\\r";
        case 0x09: return "\\t";
    }
    // control characters, and what no UTF-8 text holds (lone surrogates), as escapes; the rest as it is
    if (c < 0x20 || c === 0x7f || (c >= 0x80 && c < 0xa0) || (c >= 0xd800 && c <= 0xdfff)) return hexEscape(c);
    return String.fromCodePoint(c);
}

/** A string as a GBNF string literal: quotes, backslashes and control characters escaped, the rest as UTF-8. */
export function gbnfLiteral(s: string): string {
    let out = '"';
    for (const ch of s) out += literalChar(cp(ch));
    return out + '"';
}

/** One code point inside a GBNF character class: letters and digits as they are, anything else escaped. */
function classChar(c: number): string {
    return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) ? String.fromCharCode(c) : hexEscape(c);
}

function classText(rs: Ranges, negated: boolean): string {
    return "[" + (negated ? "^" : "") + rs.map(([lo, hi]) => (lo === hi ? classChar(lo) : `${classChar(lo)}-${classChar(hi)}`)).join("") + "]";
}

/** A set as the shorter of its class and its complement's negated class. */
function setText(rs: Ranges): string {
    const c = complement(rs);
    if (c.length === 0) return classText([[0, MAX_CODE_POINT]], false);
    return c.length < rs.length ? classText(c, true) : classText(rs, false);
}

// ---- regular expressions ----------------------------------------------------------------------------

type Node =
    | { kind: "char"; c: number }
    | { kind: "set"; ranges: Ranges }
    | { kind: "alt"; branches: Node[][] }
    | { kind: "repeat"; node: Node; min: number; max: number };

class RegexParser {
    private i = 0;
    private depth = 0;

    constructor(private readonly p: string, private readonly field: string) {}

    fail(reason: string, at = this.i): BatchwiseError {
        return fieldError(ErrorCode.InvalidArgument, this.field, `${reason} (at offset ${at})`);
    }

    parse(): Node {
        const p = this.p;
        let end = p.length;
        // ^ and $ at the ends say what a full match means anyway; anywhere else they are assertions
        if (p.startsWith("^")) this.i = 1;
        if (end > this.i && p.endsWith("$") && !escapedAt(p, end - 1)) end--;
        const node = this.alternation(end);
        if (this.i !== end) throw this.fail(p[this.i] === ")" ? "has a ')' without its '('" : `cannot read '${p[this.i]}' here`);
        return node;
    }

    private alternation(end: number): Node {
        const branches: Node[][] = [this.sequence(end)];
        while (this.i < end && this.p[this.i] === "|") {
            this.i++;
            branches.push(this.sequence(end));
        }
        return { kind: "alt", branches };
    }

    private sequence(end: number): Node[] {
        const items: Node[] = [];
        while (this.i < end) {
            const ch = this.p[this.i];
            if (ch === "|" || ch === ")") break;
            let atom = this.atom(end);
            const q = this.quantifier(end);
            if (q) {
                atom = { kind: "repeat", node: atom, min: q.min, max: q.max };
                if (this.quantifier(end)) throw this.fail("repeats a repetition (a quantifier follows another: put the first in a group)", q.at);
            }
            items.push(atom);
        }
        return items;
    }

    /** A quantifier at i (?, *, +, {m}, {m,}, {m,n}, each maybe lazy); undefined if none. */
    private quantifier(end: number): { min: number; max: number; at: number } | undefined {
        const p = this.p;
        const at = this.i;
        if (at >= end) return undefined;
        let min: number, max: number;
        const ch = p[at];
        if (ch === "?" || ch === "*" || ch === "+") {
            [min, max] = ch === "?" ? [0, 1] : ch === "*" ? [0, Infinity] : [1, Infinity];
            this.i++;
        } else if (ch === "{") {
            const m = /^\{(\d+)(,(\d*))?\}/.exec(p.slice(at, Math.min(end, at + 32)));
            if (!m) return undefined; // a '{' that starts no repetition is itself (as JavaScript and Python read it)
            min = Number(m[1]);
            max = m[2] === undefined ? min : m[3] === "" ? Infinity : Number(m[3]);
            if (min > MAX_REGEX_REPEAT || (max !== Infinity && max > MAX_REGEX_REPEAT)) {
                throw this.fail(`repeats something ${m[0]}: at most ${MAX_REGEX_REPEAT} times are supported`, at);
            }
            if (max < min) throw this.fail(`repeats something ${m[0]}: the most times is below the least`, at);
            this.i += m[0].length;
        } else {
            return undefined;
        }
        // lazy (x*?) matches the same strings as greedy when the whole text must match
        if (this.i < end && p[this.i] === "?") this.i++;
        else if (this.i < end && p[this.i] === "+") throw this.fail("has a possessive quantifier, which is not supported");
        return { min, max, at };
    }

    private atom(end: number): Node {
        const p = this.p;
        const at = this.i;
        const ch = p[at];
        switch (ch) {
            case "(": {
                this.i++;
                if (++this.depth > MAX_REGEX_NESTING) throw this.fail(`nests groups more than ${MAX_REGEX_NESTING} deep`, at);
                if (p[this.i] === "?") {
                    const rest = p.slice(this.i, this.i + 4);
                    if (rest.startsWith("?:")) this.i += 2;
                    else if (rest.startsWith("?=") || rest.startsWith("?!") || rest.startsWith("?<=") || rest.startsWith("?<!")) {
                        throw this.fail("has a lookaround assertion, which a grammar cannot check", at);
                    } else if (rest.startsWith("?<") || rest.startsWith("?P<")) {
                        // a named group matches what an unnamed one does; only references to it are refused
                        const m = /^\?P?<([A-Za-z_][A-Za-z0-9_]*)>/.exec(p.slice(this.i, this.i + 80));
                        if (!m) throw this.fail("has a malformed group name", at);
                        this.i += m[0].length;
                    } else if (rest.startsWith("?P=")) {
                        throw this.fail("has a backreference, which a grammar cannot check", at);
                    } else {
                        throw this.fail("has an inline flag or group kind '(" + rest.slice(0, 2) + "' that is not supported", at);
                    }
                }
                const inner = this.alternation(end);
                if (p[this.i] !== ")" || this.i >= end) throw this.fail("has a '(' without its ')'", at);
                this.i++;
                this.depth--;
                return inner;
            }
            case "[":
                return this.charClass(end);
            case ".":
                this.i++;
                return { kind: "set", ranges: complement(LINE_TERMINATORS) };
            case "\\": {
                const e = this.escape(end, false);
                return typeof e === "number" ? { kind: "char", c: e } : { kind: "set", ranges: e };
            }
            case "*": case "+": case "?":
                throw this.fail(`has '${ch}' with nothing to repeat`);
            case "^": case "$":
                throw this.fail(`has '${ch}' inside the pattern: only a leading '^' and a trailing '$' are supported`);
            case "{": {
                if (/^\{\d+(,\d*)?\}/.test(p.slice(at, at + 32))) throw this.fail("has a repetition with nothing to repeat");
                break;
            }
        }
        const c = p.codePointAt(at)!;
        this.i += c > 0xffff ? 2 : 1;
        return { kind: "char", c };
    }

    /** An escape at i (the backslash): a code point, or a set for \d \w \s and their negations. */
    private escape(end: number, inClass: boolean): number | Ranges {
        const p = this.p;
        const at = this.i;
        if (at + 1 >= end) throw this.fail("ends with a lone backslash");
        const e = p[at + 1];
        this.i += 2;
        switch (e) {
            case "d": return DIGIT;
            case "D": return complement(DIGIT);
            case "w": return WORD;
            case "W": return complement(WORD);
            case "s": return SPACE;
            case "S": return complement(SPACE);
            case "t": return 0x09;
            case "n": return 0x0a;
            case "r": return 0x0d;
            case "f": return 0x0c;
            case "v": return 0x0b;
            case "0":
                if (/[0-9]/.test(p[this.i] ?? "")) throw this.fail("has an octal escape, which is not supported", at);
                return 0;
            case "x": {
                const m = /^[0-9a-fA-F]{2}/.exec(p.slice(this.i, this.i + 2));
                if (!m) throw this.fail("has a malformed \\x escape (two hex digits are needed)", at);
                this.i += 2;
                return parseInt(m[0], 16);
            }
            case "u": {
                const braced = /^\{([0-9a-fA-F]{1,6})\}/.exec(p.slice(this.i, this.i + 8));
                if (braced) {
                    const v = parseInt(braced[1], 16);
                    if (v > MAX_CODE_POINT) throw this.fail("has a \\u{...} escape beyond U+10FFFF", at);
                    this.i += braced[0].length;
                    return v;
                }
                const m = /^[0-9a-fA-F]{4}/.exec(p.slice(this.i, this.i + 4));
                if (!m) throw this.fail("has a malformed \\u escape (four hex digits are needed)", at);
                this.i += 4;
                return parseInt(m[0], 16);
            }
            case "b":
                if (inClass) return 0x08;
                throw this.fail("has a word-boundary assertion \\b, which is not supported", at);
            case "B": throw this.fail("has a word-boundary assertion \\B, which is not supported", at);
            case "A": case "Z": case "z": case "G":
                throw this.fail(`has an anchor \\${e}, which is not supported (the whole output must match anyway)`, at);
            case "k": throw this.fail("has a named backreference, which a grammar cannot check", at);
            case "p": case "P": throw this.fail(`has a Unicode property escape \\${e}, which is not supported`, at);
            case "c": throw this.fail("has a control escape \\c, which is not supported", at);
        }
        if (/[1-9]/.test(e)) throw this.fail("has a backreference, which a grammar cannot check", at);
        if (/[A-Za-z0-9_]/.test(e)) throw this.fail(`has an unknown escape '\\${e}'`, at);
        // an escaped punctuation character (or any other non-word character) is itself
        const c = p.codePointAt(at + 1)!;
        if (c > 0xffff) this.i++;
        return c;
    }

    private charClass(end: number): Node {
        const p = this.p;
        const at = this.i;
        this.i++;
        const negated = p[this.i] === "^";
        if (negated) this.i++;
        const ranges: Ranges = [];
        for (;;) {
            if (this.i >= end) throw this.fail("has a '[' without its ']'", at);
            const ch = p[this.i];
            // JavaScript reads [] as the empty set and [^] as any character
            if (ch === "]") break;
            if (ch === "[" && /^\[[:=.]/.test(p.slice(this.i, this.i + 2))) throw this.fail("has a POSIX class or nested set, which is not supported");
            const lo = this.classAtom(end);
            if (p[this.i] === "-" && this.i + 1 < end && p[this.i + 1] !== "]") {
                const dashAt = this.i;
                this.i++;
                const hi = this.classAtom(end);
                if (typeof lo !== "number" || typeof hi !== "number") throw this.fail("has a range with a class such as \\d at one end", dashAt);
                if (hi < lo) throw this.fail("has a range out of order", dashAt);
                ranges.push([lo, hi]);
            } else if (typeof lo === "number") {
                ranges.push([lo, lo]);
            } else {
                ranges.push(...lo);
            }
        }
        this.i++; // the ']'
        const set = normalize(ranges);
        const out = negated ? complement(set) : set;
        if (out.length === 0) throw this.fail("has a character class that matches no character", at);
        return { kind: "set", ranges: out };
    }

    private classAtom(end: number): number | Ranges {
        const p = this.p;
        if (p[this.i] === "\\") return this.escape(end, true);
        const c = p.codePointAt(this.i)!;
        this.i += c > 0xffff ? 2 : 1;
        return c;
    }
}

function escapedAt(p: string, i: number): boolean {
    let n = 0;
    for (let j = i - 1; j >= 0 && p[j] === "\\"; j--) n++;
    return n % 2 === 1;
}

function nullable(n: Node): boolean {
    switch (n.kind) {
        case "char": case "set": return false;
        case "alt": return n.branches.some((b) => b.every(nullable));
        case "repeat": return n.min === 0 || nullable(n.node);
    }
}

/** Pieces a node expands to once each repetition is written out as copies (as llama.cpp's parser does). */
function expansion(n: Node): number {
    switch (n.kind) {
        case "char": case "set": return 1;
        case "alt": return n.branches.reduce((s, b) => s + b.reduce((t, x) => t + expansion(x), 0), 0) + 1;
        case "repeat": return expansion(n.node) * Math.max(1, n.max === Infinity ? n.min + 1 : n.max);
    }
}

class Emitter {
    constructor(private readonly fail: (reason: string) => BatchwiseError) {}

    alt(n: Extract<Node, { kind: "alt" }>, top: boolean): string {
        const parts = n.branches.map((b) => this.seq(b));
        if (parts.length === 1) return top ? parts[0] : `(${parts[0]})`;
        return top ? parts.join(" | ") : `(${parts.join(" | ")})`;
    }

    seq(items: Node[]): string {
        const out: string[] = [];
        let run = "";
        for (const x of items) {
            if (x.kind === "char") {
                run += String.fromCodePoint(x.c);
                continue;
            }
            if (run) out.push(gbnfLiteral(run));
            run = "";
            out.push(this.node(x));
        }
        if (run) out.push(gbnfLiteral(run));
        return out.length === 0 ? '""' : out.join(" ");
    }

    node(n: Node): string {
        switch (n.kind) {
            case "char": return gbnfLiteral(String.fromCodePoint(n.c));
            case "set": return setText(n.ranges);
            case "alt": return this.alt(n, false);
            case "repeat": {
                if (n.max === Infinity && nullable(n.node)) {
                    throw this.fail("repeats without bound something that can match the empty text (llama.cpp's grammar would recurse on it): make each repetition match at least one character");
                }
                const inner = this.node(n.node);
                // a repeated sequence needs a group around it; a literal of one character, a class or a group does not
                const atom = n.node.kind === "alt" || n.node.kind === "set" || n.node.kind === "char" ? inner : `(${inner})`;
                if (n.min === 0 && n.max === 1) return atom + "?";
                if (n.min === 0 && n.max === Infinity) return atom + "*";
                if (n.min === 1 && n.max === Infinity) return atom + "+";
                if (n.max === Infinity) return `${atom}{${n.min},}`;
                if (n.min === n.max) return n.min === 0 ? '""' : `${atom}{${n.min}}`;
                return `${atom}{${n.min},${n.max}}`;
            }
        }
    }
}

/** Makes sure a grammar fits the addon's size limit, naming the caller's field. */
function bounded(grammar: string, field: string, what: string): string {
    const bytes = Buffer.byteLength(grammar, "utf8");
    if (bytes > LIMITS.maxGrammarBytes) {
        throw fieldError(ErrorCode.InvalidArgument, field, `${what} a grammar of ${bytes} bytes, more than the ${LIMITS.maxGrammarBytes} bytes allowed`);
    }
    return grammar;
}

/**
 * A GBNF grammar (rule `root`) whose language is the texts a regular expression matches in full, read
 * as JavaScript reads a pattern with the `u` flag (code points; \d, \w and \s as JavaScript has them:
 * ASCII digits and word characters, Unicode spaces; '.' is any character but a line terminator).
 * Supported: literals and escapes (\t \n \r \f \v \0 \xHH \uHHHH \u{H..} and escaped punctuation), '.',
 * classes with ranges and negation, \d \w \s \D \W \S, groups (capturing, (?:...), named), alternation,
 * ? * + {m} {m,} {m,n} (lazy ones read as greedy: the whole text must match either way), a leading '^'
 * and a trailing '$'. Refused with ERR_INVALID_ARGUMENT naming `field`: lookaround, backreferences,
 * word boundaries, other anchors, inline flags, Unicode property escapes, and patterns past the bounds
 * (MAX_REGEX_LENGTH, MAX_REGEX_REPEAT, MAX_REGEX_EXPANSION, MAX_REGEX_NESTING, LIMITS.maxGrammarBytes).
 */
export function regexToGrammar(pattern: string, field = "regex"): string {
    if (typeof pattern !== "string") throw fieldError(ErrorCode.InvalidArgument, field, "must be a string (a regular expression)");
    if (pattern.length > MAX_REGEX_LENGTH) {
        throw fieldError(ErrorCode.InvalidArgument, field, `is ${pattern.length} characters long, at most ${MAX_REGEX_LENGTH} are supported`);
    }
    if (!isWellFormed(pattern)) throw fieldError(ErrorCode.InvalidArgument, field, "holds a lone UTF-16 surrogate (it is not valid Unicode text)");
    const parser = new RegexParser(pattern, field);
    const ast = parser.parse();
    const size = expansion(ast);
    if (size > MAX_REGEX_EXPANSION) {
        throw fieldError(ErrorCode.InvalidArgument, field, `expands to ${size} pieces once its repetitions are counted out, more than the ${MAX_REGEX_EXPANSION} supported`);
    }
    const emitter = new Emitter((reason) => fieldError(ErrorCode.InvalidArgument, field, reason));
    return bounded(`root ::= ${emitter.alt(ast as Extract<Node, { kind: "alt" }>, true)}\n`, field, "becomes");
}

/**
 * A GBNF grammar (rule `root`) whose language is exactly the given strings (vLLM's `choice`). Each is
 * a literal: quotes, backslashes, newlines and control characters are escaped, the rest kept as UTF-8.
 */
export function choiceToGrammar(choices: readonly string[], field = "choice"): string {
    if (!Array.isArray(choices) || choices.length === 0) throw fieldError(ErrorCode.InvalidArgument, field, "must be a non-empty array of strings");
    const seen = new Set<string>();
    const alts: string[] = [];
    let bytes = 0;
    choices.forEach((c, i) => {
        if (typeof c !== "string") throw fieldError(ErrorCode.InvalidArgument, `${field}[${i}]`, "must be a string");
        if (!isWellFormed(c)) throw fieldError(ErrorCode.InvalidArgument, `${field}[${i}]`, "holds a lone UTF-16 surrogate (it is not valid Unicode text)");
        if (seen.has(c)) return;
        seen.add(c);
        const literal = gbnfLiteral(c);
        // stop at once past the limit: a body of a million choices is not written out first
        bytes += Buffer.byteLength(literal, "utf8") + 3;
        if (bytes > LIMITS.maxGrammarBytes) {
            throw fieldError(ErrorCode.InvalidArgument, field, `becomes a grammar of more than the ${LIMITS.maxGrammarBytes} bytes allowed (by choice ${i})`);
        }
        alts.push(literal);
    });
    return bounded(`root ::= ${alts.join(" | ")}\n`, field, "becomes");
}

/** Whether a string is valid UTF-16 (no lone surrogates), so that it has a UTF-8 form. */
function isWellFormed(s: string): boolean {
    for (let i = 0; i < s.length; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0xd800 && c <= 0xdbff) {
            const d = s.charCodeAt(i + 1);
            if (!(d >= 0xdc00 && d <= 0xdfff)) return false;
            i++;
        } else if (c >= 0xdc00 && c <= 0xdfff) {
            return false;
        }
    }
    return true;
}
