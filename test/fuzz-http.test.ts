// Fuzz over the HTTP routes of a real `batchwise serve` (a child process, loopback, a tiny model): JSON
// bodies of every shape with field values at and around each limit (vocabulary size, context size, 0,
// -1, 2^31, 2^32, 1e999, NaN-like text, huge and special-token strings, lone surrogates, deep nesting,
// odd schemas). Every response must be a 200 (a stream that ends with [DONE] and holds no error event),
// or a 4xx with an OpenAI error body {"error": {"message", "type", "param", "code"}} (Anthropic's
// {"type": "error", "error": {"type", "message"}} and event stream on /v1/messages): never a 5xx, a
// dropped connection or a hang. After every request the server must still answer and its KV cache be
// back to no used blocks. A server that dies is restarted, and the input that killed it is reported
// with the server's last output.
// Long run: BATCHWISE_FUZZ_SECONDS=600 node --test dist/test/fuzz-http.test.js (see test/fuzz-common.ts).
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import { spawnSupervised, type Supervised } from "../lib/bench/supervise.js";
import { LlamaModel } from "../lib/index.js";
import { deepJsonText, deepSchemaText, fuzz, grammarish, intAround, longFuzz, loneSurrogate, nastyText, oddSchema, SPECIAL_TOKENS, testTimeoutMs, wrongType } from "./fuzz-common.js";
import { gpuLayers, modelPath, tinyQwen } from "./helpers.js";

const root = join(import.meta.dirname, "..", "..");
const cli = join(root, "dist", "lib", "cli", "main.js");
/** KV tokens of the server: small, so that prompts at and past the context are cheap. */
const CTX = 512;
/** A request not answered in this long is aborted (the fuzz then checks the server was busy with it, not hung). */
const DEADLINE_MS = longFuzz ? 60_000 : 8_000;

/** A value written into the body as this JSON text, as is (1e999, -0, 123456789012345678901234567890, deep nesting, even invalid JSON). */
class Raw {
    constructor(readonly text: string) {}
    toJSON(): string {
        return `<raw ${this.text.length > 60 ? this.text.slice(0, 60) + "..." : this.text}>`;
    }
}

/**
 * JSON text of a body that may hold Raw values (undefined fields are left out; undefined in an array is null).
 * Written with a work list, not recursion: generated bodies nest thousands deep, past what a JS stack (or
 * JSON.stringify with a replacer) takes.
 */
function serialize(v: unknown): string {
    type Item = { v: unknown } | string;
    const out: string[] = [];
    const work: Item[] = [{ v }];
    const pushAll = (items: Item[]) => {
        for (let i = items.length - 1; i >= 0; i--) work.push(items[i]);
    };
    while (work.length > 0) {
        const item = work.pop()!;
        if (typeof item === "string") {
            out.push(item);
            continue;
        }
        const x = item.v;
        if (x instanceof Raw) {
            out.push(x.text);
        } else if (Array.isArray(x)) {
            const items: Item[] = ["["];
            x.forEach((e, i) => items.push(...(i > 0 ? [","] : []), e === undefined ? "null" : { v: e }));
            pushAll([...items, "]"]);
        } else if (x !== null && typeof x === "object") {
            const items: Item[] = ["{"];
            for (const [k, e] of Object.entries(x)) {
                if (e === undefined) continue;
                if (items.length > 1) items.push(",");
                items.push(JSON.stringify(k) + ":", { v: e });
            }
            pushAll([...items, "}"]);
        } else {
            out.push(typeof x === "bigint" ? x.toString() : JSON.stringify(x) ?? "null");
        }
    }
    return out.join("");
}

const RAW_NUMBERS = ["1e999", "-1e999", "1e-999", "-0", "0.0", "1.0", "1e2", "123456789012345678901234567890", "-123456789012345678901234567890", "0.1e1", "2147483648", "4294967296", "9007199254740993"];
const RAW_INVALID = ["NaN", "Infinity", "-Infinity", "undefined", "0x10", "01", "+1", ".5", "1.", "'x'", "tru"];

interface Case {
    method: string;
    path: string;
    /** The body as JSON text, or raw bytes. */
    body?: string | Buffer;
    contentType?: string | null;
    /** Abort the request after this many ms (a client that goes away). */
    abortAfterMs?: number;
    /** What the generator made (for the report). */
    shown?: unknown;
}

interface Answer {
    status: number;
    text: string;
    contentType: string;
    ms: number;
    /** The client aborted it on purpose (abortAfterMs) or at the deadline. */
    aborted?: "client" | "deadline";
}

describe("fuzz: HTTP routes", { timeout: testTimeoutMs(90, 5) }, () => {
    let vocab = 0;
    let model: string;
    let proc: Supervised | null = null;
    let base = "";
    let output = "";
    let exited: { code: number | null; signal: NodeJS.Signals | null } | null = null;
    let restarts = 0;

    async function startServer(): Promise<void> {
        output = "";
        exited = null;
        // supervised: if this test process dies (a crash, a timeout), the server goes with it
        const sup = spawnSupervised([cli, "serve", "--model", `tiny=${model}`, "--port", "0", "--ctx-size", String(CTX), "--parallel", "8",
            "--gpu-layers", String(gpuLayers), "--threads", "1", "--no-warmup", "--drain-timeout", "2", "--log-level", "warn"]);
        const p = sup.proc;
        proc = sup;
        const keep = (d: Buffer) => {
            output = (output + d.toString()).slice(-64 * 1024);
        };
        p.stdout!.on("data", keep);
        p.stderr!.on("data", keep);
        p.on("exit", (code, signal) => {
            if (proc === sup) exited = { code, signal };
        });
        const t0 = Date.now();
        while (!/ready on (http:\/\/\S+)/.test(output)) {
            if (exited) throw new Error(`the server exited while starting (${JSON.stringify(exited)}):\n${output}`);
            if (Date.now() - t0 > 120_000) throw new Error(`the server did not get ready in 120 s:\n${output}`);
            await new Promise((r) => setTimeout(r, 20));
        }
        base = /ready on (http:\/\/\S+)/.exec(output)![1];
    }

    async function stopServer(): Promise<void> {
        const sup = proc;
        proc = null;
        const p = sup?.proc;
        if (!sup || !p || p.exitCode !== null || p.signalCode !== null) return;
        const gone = new Promise((r) => p.once("exit", r));
        p.kill("SIGTERM");
        const t = setTimeout(() => sup.kill(), 10_000);
        await gone;
        clearTimeout(t);
    }

    /** Fails with the input and the server's last output when the server died; restarts it for the next case. */
    async function checkAlive(input: unknown): Promise<void> {
        if (!exited) return;
        const died = `the server died (${JSON.stringify(exited)}) on ${show(input)}\n--- its last output ---\n${output.slice(-4000)}`;
        restarts++;
        await startServer();
        throw new Error(died);
    }

    before(async () => {
        model = await modelPath(tinyQwen);
        const m = await LlamaModel.load(model, { vocabOnly: true, gpuLayers });
        vocab = m.metadata.vocabSize;
        m.dispose();
        await startServer();
    });
    after(async () => {
        await stopServer();
        process.stderr.write(`fuzz-http: answers by route and status: ${[...seen].sort().map(([k, n]) => `${k}: ${n}`).join(", ")}\n`);
        if (restarts > 0) process.stderr.write(`fuzz-http: the server was restarted ${restarts} time(s) after dying\n`);
    });

    function show(v: unknown): string {
        let s: string | undefined;
        try {
            s = JSON.stringify(v, (_k, x) => (typeof x === "string" && x.length > 200 ? `${x.slice(0, 80)}... (${x.length} chars)`
            : typeof x === "bigint" ? `${x}n` : x?.type === "Buffer" && Array.isArray(x.data) ? `<${x.data.length} bytes>` : x));
        } catch {
            return "<a case nested too deep to print>"; // a deep fuzz case overflows JSON.stringify's recursion
        }
        return s && s.length > 3000 ? s.slice(0, 3000) + `... (${s.length} chars)` : s ?? String(v);
    }

    /** Sends one case; a network error (a dropped connection) fails it, a deadline aborts it. */
    async function send(c: Case): Promise<Answer> {
        const ac = new AbortController();
        let aborted: Answer["aborted"];
        const t0 = performance.now();
        const timers: NodeJS.Timeout[] = [];
        if (c.abortAfterMs !== undefined) timers.push(setTimeout(() => { aborted ??= "client"; ac.abort(); }, c.abortAfterMs));
        let deadlineHit: Promise<void> | null = null;
        let hang = false;
        timers.push(setTimeout(() => {
            // before giving up on it: an engine with nothing to do for an unanswered request is a hang
            deadlineHit = (async () => {
                const m = await metrics(5_000);
                if (m && m.running === 0 && m.waiting === 0 && m.kvUsed === 0) hang = true;
                aborted ??= "deadline";
                ac.abort();
            })();
        }, DEADLINE_MS));
        try {
            const headers: Record<string, string> = {};
            if (c.contentType !== null) headers["content-type"] = c.contentType ?? "application/json";
            const r = await fetch(base + c.path, { method: c.method, headers, body: c.body as string | undefined, signal: ac.signal });
            const text = await r.text();
            return { status: r.status, text, contentType: r.headers.get("content-type") ?? "", ms: performance.now() - t0 };
        } catch (e) {
            if (aborted) {
                await deadlineHit;
                if (hang) throw new Error(`hang: no answer in ${DEADLINE_MS} ms while the engine was idle, for ${show(c.shown ?? c)}`);
                return { status: 0, text: "", contentType: "", ms: performance.now() - t0, aborted };
            }
            await new Promise((r) => setTimeout(r, 100)); // let an exit be seen
            await checkAlive(c.shown ?? c);
            throw new Error(`the connection failed (${(e as Error).message}: ${String((e as { cause?: unknown }).cause ?? "")}) for ${show(c.shown ?? c)}`);
        } finally {
            for (const t of timers) clearTimeout(t);
        }
    }

    /** The server's engine gauges (null if /metrics does not answer in time). */
    async function metrics(timeoutMs = 5_000): Promise<{ kvUsed: number; running: number; waiting: number } | null> {
        try {
            const r = await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(timeoutMs) });
            const t = await r.text();
            const v = (name: string) => Number(new RegExp(`^${name.replace(/:/g, "\\:")}(?:\\{[^}]*\\})? (\\S+)$`, "m").exec(t)?.[1] ?? NaN);
            return { kvUsed: v("batchwise_kv_blocks_used"), running: v("vllm:num_requests_running"), waiting: v("vllm:num_requests_waiting") };
        } catch {
            return null;
        }
    }

    /** Every request has ended: the engine must be idle with no KV block in use, soon. */
    async function assertSettled(input: unknown): Promise<void> {
        const t0 = Date.now();
        let m = await metrics();
        while (!m || m.kvUsed !== 0 || m.running !== 0 || m.waiting !== 0) {
            await checkAlive(input);
            if (Date.now() - t0 > 15_000) {
                throw new Error(`15 s after its requests ended the engine still holds work: ${JSON.stringify(m)} after ${show(input)}`);
            }
            await new Promise((r) => setTimeout(r, 25));
            m = await metrics();
        }
        const h = await fetch(`${base}/health`, { signal: AbortSignal.timeout(10_000) }).catch((e: Error) => e);
        if (h instanceof Error || h.status !== 200) throw new Error(`/health is not 200 (${h instanceof Error ? h.message : h.status}) after ${show(input)}`);
    }

    /** The response follows the contract. */
    function check(c: Case, a: Answer): void {
        const where = `${c.method} ${c.path} -> ${a.status} (${Math.round(a.ms)} ms) for ${show(c.shown ?? c)}\n  body: ${a.text.slice(0, 1500)}`;
        if (a.aborted) return;
        assert.ok(a.status < 500, `a 5xx: ${where}`);
        if (c.method === "HEAD" || c.method === "OPTIONS") return;
        if (c.path.startsWith("/v1/messages") && c.method === "POST") return checkAnthropic(c, a, where);
        if (a.status >= 400) {
            let body: { error?: Record<string, unknown> };
            try {
                body = JSON.parse(a.text);
            } catch {
                assert.fail(`a ${a.status} whose body is not JSON: ${where}`);
            }
            const e = body.error;
            assert.ok(e && typeof e === "object", `a ${a.status} without an 'error' object: ${where}`);
            assert.equal(typeof e.message, "string", `error.message is not a string: ${where}`);
            assert.equal(typeof e.type, "string", `error.type is not a string: ${where}`);
            assert.ok("param" in e && (e.param === null || typeof e.param === "string"), `error.param is missing or not a string/null: ${where}`);
            assert.ok("code" in e && (e.code === null || typeof e.code === "string"), `error.code is missing or not a string/null: ${where}`);
            return;
        }
        assert.equal(a.status, 200, `not a 200 or 4xx: ${where}`);
        if (a.contentType.startsWith("text/event-stream") && c.path === "/v1/responses") {
            // the Responses API's events: each named, in sequence, ending with the whole response; no [DONE]
            const blocks = a.text.split("\n\n").filter((b) => b.trim() !== "");
            let last: { type?: string; sequence_number?: number } = {};
            for (const [i, block] of blocks.entries()) {
                const m = /^event: (\S+)\ndata: (.*)$/s.exec(block);
                assert.ok(m, `not a named SSE event: ${where}`);
                last = JSON.parse(m[2]) as typeof last;
                assert.equal(last.type, m[1], `an event named apart from its type: ${where}`);
                assert.notEqual(last.type, "error", `an error event in a 200 stream: ${where}`);
                assert.equal(last.sequence_number, i, `events out of sequence: ${where}`);
            }
            assert.ok(last.type === "response.completed" || last.type === "response.incomplete", `a stream that does not end with the response: ${where}`);
            return;
        }
        if (a.contentType.startsWith("text/event-stream")) {
            assert.ok(a.text.endsWith("data: [DONE]\n\n"), `a stream that does not end with [DONE]: ${where}`);
            for (const block of a.text.split("\n\n")) {
                const line = block.trim();
                if (!line || line === "data: [DONE]") continue;
                assert.ok(line.startsWith("data: "), `not an SSE data line: ${where}`);
                const ev = JSON.parse(line.slice(6)) as { error?: unknown; choices?: unknown };
                assert.ok(!ev.error, `an error event in a 200 stream: ${JSON.stringify(ev.error)} in ${where}`);
            }
            return;
        }
        const body = JSON.parse(a.text) as { choices?: { finish_reason?: string }[]; tokens?: unknown; prompt?: unknown; data?: unknown; id?: unknown; object?: unknown; status?: unknown; output?: unknown };
        if (c.path === "/v1/responses") {
            assert.equal(body.object, "response", where);
            assert.ok(body.status === "completed" || body.status === "incomplete", `status ${String(body.status)}: ${where}`);
            assert.ok(Array.isArray(body.output) && body.output.length > 0, `a response without output: ${where}`);
        } else if (c.path.includes("completions")) {
            assert.ok(Array.isArray(body.choices) && body.choices.length > 0, `a 200 without choices: ${where}`);
            for (const ch of body.choices) assert.ok(["stop", "length", "abort"].includes(ch.finish_reason ?? ""), `finish_reason ${ch.finish_reason}: ${where}`);
        } else if (c.path === "/tokenize") {
            assert.ok(Array.isArray(body.tokens), where);
            for (const t of body.tokens as number[]) assert.ok(Number.isInteger(t) && t >= 0 && t < vocab, `token ${t} outside the vocabulary: ${where}`);
        } else if (c.path === "/detokenize") {
            assert.equal(typeof body.prompt, "string", where);
        }
    }

    /** /v1/messages and /v1/messages/count_tokens: Anthropic's error body, event stream and message. */
    function checkAnthropic(c: Case, a: Answer, where: string): void {
        if (a.status >= 400) {
            let body: { type?: unknown; error?: Record<string, unknown> };
            try {
                body = JSON.parse(a.text);
            } catch {
                assert.fail(`a ${a.status} whose body is not JSON: ${where}`);
            }
            assert.equal(body.type, "error", `a ${a.status} without type 'error': ${where}`);
            const e = body.error;
            assert.ok(e && typeof e === "object", `a ${a.status} without an 'error' object: ${where}`);
            assert.equal(typeof e.message, "string", `error.message is not a string: ${where}`);
            assert.ok(["invalid_request_error", "authentication_error", "not_found_error", "request_too_large", "rate_limit_error", "overloaded_error"].includes(e.type as string),
                `error.type ${String(e.type)}: ${where}`);
            return;
        }
        assert.equal(a.status, 200, `not a 200 or 4xx: ${where}`);
        if (a.contentType.startsWith("text/event-stream")) {
            const events = a.text.split("\n\n").filter((b) => b.trim().length > 0).map((block) => {
                const lines = block.split("\n");
                assert.ok(lines.length === 2 && lines[0].startsWith("event: ") && lines[1].startsWith("data: "), `not an Anthropic SSE event: ${block.slice(0, 200)} in ${where}`);
                const data = JSON.parse(lines[1].slice(6)) as { type?: string };
                assert.equal(data.type, lines[0].slice(7), `an event whose data has another type: ${where}`);
                return data.type;
            });
            assert.ok(!events.includes("error"), `an error event in a 200 stream: ${where}`);
            assert.equal(events[0], "message_start", `a stream that does not open with message_start: ${where}`);
            assert.equal(events.at(-1), "message_stop", `a stream that does not end with message_stop: ${where}`);
            return;
        }
        const body = JSON.parse(a.text) as { type?: string; content?: unknown; stop_reason?: string; input_tokens?: unknown };
        if (c.path === "/v1/messages/count_tokens") {
            assert.ok(Number.isInteger(body.input_tokens) && (body.input_tokens as number) > 0, `input_tokens: ${where}`);
        } else {
            assert.equal(body.type, "message", where);
            assert.ok(Array.isArray(body.content), where);
            assert.ok(["end_turn", "max_tokens", "stop_sequence", "tool_use"].includes(body.stop_reason ?? ""), `stop_reason ${body.stop_reason}: ${where}`);
        }
    }

    /** Answers by route and status (or abort), printed at the end: what the fuzz reached. */
    const seen = new Map<string, number>();
    const tally = (c: Case, a: Answer) => {
        const k = `${c.method} ${c.path.startsWith("/v1/models/") ? "/v1/models/:id" : c.path} ${a.aborted ?? a.status}`;
        seen.set(k, (seen.get(k) ?? 0) + 1);
    };

    async function runOne(c: Case): Promise<void> {
        const a = await send(c);
        tally(c, a);
        await checkAlive(c.shown ?? c);
        check(c, a);
        await assertSettled(c.shown ?? c);
    }

    // ---- generators --------------------------------------------------------------------------------

    /** The field in `percent` of the bodies, left out of the others. */
    const maybe = <T>(a: fc.Arbitrary<T>, percent: number) => fc.oneof({ weight: 100 - percent, arbitrary: fc.constant(undefined) }, { weight: percent, arbitrary: a });
    const raw = fc.oneof(fc.constantFrom(...RAW_NUMBERS), fc.constantFrom(...RAW_INVALID)).map((t) => new Raw(t));
    /**
     * A field's value: mostly `good`, sometimes a value at or around a limit; in chaos mode also a wrong
     * type or raw number text. Bodies without chaos get past the schema and the validation more often,
     * into the engine, where a crash would be.
     */
    let chaos = true;
    const value = (good: fc.Arbitrary<unknown>, ...limits: number[]) => fc.oneof(
        { weight: 6, arbitrary: good },
        { weight: 2, arbitrary: limits.length > 0 ? intAround(...limits) : good },
        ...(chaos ? [{ weight: 1, arbitrary: wrongType }, { weight: 1, arbitrary: raw }] : []),
    );
    /** A value of the wrong type in chaos mode; otherwise the field is left out. */
    const W = (): fc.Arbitrary<unknown> => (chaos ? wrongType : fc.constant(undefined));
    /** Bodies from `make`, built once in chaos mode and once without. */
    const both = <T>(make: () => fc.Arbitrary<T>): fc.Arbitrary<T> => {
        chaos = false;
        const calm = make();
        chaos = true;
        const wild = make();
        return fc.oneof({ weight: 7, arbitrary: calm }, { weight: 3, arbitrary: wild });
    };
    const tokenId = () => intAround(0, vocab - 1, vocab, 151643, 151645, 2 ** 31);
    const small = fc.integer({ min: 1, max: 6 });

    const samplingFields = () => ({
        model: maybe(fc.oneof({ weight: 5, arbitrary: fc.constant("tiny") }, { weight: 1, arbitrary: fc.constantFrom("", "nope", "tiny ", "TINY", "../tiny", "\u0000") }, { weight: 1, arbitrary: loneSurrogate }), 30),
        max_tokens: maybe(value(small, 0, 1, CTX - 1, CTX, 2 ** 31 - 1, 2 ** 31), 85),
        temperature: maybe(value(fc.constantFrom(0, 0.7, 1, 2), -1, 2, 3), 40),
        top_p: maybe(value(fc.constantFrom(1e-9, 0.5, 1), 0, 1, 2), 20),
        top_k: maybe(value(fc.constantFrom(-1, 0, 1, 40), -2, -1, 0, vocab - 1, vocab, vocab + 1, 2 ** 31 - 1, 2 ** 31), 25),
        min_p: maybe(value(fc.constantFrom(0, 0.05, 1), 0, 1), 15),
        n: maybe(value(fc.constantFrom(1, 2, 3), 0, 1, 4, 128, 129), 30),
        stop: maybe(fc.oneof(
            nastyText(300),
            fc.array(fc.oneof(fc.string({ maxLength: 4 }), fc.constantFrom(...SPECIAL_TOKENS), fc.constant("x".repeat(256)), fc.constant("x".repeat(257)), loneSurrogate), { maxLength: 17 }),
            W(),
        ), 25),
        stop_token_ids: maybe(fc.oneof(fc.array(tokenId(), { maxLength: 17 }), W()), 15),
        seed: maybe(value(fc.nat(), -1, 0, 2 ** 31, 2 ** 32 - 1, 2 ** 32), 25),
        presence_penalty: maybe(value(fc.double({ min: -2, max: 2, noNaN: true }), -2, 2), 15),
        frequency_penalty: maybe(value(fc.double({ min: -2, max: 2, noNaN: true }), -2, 2), 15),
        repetition_penalty: maybe(value(fc.constantFrom(0.5, 1, 1.3, 10), 0, 10), 15),
        logit_bias: maybe(fc.oneof(
            fc.dictionary(fc.oneof(tokenId().map(String), fc.constantFrom("-1", "1.5", "0x1", " 1", "01", "", "1e3", "151936", "99999999999999999999")),
                value(fc.double({ min: -100, max: 100, noNaN: true }), -100, 100, 101), { maxKeys: 6 }),
            fc.integer({ min: 1000, max: 1100 }).map((n) => Object.fromEntries(Array.from({ length: n }, (_, i) => [String(i * 7), -1]))),
            W(),
        ), 15),
        stream: maybe(value(fc.boolean()), 50),
        stream_options: maybe(fc.oneof(fc.record({ include_usage: value(fc.boolean()) }, { requiredKeys: [] }), W()), 20),
        user: maybe(fc.oneof(nastyText(50), W()), 10),
        ignore_eos: maybe(value(fc.boolean()), 10),
        priority: maybe(value(fc.integer({ min: -5, max: 5 }), -(2 ** 31), 2 ** 31), 10),
        cache_salt: maybe(fc.oneof(nastyText(100), fc.constant("s".repeat(257)), W()), 10),
        // llama-server's and vLLM's constraint fields (structured.ts): a constrained output or a 400, whatever they hold
        grammar: maybe(grammarish(), 5),
        guided_json: maybe(oddSchema(), 3),
        guided_regex: maybe(fc.constantFrom("(a|b)*", "[", "((((((((((a))))))))))", ".*", "(a*)*", "a{1000}{2}", "\\S".repeat(2000)), 3),
        guided_choice: maybe(fc.oneof(fc.array(nastyText(20), { maxLength: 4 }), W()), 3),
        structured_outputs: maybe(fc.oneof(
            fc.record({ regex: fc.constantFrom("\\d+", "(?=a)", ""), choice: fc.array(nastyText(10), { maxLength: 3 }), json: oddSchema(), json_object: fc.boolean(), grammar: grammarish() }, { requiredKeys: [] }),
            W(),
        ), 3),
    });

    /** A prompt: text, token ids (with lengths around the context), lists of either, or something else. */
    const prompt = () => fc.oneof(
        { weight: 5, arbitrary: nastyText() },
        { weight: 2, arbitrary: fc.array(tokenId(), { maxLength: 12 }) },
        { weight: 2, arbitrary: fc.tuple(fc.constantFrom(CTX - 2, CTX - 1, CTX, CTX + 1), fc.integer({ min: 1000, max: 30000 })).map(([n, t]) => Array.from({ length: n }, (_, i) => (t + i * 13) % 30000)) },
        { weight: 2, arbitrary: fc.array(fc.oneof(nastyText(20), fc.constant("")), { minLength: 0, maxLength: 5 }) },
        { weight: 1, arbitrary: fc.array(fc.array(tokenId(), { maxLength: 5 }), { maxLength: 4 }) },
        { weight: 1, arbitrary: fc.integer({ min: 250, max: 260 }).map((n) => Array.from({ length: n }, (_, i) => `p${i}`)) },
        { weight: 1, arbitrary: fc.constantFrom("", [], [[]], [""], [1, "a"], [[1], "a"], { text: "x" }, null, 42, [-1], [1.5], ["a", ["b"]]) },
        { weight: 1, arbitrary: fc.integer({ min: CTX - 4, max: CTX + 4 }).map((n) => "hello ".repeat(n)) },
        { weight: 1, arbitrary: fc.integer({ min: 1, max: longFuzz ? 1_000_000 : 65_536 }).map((n) => "a".repeat(n)) },
    );

    const completionBody = () => fc.record({
        ...samplingFields(),
        prompt: maybe(prompt(), 95),
        suffix: maybe(fc.oneof(nastyText(50), W()), 10),
        echo: maybe(value(fc.boolean()), 15),
        logprobs: maybe(value(fc.constantFrom(0, 1, 5), -1, 0, 20, 21, vocab), 25),
        best_of: maybe(value(fc.constantFrom(1, 2), 0, 1, 2, 129), 10),
        extra: maybe(fc.oneof(fc.integer({ min: 1, max: longFuzz ? 100_000 : 5_000 }).map((d) => new Raw(deepJsonText(d, d % 2 ? "array" : "object"))), fc.jsonValue({ maxDepth: 3 })), 10),
    }, { requiredKeys: [] });

    const content = fc.oneof(
        { weight: 6, arbitrary: nastyText() },
        { weight: 1, arbitrary: fc.array(fc.oneof(fc.record({ type: fc.constant("text"), text: nastyText(40) }), fc.record({ type: fc.constantFrom("image_url", "", "text"), text: W() })), { maxLength: 3 }) },
        { weight: 1, arbitrary: W() },
    );
    const message = fc.oneof(
        { weight: 8, arbitrary: fc.record({ role: fc.oneof({ weight: 5, arbitrary: fc.constantFrom("user", "system", "assistant") }, { weight: 1, arbitrary: fc.oneof(fc.constantFrom("tool", "developer", "", "<|im_start|>"), nastyText(10)) }), content: maybe(content, 90), name: maybe(fc.string({ maxLength: 8 }), 10) }, { requiredKeys: ["role"] }) },
        { weight: 1, arbitrary: fc.record({ role: fc.constant("user"), content: fc.constant("x"), tool_calls: fc.integer({ min: 1, max: 3000 }).map((d) => new Raw(deepJsonText(d))) }) },
        { weight: 1, arbitrary: W() },
    );
    const responseFormat = fc.oneof(
        fc.constant({ type: "json_object" }),
        fc.constant({ type: "text" }),
        fc.record({ type: fc.constant("json_schema"), json_schema: fc.record({ name: fc.string({ maxLength: 5 }), schema: oddSchema(), strict: fc.boolean() }, { requiredKeys: ["schema"] }) }),
        deepSchemaText().map((t) => ({ type: "json_schema", json_schema: { name: "deep", schema: new Raw(t) } })),
        fc.record({ type: fc.constantFrom("json_schema", "grammar", "regex", "", "JSON_OBJECT"), json_schema: W(), schema: W() }, { requiredKeys: ["type"] }),
        W(),
    );
    const chatBody = () => fc.record({
        ...samplingFields(),
        messages: maybe(fc.oneof({ weight: 8, arbitrary: fc.array(message, { minLength: 0, maxLength: 5 }) }, { weight: 1, arbitrary: W() }), 95),
        max_completion_tokens: maybe(value(small, 0, 1, CTX, 2 ** 31), 20),
        logprobs: maybe(value(fc.boolean()), 25),
        top_logprobs: maybe(value(fc.constantFrom(0, 1, 5), -1, 0, 20, 21), 20),
        response_format: maybe(responseFormat, 30),
        tools: maybe(fc.oneof(fc.constant([]), fc.array(fc.jsonValue({ maxDepth: 3 }), { maxLength: 2 }), W()), 10),
        tool_choice: maybe(fc.oneof(fc.constantFrom("none", "auto", "required"), W()), 10),
        chat_template_kwargs: maybe(fc.oneof(fc.dictionary(fc.constantFrom("enable_thinking", "add_generation_prompt", "messages", "tools", "x"), fc.jsonValue({ maxDepth: 2 })), W()), 10),
    }, { requiredKeys: [] });

    /** A Responses input item: messages, function calls and their outputs, reasoning items, and what is not one. */
    const inputItem = fc.oneof(
        { weight: 6, arbitrary: fc.record({ type: maybe(fc.constant("message"), 50), role: fc.oneof({ weight: 5, arbitrary: fc.constantFrom("user", "system", "developer", "assistant") }, { weight: 1, arbitrary: fc.constantFrom("tool", "", "<|im_start|>") }), content: maybe(fc.oneof(
            { weight: 5, arbitrary: nastyText() },
            { weight: 2, arbitrary: fc.array(fc.record({ type: fc.constantFrom("input_text", "output_text", "input_image", "refusal", ""), text: fc.oneof(nastyText(40), W()) }, { requiredKeys: ["type"] }), { maxLength: 3 }) },
            { weight: 1, arbitrary: W() },
        ), 95) }, { requiredKeys: ["role"] }) },
        { weight: 2, arbitrary: fc.record({ type: fc.constant("function_call"), call_id: fc.oneof(fc.string({ maxLength: 8 }), W()), name: fc.oneof(fc.constantFrom("get_weather", "f", ""), W()), arguments: fc.oneof(fc.constantFrom("{}", '{"days":3}', "{not json", "[]", "null"), nastyText(20), W()) }, { requiredKeys: ["type"] }) },
        { weight: 2, arbitrary: fc.record({ type: fc.constant("function_call_output"), call_id: fc.oneof(fc.string({ maxLength: 8 }), W()), output: fc.oneof(nastyText(40), fc.array(fc.record({ type: fc.constantFrom("input_text", "input_image"), text: nastyText(10) }), { maxLength: 2 }), W()) }, { requiredKeys: ["type"] }) },
        { weight: 1, arbitrary: fc.record({ type: fc.constant("reasoning"), summary: fc.array(fc.record({ type: fc.constantFrom("summary_text", "x"), text: nastyText(20) }), { maxLength: 2 }), content: maybe(fc.array(fc.record({ type: fc.constant("reasoning_text"), text: nastyText(20) }), { maxLength: 2 }), 50), encrypted_content: maybe(fc.oneof(fc.constantFrom("bw1:", "bw1:aGk=", "gAAAA"), nastyText(20), W()), 30) }, { requiredKeys: ["type"] }) },
        { weight: 1, arbitrary: fc.record({ type: fc.constantFrom("item_reference", "web_search_call", "", "local_shell_call"), id: fc.string({ maxLength: 5 }) }) },
        { weight: 1, arbitrary: W() },
    );
    const responsesTool = fc.oneof(
        { weight: 4, arbitrary: fc.record({ type: fc.constant("function"), name: fc.oneof(fc.constantFrom("get_weather", "f", "a.b:c", ""), nastyText(10)), description: maybe(nastyText(20), 50), parameters: maybe(fc.oneof(oddSchema(), fc.constant({ type: "object", properties: { days: { type: "integer", minimum: 1, maximum: 7 } }, required: ["days"] })), 70), strict: maybe(fc.boolean(), 30) }, { requiredKeys: ["type"] }) },
        { weight: 1, arbitrary: fc.record({ type: fc.constantFrom("web_search", "file_search", "mcp", "custom", "") }) },
        { weight: 1, arbitrary: W() },
    );
    const responsesBody = () => {
        const { max_tokens, n: _n, ...sampling } = samplingFields(); // n other than 1 is a 400 here: left out, more bodies reach the engine
        return fc.record({
            ...sampling,
            max_output_tokens: max_tokens,
            input: maybe(fc.oneof({ weight: 4, arbitrary: nastyText() }, { weight: 5, arbitrary: fc.array(inputItem, { minLength: 0, maxLength: 5 }) }, { weight: 1, arbitrary: W() }), 95),
            instructions: maybe(fc.oneof(nastyText(60), W()), 20),
            tools: maybe(fc.oneof(fc.constant([]), fc.array(responsesTool, { maxLength: 3 }), W()), 20),
            tool_choice: maybe(fc.oneof(fc.constantFrom("none", "auto", "required", { type: "function", name: "get_weather" }, { type: "function", name: "nope" }, { type: "web_search_preview" }, { type: "allowed_tools" }), W()), 15),
            parallel_tool_calls: maybe(value(fc.boolean()), 10),
            text: maybe(fc.oneof(
                fc.record({ format: fc.oneof(fc.constant({ type: "text" }), fc.constant({ type: "json_object" }), fc.record({ type: fc.constant("json_schema"), name: fc.string({ maxLength: 5 }), schema: oddSchema(), strict: fc.boolean() }, { requiredKeys: ["type", "schema"] }), fc.record({ type: fc.constantFrom("json_schema", "grammar", ""), schema: W() }, { requiredKeys: ["type"] }), W()), verbosity: maybe(fc.constantFrom("low", "medium", "high"), 20) }, { requiredKeys: [] }),
                W(),
            ), 20),
            reasoning: maybe(fc.oneof(fc.record({ effort: fc.constantFrom("none", "minimal", "low", "medium", "high", "xhigh", null), summary: fc.constantFrom("auto", "concise", "detailed", null), mode: maybe(fc.constantFrom("standard", "pro"), 20) }, { requiredKeys: [] }), W()), 15),
            store: maybe(value(fc.boolean()), 15),
            previous_response_id: maybe(fc.oneof(fc.constant("resp_1"), W()), 5),
            include: maybe(fc.oneof(fc.array(fc.constantFrom("reasoning.encrypted_content", "message.output_text.logprobs", "file_search_call.results", ""), { maxLength: 2 }), W()), 10),
            truncation: maybe(fc.oneof(fc.constantFrom("auto", "disabled"), W()), 5),
            background: maybe(value(fc.boolean()), 5),
            metadata: maybe(fc.oneof(fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(fc.string({ maxLength: 8 }), W()), { maxKeys: 18 }), W()), 10),
            reasoning_budget_tokens: maybe(value(fc.constantFrom(-1, 0, 4), -2, -1, 0, 2 ** 31), 10),
        }, { requiredKeys: [] });
    };

    const tokenizeBody = () => fc.record({
        model: maybe(fc.constantFrom("tiny", "nope"), 30),
        prompt: maybe(fc.oneof({ weight: 5, arbitrary: nastyText() }, { weight: 1, arbitrary: W() }), 60),
        messages: maybe(fc.array(message, { maxLength: 3 }), 45),
        add_special_tokens: maybe(value(fc.boolean()), 40),
        add_generation_prompt: maybe(value(fc.boolean()), 40),
    }, { requiredKeys: [] });

    const detokenizeBody = () => fc.record({
        model: maybe(fc.constantFrom("tiny", "nope"), 30),
        tokens: maybe(fc.oneof(
            { weight: 5, arbitrary: fc.array(tokenId(), { maxLength: 40 }) },
            { weight: 1, arbitrary: fc.integer({ min: 1, max: longFuzz ? 1_000_000 : 50_000 }).map((n) => Array.from({ length: n }, (_, i) => (i * 31) % 151643)) },
            { weight: 1, arbitrary: fc.array(fc.oneof(fc.double(), W()), { maxLength: 4 }) },
            { weight: 1, arbitrary: W() },
        ), 95),
    }, { requiredKeys: [] });

    // Anthropic's Messages API: content blocks of every kind (and none), tools of every type, the thinking and tool_choice shapes.
    // (Schemas nest at most 500 deep here: the 2,000 of oddSchema's default, inside a tool list, can overflow serialize()'s stack.)
    const anthropicBlock = () => fc.oneof(
        { weight: 4, arbitrary: fc.record({ type: fc.constant("text"), text: value(nastyText(40)) }) },
        { weight: 2, arbitrary: fc.record({ type: fc.constant("tool_use"), id: value(fc.constantFrom("t1", "toolu_1", "")), name: value(fc.constantFrom("f", "get_weather", "")), input: fc.oneof(fc.jsonValue({ maxDepth: 2 }), W()) }, { requiredKeys: ["type"] }) },
        { weight: 2, arbitrary: fc.record({ type: fc.constant("tool_result"), tool_use_id: value(fc.constantFrom("t1", "toolu_1", "")), content: fc.oneof(nastyText(20), fc.array(fc.record({ type: fc.constantFrom("text", "image"), text: nastyText(10) }), { maxLength: 2 }), W()), is_error: maybe(value(fc.boolean()), 30) }, { requiredKeys: ["type"] }) },
        { weight: 1, arbitrary: fc.record({ type: fc.constantFrom("thinking", "redacted_thinking"), thinking: value(nastyText(20)), signature: fc.string({ maxLength: 4 }), data: fc.string({ maxLength: 4 }) }, { requiredKeys: ["type"] }) },
        { weight: 1, arbitrary: fc.record({ type: fc.constantFrom("image", "document", "server_tool_use", "", "TEXT"), source: fc.jsonValue({ maxDepth: 2 }) }, { requiredKeys: ["type"] }) },
        { weight: 1, arbitrary: W() },
    );
    const anthropicMessage = () => fc.oneof(
        // mostly a turn the API takes (text, as a string or blocks), so that bodies reach the engine
        { weight: 6, arbitrary: fc.record({ role: fc.constantFrom("user", "assistant"), content: fc.oneof(nastyText(), fc.array(fc.record({ type: fc.constant("text"), text: nastyText(40) }), { minLength: 1, maxLength: 2 })) }) },
        { weight: 3, arbitrary: fc.record({
            role: fc.oneof({ weight: 6, arbitrary: fc.constantFrom("user", "assistant") }, { weight: 1, arbitrary: fc.constantFrom("system", "tool", "", "developer") }),
            content: maybe(fc.oneof({ weight: 3, arbitrary: nastyText() }, { weight: 3, arbitrary: fc.array(anthropicBlock(), { maxLength: 4 }) }, { weight: 1, arbitrary: W() }), 95),
        }, { requiredKeys: ["role"] }) },
        ...(chaos ? [{ weight: 1, arbitrary: W() }] : []),
    );
    const anthropicTool = () => fc.oneof(
        { weight: 4, arbitrary: fc.record({ name: value(fc.constantFrom("get_weather", "f", "a-b.c:d")), description: maybe(nastyText(20), 50), input_schema: fc.oneof({ weight: 4, arbitrary: fc.constant({ type: "object", properties: { days: { type: "integer", minimum: 1, maximum: 7 } }, required: ["days"] }) }, { weight: 1, arbitrary: oddSchema(500) }) }, { requiredKeys: ["name"] }) },
        { weight: 1, arbitrary: fc.record({ type: fc.constantFrom("custom", "web_search_20250305", "bash_20250124", "", null), name: fc.constantFrom("web_search", "bash", "f") }, { requiredKeys: ["type", "name"] }) },
        { weight: 1, arbitrary: W() },
    );
    const anthropicFields = () => ({
        model: maybe(fc.oneof({ weight: 8, arbitrary: fc.constant("tiny") }, { weight: 1, arbitrary: fc.constantFrom("", "nope", "claude-sonnet-4-5") }), 95),
        system: maybe(fc.oneof(nastyText(), fc.array(fc.record({ type: fc.constantFrom("text", "image"), text: nastyText(20) }), { maxLength: 3 }), W()), 30),
        messages: maybe(fc.oneof({ weight: 8, arbitrary: fc.array(anthropicMessage(), { minLength: 1, maxLength: 3 }) }, { weight: 1, arbitrary: fc.constant([]) }, { weight: 1, arbitrary: W() }), 95),
        tools: maybe(fc.oneof(fc.array(anthropicTool(), { maxLength: 3 }), W()), 25),
        tool_choice: maybe(fc.oneof(
            fc.record({ type: fc.constantFrom("auto", "any", "tool", "none", "required", ""), name: maybe(fc.constantFrom("get_weather", "nope", ""), 50), disable_parallel_tool_use: maybe(value(fc.boolean()), 30) }, { requiredKeys: ["type"] }),
            W(),
        ), 20),
        thinking: maybe(fc.oneof(
            fc.record({ type: fc.constantFrom("enabled", "disabled", "adaptive", "between_tools", ""), budget_tokens: maybe(value(fc.constantFrom(1, 4, 1024), -1, 0, 2 ** 31), 70), display: maybe(fc.constantFrom("summarized", "omitted", null, "x"), 20) }, { requiredKeys: ["type"] }),
            W(),
        ), 15),
        output_config: maybe(fc.oneof(fc.record({ effort: maybe(fc.constantFrom("low", "high", "max", null, 3), 50), format: maybe(fc.oneof(fc.record({ type: fc.constantFrom("json_schema", "text"), schema: oddSchema(500) }), W()), 50) }, { requiredKeys: [] }), W()), 8),
    });
    const messagesBody = () => fc.record({
        ...anthropicFields(),
        max_tokens: maybe(value(small, 0, 1, CTX - 1, CTX, 2 ** 31 - 1, 2 ** 31), 92),
        stop_sequences: maybe(fc.oneof(fc.array(fc.oneof(fc.string({ maxLength: 4 }), fc.constantFrom(...SPECIAL_TOKENS), fc.constant("x".repeat(257)), loneSurrogate), { maxLength: 17 }), W()), 20),
        temperature: maybe(value(fc.constantFrom(0, 0.5, 1), -1, 0, 1, 2), 40),
        top_p: maybe(value(fc.constantFrom(1e-9, 0.5, 1), 0, 1, 2), 15),
        top_k: maybe(value(fc.constantFrom(0, 1, 40), -1, 0, vocab, 2 ** 31), 15),
        stream: maybe(value(fc.boolean()), 50),
        metadata: maybe(fc.oneof(fc.record({ user_id: value(fc.string({ maxLength: 8 })) }), W()), 10),
        container: maybe(fc.oneof(fc.string({ maxLength: 4 }), W()), 3),
        priority: maybe(value(fc.integer({ min: -5, max: 5 }), -(2 ** 31), 2 ** 31), 5),
    }, { requiredKeys: ["model", "messages", "max_tokens"] }); // (maybe() still leaves each out at times)
    const countTokensBody = () => fc.record(anthropicFields(), { requiredKeys: ["model", "messages"] });

    const postCase = (path: string, body: fc.Arbitrary<Record<string, unknown>>): fc.Arbitrary<Case> =>
        fc.tuple(body, fc.oneof({ weight: 9, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 400 }) }))
            .map(([b, abortAfterMs]) => ({ method: "POST", path, body: serialize(b), abortAfterMs, shown: { path, body: b, abortAfterMs } }));

    /** Bodies that are not a JSON object, odd content types and methods, /v1/models. */
    const oddCase: fc.Arbitrary<Case> = fc.oneof(
        fc.record({
            method: fc.constant("POST"),
            path: fc.constantFrom("/v1/completions", "/v1/chat/completions", "/v1/responses", "/tokenize", "/detokenize", "/v1/messages", "/v1/messages/count_tokens"),
            body: fc.oneof(
                fc.constantFrom("", "{", "}", "null", "[]", "{}", "1e999", "\"x\"", "{\"prompt\":", "{\"prompt\":\"a\"}garbage", "\u0000", "{\"prompt\":\"a\",\"prompt\":[1]}"),
                fc.integer({ min: 1, max: longFuzz ? 2_000_000 : 100_000 }).map((d) => deepJsonText(d)),
                fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.concat([Buffer.from('{"prompt":"'), Buffer.from(b).map((x) => (x === 0x22 || x === 0x5c ? 0x41 : x)), Buffer.from('","max_tokens":2}')])),
                fc.string({ maxLength: 50 }),
            ),
            contentType: fc.constantFrom(undefined, null, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=utf-16", "multipart/form-data; boundary=x", "application/json, text/plain"),
        }, { requiredKeys: ["method", "path", "body"] }),
        fc.record({
            method: fc.constantFrom("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"),
            path: fc.constantFrom("/v1/completions", "/v1/chat/completions", "/v1/responses", "/tokenize", "/detokenize", "/v1/models", "/v1/models/tiny", "/health", "/v1/messages"),
        }),
        fc.oneof(fc.constantFrom("tiny", "", "nope", "tiny/../tiny", "%00", "%ZZ", "%F0%9F%A6%99", "a".repeat(5000), "..%2F..%2Fetc%2Fpasswd"), fc.string({ maxLength: 20 }).map(encodeURIComponent))
            .map((id) => ({ method: "GET", path: `/v1/models/${id}` })),
        fc.constant({ method: "GET", path: "/v1/models" }),
    );

    const anyCase = (): fc.Arbitrary<Case> => fc.oneof(
        { weight: 4, arbitrary: postCase("/v1/completions", both(completionBody)) },
        { weight: 4, arbitrary: postCase("/v1/chat/completions", both(chatBody)) },
        { weight: 3, arbitrary: postCase("/v1/responses", both(responsesBody)) },
        { weight: 2, arbitrary: postCase("/tokenize", both(tokenizeBody)) },
        { weight: 1, arbitrary: postCase("/detokenize", both(detokenizeBody)) },
        { weight: 2, arbitrary: postCase("/v1/messages", both(messagesBody)) },
        { weight: 1, arbitrary: oddCase },
    );

    // ---- properties --------------------------------------------------------------------------------

    it("/v1/completions", { timeout: testTimeoutMs(10) }, async () => {
        await fuzz("completions", postCase("/v1/completions", both(completionBody)), runOne, 150, 10);
    });

    it("/v1/chat/completions", { timeout: testTimeoutMs(10) }, async () => {
        await fuzz("chat", postCase("/v1/chat/completions", both(chatBody)), runOne, 150, 10);
    });

    it("/v1/responses", { timeout: testTimeoutMs(10) }, async () => {
        await fuzz("responses", postCase("/v1/responses", both(responsesBody)), runOne, 150, 10);
    });

    it("/v1/messages, /v1/messages/count_tokens", { timeout: testTimeoutMs(8) }, async () => {
        await fuzz("messages", fc.oneof({ weight: 4, arbitrary: postCase("/v1/messages", both(messagesBody)) }, { weight: 1, arbitrary: postCase("/v1/messages/count_tokens", both(countTokensBody)) }), runOne, 120, 8);
    });

    it("/tokenize, /detokenize, /v1/models, odd bodies, content types and methods", { timeout: testTimeoutMs(6) }, async () => {
        await fuzz("tokenize, detokenize, models, odd", fc.oneof(postCase("/tokenize", both(tokenizeBody)), postCase("/detokenize", both(detokenizeBody)), oddCase), runOne, 150, 6);
    });

    it("bursts of concurrent mixed requests, some abandoned by their clients", { timeout: testTimeoutMs(8) }, async () => {
        await fuzz("concurrent bursts", fc.array(anyCase(), { minLength: 2, maxLength: 8 }), async (cases) => {
            const answers = await Promise.all(cases.map((c) => send(c)));
            cases.forEach((c, i) => tally(c, answers[i]));
            await checkAlive(cases.map((c) => c.shown ?? c));
            cases.forEach((c, i) => check(c, answers[i]));
            await assertSettled(cases.map((c) => c.shown ?? c));
        }, 25, 8);
    });

    it("the server is alive and idle at the end", async () => {
        assert.equal(exited, null, output.slice(-4000));
        await assertSettled("the end of the fuzz");
        assert.equal(restarts, 0, "the server died during the fuzz (see the failures above)");
    });
});
