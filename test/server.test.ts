// The HTTP server over real loopback HTTP: the official openai client, every error status, client
// disconnects, readiness during warm-up, metrics through a Prometheus text parser, and (with the CLI
// in a child process) SIGTERM draining.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import OpenAI from "openai";
import parsePrometheus from "parse-prometheus-text-format";
import { createServer, type BatchwiseServer } from "../lib/server/server.js";
import { gpu, gpuLayers, modelPath, tinyCoder, tinyQwen } from "./helpers.js";

const KEY = "test-key-0123456789";
const root = join(import.meta.dirname, "..", "..");
const cli = join(root, "dist", "lib", "cli", "main.js");
const engineOptions = { gpuLayers, contextSize: 2048, maxSequences: 8, batchTokens: 512, flashAttention: gpu ? "on" as const : "auto" as const };
const warmup = { promptLengths: [16, 64], concurrency: 2, maxTokens: 2 };

interface Sent { status: number; headers: Headers; body: any; text: string }

async function send(url: string, path: string, body?: unknown, headers: Record<string, string> = {}, method = body === undefined ? "GET" : "POST"): Promise<Sent> {
    const r = await fetch(url + path, {
        method, headers: { "content-type": "application/json", ...headers },
        body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await r.text();
    let parsed: unknown = undefined;
    try {
        parsed = JSON.parse(text);
    } catch {
        // SSE or plain text
    }
    return { status: r.status, headers: r.headers, body: parsed, text };
}

function sseEvents(text: string): any[] {
    const out: any[] = [];
    for (const block of text.split("\n\n")) {
        const line = block.trim();
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        out.push(data === "[DONE]" ? "[DONE]" : JSON.parse(data));
    }
    return out;
}

function assertOpenAIError(r: Sent, status: number, param?: string | null, code?: string | null): void {
    assert.equal(r.status, status, r.text);
    assert.equal(typeof r.body?.error?.message, "string", r.text);
    assert.equal(typeof r.body.error.type, "string");
    assert.ok("param" in r.body.error && "code" in r.body.error, r.text);
    if (param !== undefined) assert.equal(r.body.error.param, param, r.text);
    if (code !== undefined) assert.equal(r.body.error.code, code, r.text);
}

const metricValue = (text: string, name: string, labels: Record<string, string> = {}): number => {
    const fam = parsePrometheus(text).find((f) => f.name === name);
    if (fam?.type === "HISTOGRAM") {
        // the parser keeps a histogram's buckets but drops its labels: read the _count sample itself
        const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
        const line = text.split("\n").find((l) => l.startsWith(`${name}_count`) && want.every((w) => l.includes(w)));
        assert.ok(line, `histogram ${name} has no _count with ${JSON.stringify(labels)}`);
        return Number(line.split(" ").at(-1));
    }
    assert.ok(fam, `metric ${name} is missing`);
    const m = fam.metrics.find((s) => Object.entries(labels).every(([k, v]) => s.labels?.[k] === v));
    assert.ok(m, `metric ${name} has no sample with ${JSON.stringify(labels)}`);
    return Number(m.value ?? m.count);
};

async function until(cond: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = "condition"): Promise<void> {
    const t0 = Date.now();
    while (!(await cond())) {
        if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 5));
    }
}

describe("server", () => {
    let server: BatchwiseServer;
    let url: string;
    let client: OpenAI;
    const auth = { authorization: `Bearer ${KEY}` };

    before(async () => {
        server = await createServer({
            models: [
                { name: "qwen", path: await modelPath(tinyQwen), options: engineOptions },
                { name: "coder", path: await modelPath(tinyCoder), options: engineOptions },
            ],
            port: 0, apiKeys: [KEY], logger: false, warmup, bodyLimit: 256 * 1024,
        });
        await server.ready();
        url = server.url;
        client = new OpenAI({ baseURL: `${url}/v1`, apiKey: KEY, maxRetries: 0 });
    });
    after(async () => {
        await server?.close();
    });

    it("serves completions through the openai client, streamed and not, with the same greedy text", async () => {
        const r = await client.completions.create({ model: "qwen", prompt: "def fib(n):", max_tokens: 12, temperature: 0 });
        assert.equal(r.object, "text_completion");
        assert.equal(r.model, "qwen");
        assert.equal(r.choices.length, 1);
        assert.equal(r.choices[0].finish_reason, "length");
        assert.equal(r.usage?.completion_tokens, 12);
        assert.ok((r.usage?.prompt_tokens ?? 0) > 0);
        const stream = await client.completions.create({
            model: "qwen", prompt: "def fib(n):", max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true },
        });
        let text = "";
        let finish: string | null = null;
        let usage: OpenAI.CompletionUsage | null | undefined;
        for await (const chunk of stream) {
            for (const c of chunk.choices) {
                text += c.text;
                finish = c.finish_reason ?? finish;
            }
            if (chunk.usage) usage = chunk.usage;
        }
        assert.equal(text, r.choices[0].text);
        assert.equal(finish, "length");
        assert.deepEqual(usage?.completion_tokens, 12);
    });

    it("serves chat through the model's Jinja template, streamed and not", async () => {
        const messages = [{ role: "system" as const, content: "You are terse." }, { role: "user" as const, content: "Say hi" }];
        const r = await client.chat.completions.create({ model: "qwen", messages, max_completion_tokens: 10, temperature: 0 });
        assert.equal(r.object, "chat.completion");
        assert.equal(r.choices[0].message.role, "assistant");
        assert.equal(r.usage?.completion_tokens, 10);
        // the prompt is the template's text: /tokenize with the same messages counts the same tokens
        const tok = await send(url, "/tokenize", { model: "qwen", messages }, auth);
        assert.equal(tok.status, 200, tok.text);
        assert.equal(r.usage?.prompt_tokens, tok.body.count);
        const stream = await client.chat.completions.create({ model: "qwen", messages, max_tokens: 10, temperature: 0, stream: true, stream_options: { include_usage: true } });
        let text = "";
        let role: string | undefined;
        let usage: OpenAI.CompletionUsage | undefined;
        for await (const chunk of stream) {
            for (const c of chunk.choices) {
                role ??= c.delta.role;
                text += c.delta.content ?? "";
            }
            if (chunk.usage) usage = chunk.usage;
        }
        assert.equal(role, "assistant");
        assert.equal(text, r.choices[0].message.content);
        assert.equal(usage?.prompt_tokens, r.usage?.prompt_tokens);
    });

    it("returns n choices with their own indices, and a list of prompts as n choices each", async () => {
        const r = await client.chat.completions.create({ model: "qwen", messages: [{ role: "user", content: "pick" }], n: 3, max_tokens: 6, seed: 5, temperature: 1 });
        assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2]);
        assert.equal(r.usage?.completion_tokens, 18);
        const c = await client.completions.create({ model: "qwen", prompt: ["a", "b"], n: 2, max_tokens: 3, temperature: 0 });
        assert.deepEqual(c.choices.map((x) => x.index).sort(), [0, 1, 2, 3]);
        const alone = await client.completions.create({ model: "qwen", prompt: "b", max_tokens: 3, temperature: 0 });
        assert.equal(c.choices.find((x) => x.index === 2)?.text, alone.choices[0].text);
    });

    it("returns logprobs in both APIs' shapes", async () => {
        const c = await client.completions.create({ model: "qwen", prompt: "x = ", max_tokens: 4, logprobs: 3, temperature: 0 });
        const lp = c.choices[0].logprobs!;
        assert.equal(lp.tokens!.length, 4);
        assert.equal(lp.token_logprobs!.length, 4);
        assert.equal(lp.tokens!.join(""), c.choices[0].text);
        for (const [i, top] of lp.top_logprobs!.entries()) {
            assert.ok(Object.keys(top).length >= 1 && Object.keys(top).length <= 3);
            // greedy: the sampled token is the most likely one
            assert.ok(Math.abs(Math.max(...Object.values(top)) - lp.token_logprobs![i]) < 1e-4);
        }
        assert.deepEqual(lp.text_offset, lp.tokens!.map((_, i) => lp.tokens!.slice(0, i).join("").length));
        const ch = await client.chat.completions.create({ model: "qwen", messages: [{ role: "user", content: "hi" }], max_tokens: 3, logprobs: true, top_logprobs: 2, temperature: 0 });
        const content = ch.choices[0].logprobs!.content!;
        assert.equal(content.length, 3);
        for (const t of content) {
            assert.equal(t.top_logprobs.length, 2);
            assert.ok(t.logprob <= 0);
            assert.deepEqual(Buffer.from(t.bytes!).toString("utf8"), t.token);
        }
    });

    it("constrains chat output to a JSON schema", async () => {
        const schema = { type: "object", properties: { ok: { type: "boolean" }, n: { type: "integer", minimum: 0, maximum: 9 } }, required: ["ok", "n"], additionalProperties: false };
        const r = await client.chat.completions.create({
            model: "qwen", messages: [{ role: "user", content: "JSON please" }], max_tokens: 400, temperature: 0.7, seed: 3,
            response_format: { type: "json_schema", json_schema: { name: "answer", schema, strict: true } },
        });
        assert.equal(r.choices[0].finish_reason, "stop", `the grammar ends the output: ${r.choices[0].message.content}`);
        const v = JSON.parse(r.choices[0].message.content!);
        assert.deepEqual(Object.keys(v).sort(), ["n", "ok"]);
        assert.equal(typeof v.ok, "boolean");
        assert.ok(Number.isInteger(v.n) && v.n >= 0 && v.n <= 9);
        const bad = await send(url, "/v1/chat/completions", {
            model: "qwen", messages: [{ role: "user", content: "x" }], response_format: { type: "json_schema", json_schema: { name: "x", schema: { $ref: "#/nope" } } },
        }, auth);
        assertOpenAIError(bad, 400);
    });

    it("fills in the middle with the model's FIM tokens, and refuses a suffix on a model without them", async () => {
        const prefix = "def add(a, b):\n    ", suffix = "\n    return c\n";
        const r = await client.completions.create({ model: "coder", prompt: prefix, suffix, max_tokens: 5, temperature: 0 });
        const count = async (text: string) => (await send(url, "/tokenize", { model: "coder", prompt: text, add_special_tokens: false }, auth)).body.count as number;
        // BOS, <fim_begin>, prefix, <fim_hole>, suffix, <fim_end>
        assert.equal(r.usage?.prompt_tokens, 4 + (await count(prefix)) + (await count(suffix)));
        const no = await send(url, "/v1/completions", { model: "qwen", prompt: prefix, suffix }, auth);
        assertOpenAIError(no, 400, "suffix");
        assert.match(no.body.error.message, /fill-in-the-middle/);
    });

    it("routes by model, lists models, and tokenizes and detokenizes", async () => {
        const list = await client.models.list();
        assert.deepEqual(list.data.map((m) => m.id).sort(), ["coder", "qwen"]);
        const missing = await send(url, "/v1/completions", { model: "gpt-4", prompt: "x" }, auth);
        assertOpenAIError(missing, 404, "model", "model_not_found");
        // a name the server does not have is not a metric label (clients could mint series at will)
        const m = (await send(url, "/metrics")).text;
        assert.ok(!m.includes('model_name="gpt-4"'));
        assert.match(m, /batchwise_requests_rejected_total\{model_name="unknown",reason="model_not_found"\} [1-9]/);
        const none = await send(url, "/v1/completions", { prompt: "x" }, auth);
        assertOpenAIError(none, 400, "model");
        const t = await send(url, "/tokenize", { model: "qwen", prompt: "hello world", add_special_tokens: false }, auth);
        const d = await send(url, "/detokenize", { model: "qwen", tokens: t.body.tokens }, auth);
        assert.equal(d.body.prompt, "hello world");
    });

    it("answers bad input with OpenAI-shaped 4xx errors that name the fields", async () => {
        const two = await send(url, "/v1/completions", { model: "qwen", prompt: "x", max_tokens: "ten", temperature: 9 }, auth);
        assertOpenAIError(two, 400, "max_tokens");
        assert.match(two.body.error.message, /'max_tokens'/);
        assert.match(two.body.error.message, /'temperature'/);
        assertOpenAIError(await send(url, "/v1/completions", { model: "qwen" }, auth), 400, "prompt");
        assertOpenAIError(await send(url, "/v1/chat/completions", { model: "qwen", messages: [] }, auth), 400, "messages");
        assertOpenAIError(await send(url, "/v1/chat/completions", { model: "qwen", messages: [{ role: "user", content: [{ type: "image_url" }] }] }, auth), 400);
        assertOpenAIError(await send(url, "/v1/completions", "{not json", auth), 400);
        const ctx = await send(url, "/v1/completions", { model: "qwen", prompt: "hello", max_tokens: 5000 }, auth);
        assertOpenAIError(ctx, 400, "prompt", "context_length_exceeded");
        assert.match(ctx.body.error.message, /5000/);
        assert.match(ctx.body.error.message, /2048/);
        assertOpenAIError(await send(url, "/v1/completions", { model: "qwen", prompt: "x", top_k: 2 ** 31 }, auth), 400, "top_k");
        assertOpenAIError(await send(url, "/v1/completions", { model: "qwen", prompt: "x", stop: Array.from({ length: 16 }, (_, i) => `s${i}`), stop_token_ids: [5] }, auth), 400, "stop");
        const big = await send(url, "/v1/completions", { model: "qwen", prompt: "x".repeat(300 * 1024) }, auth);
        assertOpenAIError(big, 413, null, "request_too_large");
        assertOpenAIError(await send(url, "/v2/nothing", undefined, auth), 404);
    });

    it("never answers 500 to a malformed body (property test)", async () => {
        const anything = fc.oneof(fc.integer({ min: -5, max: 5 }), fc.double(), fc.string(), fc.boolean(), fc.constant(null), fc.array(fc.integer({ min: -3, max: 200000 }), { maxLength: 3 }), fc.dictionary(fc.string(), fc.string(), { maxKeys: 2 }));
        const field = <T>(valid: fc.Arbitrary<T>) => fc.oneof(valid, anything);
        const body = fc.record({
            model: field(fc.constantFrom("qwen", "coder")),
            prompt: field(fc.oneof(fc.string({ minLength: 1, maxLength: 20 }), fc.array(fc.integer({ min: 0, max: 30000 }), { minLength: 1, maxLength: 5 }))),
            max_tokens: field(fc.integer({ min: 1, max: 3 })),
            temperature: field(fc.double({ min: 0, max: 2, noNaN: true })),
            top_p: field(fc.double({ min: 0.01, max: 1, noNaN: true })),
            n: field(fc.integer({ min: 1, max: 3 })),
            stop: field(fc.array(fc.string({ minLength: 1, maxLength: 4 }), { maxLength: 3 })),
            logprobs: field(fc.integer({ min: 0, max: 3 })),
            logit_bias: field(fc.dictionary(fc.integer({ min: 0, max: 40000 }).map(String), fc.integer({ min: -100, max: 100 }), { maxKeys: 2 })),
            seed: field(fc.integer({ min: 0, max: 100 })),
            top_k: field(fc.oneof(fc.integer({ min: -1, max: 50 }), fc.integer({ min: 2 ** 31 - 2, max: 2 ** 33 }))),
            repetition_penalty: field(fc.double({ min: 0.5, max: 2, noNaN: true })),
            suffix: field(fc.string({ maxLength: 8 })),
            echo: field(fc.boolean()),
        }, { requiredKeys: [] }).map((b) => ({ ...b, ...(typeof b.max_tokens !== "number" || b.max_tokens > 3 ? { max_tokens: 2 } : {}) }));
        await fc.assert(fc.asyncProperty(body, async (b) => {
            const r = await send(url, "/v1/completions", b, auth);
            assert.ok(r.status === 200 || (r.status >= 400 && r.status < 500), `${r.status} for ${JSON.stringify(b)}: ${r.text}`);
            if (r.status !== 200) assertOpenAIError(r, r.status);
        }), { numRuns: 60 });
    });

    it("needs the API key on every route but the probes and /metrics", async () => {
        assertOpenAIError(await send(url, "/v1/models"), 401, null, "invalid_api_key");
        assertOpenAIError(await send(url, "/v1/models", undefined, { authorization: "Bearer wrong" }), 401, null, "invalid_api_key");
        assertOpenAIError(await send(url, "/tokenize", { prompt: "x" }), 401);
        // a percent-encoded path reaches the same route: it needs the key as well
        assertOpenAIError(await send(url, "/%761/completions", { model: "qwen", prompt: "x", max_tokens: 1 }), 401);
        assertOpenAIError(await send(url, "/%74okenize", { model: "qwen", prompt: "x" }), 401);
        // a route that does not exist needs the key too: a client without one learns nothing of the routes
        assertOpenAIError(await send(url, "/v1/nothing"), 401, null, "invalid_api_key");
        assertOpenAIError(await send(url, "/nothing"), 401, null, "invalid_api_key");
        assertOpenAIError(await send(url, "/nothing", undefined, auth), 404, null, "not_found");
        assert.equal((await send(url, "/v1/models", undefined, auth)).status, 200);
        assert.equal((await send(url, "/health")).status, 200);
        assert.equal((await send(url, "/ready")).status, 200);
        assert.equal((await send(url, "/metrics")).status, 200);
    });

    it("echoes the request id, or makes one", async () => {
        const r = await send(url, "/v1/completions", { model: "qwen", prompt: "x", max_tokens: 1 }, { ...auth, "x-request-id": "abc-123" });
        assert.equal(r.headers.get("x-request-id"), "abc-123");
        assert.equal(r.body.id, "cmpl-abc-123");
        const s = await send(url, "/v1/completions", { model: "qwen", prompt: "x", max_tokens: 1, stream: true }, { ...auth, "x-request-id": "def-456" });
        assert.equal(s.headers.get("x-request-id"), "def-456");
        assert.match((await send(url, "/health")).headers.get("x-request-id") ?? "", /^[0-9a-f-]{36}$/);
    });

    it("aborts the generation and frees its KV when a streaming client disconnects", async () => {
        const engine = server.engine("qwen")!;
        const before = engine.stats();
        const metricsBefore = (await send(url, "/metrics")).text;
        const ac = new AbortController();
        const res = await fetch(`${url}/v1/completions`, {
            method: "POST", signal: ac.signal, headers: { ...auth, "content-type": "application/json" },
            body: JSON.stringify({ model: "qwen", prompt: "count to a thousand:", max_tokens: 1900, ignore_eos: true, stream: true }),
        });
        const reader = res.body!.getReader();
        await reader.read(); // the first chunk: it is running
        assert.equal(engine.stats().running, 1);
        ac.abort();
        const stepsAtAbort = engine.stats().steps;
        await until(() => engine.stats().running === 0, 5000, "the aborted request to leave the batch");
        const s = engine.stats();
        assert.ok(s.steps - stepsAtAbort <= 3, `freed within a few steps (took ${s.steps - stepsAtAbort})`);
        assert.equal(s.kv.used, before.kv.used, "its KV blocks are free again");
        assert.equal(s.totals.finished.abort, before.totals.finished.abort + 1);
        assert.ok(s.totals.generatedTokens - before.totals.generatedTokens < 1900);
        const metricsAfter = (await send(url, "/metrics")).text;
        const disc = (t: string) => { try { return metricValue(t, "batchwise_client_disconnects_total", { model_name: "qwen" }); } catch { return 0; } };
        assert.equal(disc(metricsAfter), disc(metricsBefore) + 1);
        const gone = (t: string) => { try { return metricValue(t, "batchwise_http_requests_total", { route: "/v1/completions", status: "499" }); } catch { return 0; } };
        assert.equal(gone(metricsAfter), gone(metricsBefore) + 1, "the request that lost its client is logged and counted (499)");
    });

    it("ends a stream with an error event when serving fails after the headers went out", async () => {
        const engine = server.engine("qwen")!;
        const real = engine.tokenBytes.bind(engine);
        engine.tokenBytes = () => {
            throw new Error("boom");
        };
        try {
            const r = await send(url, "/v1/completions", { model: "qwen", prompt: ["a", "b"], max_tokens: 400, ignore_eos: true, logprobs: 1, stream: true }, auth);
            assert.equal(r.status, 200);
            const events = sseEvents(r.text);
            assert.equal(events.at(-1), "[DONE]");
            assert.match(events.at(-2).error.message, /boom/);
        } finally {
            engine.tokenBytes = real;
        }
        await until(() => engine.stats().running === 0, 5000, "the other prompt's generation to be aborted");
        assert.ok(engine.stats().totals.finished.abort >= 1);
    });

    it("exposes vLLM-named metrics that a Prometheus parser reads, counting only traffic after warm-up", async () => {
        const m0 = (await send(url, "/metrics")).text;
        const r = await client.completions.create({ model: "coder", prompt: "int main() {", max_tokens: 7, temperature: 0 });
        const m1 = (await send(url, "/metrics")).text;
        const families = new Map(parsePrometheus(m1).map((f) => [f.name, f]));
        for (const [name, type] of [
            ["vllm:num_requests_running", "GAUGE"], ["vllm:num_requests_waiting", "GAUGE"], ["vllm:kv_cache_usage_perc", "GAUGE"],
            ["vllm:prefix_cache_queries_total", "COUNTER"], ["vllm:prefix_cache_hits_total", "COUNTER"], ["vllm:num_preemptions_total", "COUNTER"],
            ["vllm:prompt_tokens_total", "COUNTER"], ["vllm:generation_tokens_total", "COUNTER"],
            ["vllm:time_to_first_token_seconds", "HISTOGRAM"], ["vllm:inter_token_latency_seconds", "HISTOGRAM"],
            ["vllm:e2e_request_latency_seconds", "HISTOGRAM"], ["vllm:request_queue_time_seconds", "HISTOGRAM"],
            ["batchwise_ready", "GAUGE"], ["batchwise_kv_blocks", "GAUGE"],
            ["batchwise_engine_steps_total", "COUNTER"], ["batchwise_engine_step_seconds_total", "COUNTER"], ["batchwise_engine_decode_seconds_total", "COUNTER"],
            ["batchwise_engine_graph_reuses_total", "COUNTER"], ["batchwise_engine_allocation_plans_total", "COUNTER"],
        ] as const) {
            assert.equal(families.get(name)?.type, type, `${name} is a ${type}`);
        }
        for (const model of ["qwen", "coder"]) assert.ok(metricValue(m1, "vllm:kv_cache_usage_perc", { model_name: model }) >= 0);
        const before = (name: string) => (m0.includes(`${name}_count{model_name="coder"}`) || !name.endsWith("_seconds") ? metricValue(m0, name, { model_name: "coder" }) : 0);
        const diff = (name: string) => metricValue(m1, name, { model_name: "coder" }) - before(name);
        assert.equal(diff("vllm:prompt_tokens_total"), r.usage!.prompt_tokens);
        assert.equal(diff("vllm:generation_tokens_total"), 7);
        assert.equal(diff("vllm:e2e_request_latency_seconds"), 1);
        assert.equal(diff("vllm:inter_token_latency_seconds"), 6);
        // 7 tokens take at least 7 steps (the prompt in one or more, then one per token after the first)
        assert.ok(diff("batchwise_engine_steps_total") >= 7, `steps ${diff("batchwise_engine_steps_total")}`);
        const stepS = diff("batchwise_engine_step_seconds_total"), decodeS = diff("batchwise_engine_decode_seconds_total");
        assert.ok(decodeS > 0 && decodeS <= stepS, `decode ${decodeS} s within steps ${stepS} s`);
        // the decode steps after the first keep one shape: llama.cpp reuses their graph, with no new allocation plan
        const reuses = diff("batchwise_engine_graph_reuses_total"), plans = diff("batchwise_engine_allocation_plans_total");
        assert.ok(reuses >= 4 && plans >= 0 && plans <= 3, `graph reuses ${reuses}, allocation plans ${plans}`);
        assert.equal(metricValue(m1, "batchwise_ready"), 1);
        // warm-up traffic is not counted: the coder model's prompt tokens are exactly what the tests sent
        assert.ok(metricValue(m1, "vllm:prompt_tokens_total", { model_name: "coder" }) < 200);
    });
});

describe("server limits and lifecycle", () => {
    type Server = Awaited<ReturnType<typeof createServer>>;
    /** A ready server of the tiny model "q" (engine options over engineOptions, no warm-up), closed after `fn`. */
    async function withServer(engine: Record<string, unknown>, server: Record<string, unknown>, fn: (s: Server) => Promise<void>): Promise<void> {
        const s = await createServer({
            models: [{ name: "q", path: await modelPath(tinyQwen), options: { ...engineOptions, ...engine } }],
            port: 0, logger: false, warmup: false, ...server,
        });
        try {
            await s.ready();
            await fn(s);
        } finally {
            await s.close();
        }
    }

    it("answers 429 with Retry-After when the queue is full", async () => {
        await withServer({ maxSequences: 1, maxQueued: 1 }, { retryAfterSeconds: 2 }, async (server) => {
            const long = { model: "q", prompt: "go", max_tokens: 400, ignore_eos: true };
            const first = send(server.url, "/v1/completions", long);
            await until(() => server.engine("q")!.stats().running === 1, 5000, "the first request to run");
            const second = send(server.url, "/v1/completions", long);
            await until(() => server.engine("q")!.stats().waiting === 1, 5000, "the second request to wait");
            const third = await send(server.url, "/v1/completions", long);
            assertOpenAIError(third, 429, null, "queue_full");
            assert.equal(third.headers.get("retry-after"), "2");
            assert.equal((await first).status, 200);
            assert.equal((await second).status, 200);
        });
    });

    it("is live but not ready while loading and warming up, then ready", async () => {
        const server = await createServer({
            models: [{ name: "q", path: await modelPath(tinyQwen), options: engineOptions }],
            port: 0, logger: false, warmup: { promptLengths: [16, 256, 1024, 1500], concurrency: 8, maxTokens: 16 },
        });
        try {
            const seen = new Set<string>();
            let refused: Sent | undefined;
            for (;;) {
                // metrics first: if /ready still says warming after, they were taken while warming
                const metrics = (await send(server.url, "/metrics")).text;
                const ready = await send(server.url, "/ready");
                assert.equal((await send(server.url, "/health")).status, 200, "live while loading");
                if (ready.status === 200) break;
                assert.equal(ready.status, 503);
                assert.ok(ready.headers.get("retry-after"));
                seen.add(ready.body.status);
                refused ??= await send(server.url, "/v1/completions", { prompt: "x", max_tokens: 1 });
                if (ready.body.status === "warming") {
                    // counters start after warm-up: none is shown before, so none can fall back
                    assert.doesNotMatch(metrics, /^vllm:prompt_tokens_total\{/m);
                }
            }
            assert.ok(seen.has("warming"), `saw ${[...seen].join(", ")}`);
            assertOpenAIError(refused!, 503, null, "not_ready");
            assert.ok(refused!.headers.get("retry-after"));
            assert.equal(server.state, "ready");
            assert.equal((await send(server.url, "/v1/completions", { prompt: "x", max_tokens: 1 })).status, 200);
        } finally {
            await server.close();
        }
    });

    it("turns /health and /ready to 503 when a decode is stuck, and back to 200 when it moves", async () => {
        await withServer({}, { livenessTimeoutMs: 300 }, async (server) => {
            const ctx = server.engine("q")!.context;
            const real = ctx.decode.bind(ctx);
            let release!: () => void;
            const held = new Promise<void>((r) => (release = r));
            // the next decode hangs until released, as a wedged GPU would
            ctx.decode = (batch) => held.then(() => real(batch));
            const pending = send(server.url, "/v1/completions", { prompt: "x", max_tokens: 2 });
            await new Promise((r) => setTimeout(r, 100));
            assert.equal((await send(server.url, "/health")).status, 200, "not yet past the limit");
            await until(async () => (await send(server.url, "/health")).status === 503, 5000, "/health to report the stall");
            const h = await send(server.url, "/health");
            assert.match(h.body.failed[0].reason, /no step finished/);
            // a balancer takes the replica out of rotation at once, not when liveness restarts it
            const r = await send(server.url, "/ready");
            assert.equal(r.status, 503);
            assert.equal(r.body.status, "unhealthy");
            assert.match(r.body.failed[0].reason, /no step finished/);
            // the metrics say so too: the replica is not ready, its engine not healthy
            const m = (await send(server.url, "/metrics")).text;
            assert.equal(metricValue(m, "batchwise_ready"), 0);
            assert.equal(metricValue(m, "batchwise_engine_healthy", { model_name: "q" }), 0);
            // and a request sent to it anyway gets a 503 at once (a balancer retries it elsewhere), not a wait
            const refused = await send(server.url, "/v1/completions", { prompt: "y", max_tokens: 2 });
            assertOpenAIError(refused, 503, null, "engine_unhealthy");
            assert.match(refused.body.error.message, /no step finished/);
            assert.ok(refused.headers.get("retry-after"));
            ctx.decode = real;
            release();
            assert.equal((await pending).status, 200);
            assert.equal((await send(server.url, "/health")).status, 200);
            assert.equal((await send(server.url, "/ready")).status, 200);
            assert.equal((await send(server.url, "/v1/completions", { prompt: "y", max_tokens: 2 })).status, 200);
            const after = (await send(server.url, "/metrics")).text;
            assert.equal(metricValue(after, "batchwise_ready"), 1);
            assert.equal(metricValue(after, "batchwise_engine_healthy", { model_name: "q" }), 1);
        });
    });

    it("answers 503 engine_unhealthy (not 500) when the engine loop stops after an internal error: the request it held and every later one", async () => {
        await withServer({}, {}, async (server) => {
            const engine = server.engine("q")! as unknown as { scheduler: { plan: () => unknown } };
            const plan = engine.scheduler.plan.bind(engine.scheduler);
            let calls = 0;
            // a bug in the loop (here: the scheduler's plan) on the request's second step
            engine.scheduler.plan = () => {
                if (++calls === 2) throw new Error("planner bug");
                return plan();
            };
            const held = await send(server.url, "/v1/completions", { prompt: "x", max_tokens: 8 });
            assertOpenAIError(held, 503, null, "engine_unhealthy");
            assert.match(held.body.error.message, /internal error: planner bug/);
            assert.ok(held.headers.get("retry-after"));
            for (const path of ["/v1/completions", "/v1/chat/completions"]) {
                const body = path === "/v1/completions" ? { prompt: "x", max_tokens: 2 } : { messages: [{ role: "user", content: "x" }], max_tokens: 2 };
                const later = await send(server.url, path, body);
                assertOpenAIError(later, 503, null, "engine_unhealthy");
                assert.match(later.body.error.message, /stopped after an internal error/);
            }
            assert.equal((await send(server.url, "/health")).status, 503);
            assert.equal((await send(server.url, "/ready")).body.status, "unhealthy");
        });
    });

    it("drains on SIGTERM: not ready, new requests refused, the request in flight finished, exit 0", async () => {
        const dir = mkdtempSync(join(tmpdir(), "bw-cli-"));
        const proc = spawn(process.execPath, [cli, "serve", "--model", `tiny=${await modelPath(tinyQwen)}`, "--port", "0", "--ctx-size", "2048",
            "--parallel", "4", "--gpu-layers", String(gpuLayers), "--no-warmup", "--drain-timeout", "60"], { stdio: ["ignore", "pipe", "pipe"] });
        try {
            let stderr = "", stdout = "";
            proc.stderr.on("data", (d) => (stderr += d));
            proc.stdout.on("data", (d) => (stdout += d));
            const exited = new Promise<number | null>((r) => proc.on("exit", (code) => r(code)));
            await until(() => /ready on (http:\/\/\S+)/.test(stderr), 60_000, "the CLI to be ready");
            const base = /ready on (http:\/\/\S+)/.exec(stderr)![1];
            assert.match(stderr, /model 'tiny'/);
            const res = await fetch(`${base}/v1/completions`, {
                method: "POST", headers: { "content-type": "application/json" },
                body: JSON.stringify({ prompt: "one two three", max_tokens: 250, ignore_eos: true, stream: true }),
            });
            const reader = res.body!.getReader();
            let text = new TextDecoder().decode((await reader.read()).value);
            proc.kill("SIGTERM");
            await until(async () => (await send(base, "/ready")).status === 503, 5000, "/ready to turn 503");
            assert.equal((await send(base, "/ready")).body.status, "draining");
            const refused = await send(base, "/v1/completions", { prompt: "x", max_tokens: 1 });
            assertOpenAIError(refused, 503, null, "draining");
            assert.ok(refused.headers.get("retry-after"));
            for (;;) {
                const { value, done } = await reader.read();
                if (done) break;
                text += new TextDecoder().decode(value);
            }
            const events = sseEvents(text);
            assert.equal(events.at(-1), "[DONE]");
            const finish = events.flatMap((e) => (e === "[DONE]" ? [] : e.choices)).find((c: any) => c.finish_reason);
            assert.equal(finish.finish_reason, "length", "the request in flight ran to its end");
            assert.equal(await exited, 0);
            const lines = stdout.trim().split("\n").map((l) => JSON.parse(l));
            const done = lines.find((l) => l.url === "/v1/completions" && l.status === 200);
            assert.ok(done && done.completionTokens === 250 && typeof done.reqId === "string", "one structured log line for the request");
        } finally {
            proc.kill("SIGKILL");
            rmSync(dir, { recursive: true, force: true });
        }
    });

    it("has a CLI with help, devices and make-model", async () => {
        // out: stdout and stderr together; stdout alone is what --json promises to keep clean
        const run = (args: string[]) => new Promise<{ code: number | null; out: string; stdout: string }>((r) => {
            const p = spawn(process.execPath, [cli, ...args]);
            let out = "", stdout = "";
            p.stdout.on("data", (d) => ((out += d), (stdout += d)));
            p.stderr.on("data", (d) => (out += d));
            p.on("exit", (code) => r({ code, out, stdout }));
        });
        for (const cmd of [["--help"], ["serve", "--help"], ["devices", "--help"], ["make-model", "--help"]]) {
            const r = await run(cmd);
            assert.equal(r.code, 0, r.out);
            assert.match(r.out, /Usage: batchwise/);
        }
        const d = await run(["devices", "--json"]);
        assert.equal(d.code, 0, d.out);
        const info = JSON.parse(d.stdout);
        assert.ok(Array.isArray(info.devices) && info.devices.length >= 1);
        assert.equal(info.system.llamaTag, "v0.5.0");
        const dir = mkdtempSync(join(tmpdir(), "bw-make-"));
        try {
            const out = join(dir, "m.gguf");
            const m = await run(["make-model", "--vocab", "llama-spm", "--arch", "llama", "--embd", "32", "--layers", "1", "--heads", "2", "--kv-heads", "2", "--ff", "64", "--out", out]);
            assert.equal(m.code, 0, m.out);
            assert.ok(existsSync(out));
            const bad = await run(["serve", "--port", "nope"]);
            assert.notEqual(bad.code, 0);
            assert.match(bad.out, /port/);
        } finally {
            rmSync(dir, { recursive: true, force: true });
        }
    });
});
