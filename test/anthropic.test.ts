// Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens) through the official @anthropic-ai/sdk
// over loopback, on random-weight models carrying real chat templates (as test/tools.test.ts does): text,
// streamed and not (the stream's final message is the non-streamed one), a forced tool call, a two-turn tool
// loop, thinking with a budget, stop sequences, count_tokens, and errors in Anthropic's shape.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import Anthropic from "@anthropic-ai/sdk";
import { anthropicError, ApiError, toApiError } from "../lib/server/errors.js";
import { createServer, type BatchwiseServer } from "../lib/server/server.js";
import { BatchwiseError, ErrorCode } from "../lib/binding/index.js";
import { Sse } from "../lib/server/sse.js";
import type { FastifyReply } from "fastify";
import { gpu, gpuLayers, modelPath, tinyQwen, template } from "./helpers.js";

const KEY = "anthropic-test-key";
const engineOptions = { gpuLayers, contextSize: 4096, maxRunning: 4, batchTokens: 512, flashAttention: gpu ? ("on" as const) : ("auto" as const) };

// small argument spaces, as in tools.test.ts: a random model under the grammar ends a call in a few dozen tokens
const weather: Anthropic.Tool = {
    name: "get_weather", description: "The weather forecast",
    input_schema: { type: "object", properties: { days: { type: "integer", minimum: 1, maximum: 7 }, celsius: { type: "boolean" } }, required: ["days", "celsius"] },
};
const time: Anthropic.Tool = { name: "get_time", description: "The time", input_schema: { type: "object", properties: { utc: { type: "boolean" } }, required: ["utc"] } };

function assertWeatherInput(input: unknown): void {
    const a = input as Record<string, unknown>;
    assert.ok(Number.isInteger(a.days) && (a.days as number) >= 1 && (a.days as number) <= 7, JSON.stringify(a));
    assert.equal(typeof a.celsius, "boolean", JSON.stringify(a));
    assert.deepEqual(Object.keys(a).sort(), ["celsius", "days"]);
}

/** Greedy decoding: temperature 0 (a field this SDK version's types leave out; the API takes it). */
const greedy = { temperature: 0 } as object;

const ask: Anthropic.MessageParam[] = [{ role: "user", content: "What is the weather in Paris?" }];

/** A message without what differs between two runs of the same request: its id, the tool calls' ids, the prompt's split between the cache and the rest. */
function comparable(m: Anthropic.Message) {
    // parsed_output: what the SDK's stream helper adds for a structured output
    const { id: _id, usage, parsed_output: _parsed, ...rest } = m as Anthropic.Message & { parsed_output?: unknown };
    return {
        ...rest,
        content: m.content.map((b) => (b.type === "tool_use" ? { ...b, id: "" } : b)),
        usage: { prompt: usage.input_tokens + (usage.cache_read_input_tokens ?? 0), output_tokens: usage.output_tokens },
    };
}

/** The SSE events of a raw streamed response: each `event:` name with its data. */
async function rawEvents(url: string, body: Record<string, unknown>): Promise<{ event: string; data: Record<string, unknown> }[]> {
    const r = await fetch(`${url}/v1/messages`, { method: "POST", headers: { "content-type": "application/json", "x-api-key": KEY, "anthropic-version": "2023-06-01" }, body: JSON.stringify({ ...body, stream: true }) });
    assert.equal(r.status, 200);
    assert.match(r.headers.get("content-type") ?? "", /^text\/event-stream/);
    assert.ok(r.headers.get("x-request-id"));
    const text = await r.text();
    assert.ok(!text.includes("[DONE]"), "Anthropic's stream has no [DONE]");
    return text.split("\n\n").filter((b) => b.trim().length > 0).map((block) => {
        const lines = block.split("\n");
        assert.ok(lines[0].startsWith("event: ") && lines[1].startsWith("data: "), block);
        const ev = { event: lines[0].slice(7), data: JSON.parse(lines[1].slice(6)) as Record<string, unknown> };
        assert.equal(ev.data.type, ev.event, "the event's name is its data's type");
        return ev;
    });
}

describe("Anthropic Messages API (@anthropic-ai/sdk)", () => {
    let server: BatchwiseServer;
    let client: Anthropic;
    let url: string;

    before(async () => {
        const path = await modelPath(tinyQwen);
        server = await createServer({
            models: [
                { name: "qwen2.5", path, options: { ...engineOptions, chatTemplate: template("Qwen-Qwen2.5-7B-Instruct.jinja") } },
                { name: "qwen3-coder", path, options: { ...engineOptions, chatTemplate: template("Qwen3-Coder.jinja") } },
                { name: "r1", path, options: { ...engineOptions, chatTemplate: template("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja") } },
            ],
            port: 0, apiKeys: [KEY], logger: false, warmup: false,
        });
        await server.ready();
        url = server.url;
        client = new Anthropic({ baseURL: url, apiKey: KEY, maxRetries: 0 });
    });
    after(async () => {
        await server?.close();
    });

    it("messages.create: a text message, and the stream's final message is the same for greedy decoding", async () => {
        const body = { model: "qwen2.5", max_tokens: 12, messages: ask, system: "You are terse.", ...greedy };
        const m = await client.messages.create(body);
        assert.match(m.id, /^msg_/);
        assert.equal(m.type, "message");
        assert.equal(m.role, "assistant");
        assert.equal(m.model, "qwen2.5");
        assert.equal(m.content.length, 1);
        assert.equal(m.content[0].type, "text");
        assert.ok(["max_tokens", "end_turn"].includes(m.stop_reason!), m.stop_reason!);
        assert.equal(m.stop_sequence, null);
        assert.ok(m.usage.input_tokens + (m.usage.cache_read_input_tokens ?? 0) > 5);
        assert.ok(m.usage.output_tokens > 0 && m.usage.output_tokens <= 12);

        const stream = client.messages.stream(body);
        let text = "";
        stream.on("text", (t) => (text += t));
        const final = await stream.finalMessage();
        assert.deepEqual(comparable(final), comparable(m));
        assert.equal(text, (m.content[0] as Anthropic.TextBlock).text);
    });

    it("the event sequence: message_start, ping, the blocks in order, message_delta, message_stop", async () => {
        const evs = await rawEvents(url, { model: "qwen2.5", max_tokens: 6, messages: ask, ...greedy });
        const names = evs.map((e) => e.event);
        assert.equal(names[0], "message_start");
        assert.equal(names[1], "ping");
        assert.deepEqual(names.slice(-2), ["message_delta", "message_stop"]);
        const start = evs[0].data.message as Record<string, unknown>;
        assert.deepEqual(start.content, []);
        assert.equal(start.stop_reason, null);
        assert.ok((start.usage as { input_tokens: number }).input_tokens > 0);
        // blocks: start, deltas, stop; indexes 0, 1, ... each opened once and closed before the next
        let open = -1, next = 0;
        for (const e of evs.slice(2, -2)) {
            if (e.event === "ping") continue;
            const index = e.data.index as number;
            if (e.event === "content_block_start") {
                assert.equal(open, -1);
                assert.equal(index, next++);
                open = index;
            } else if (e.event === "content_block_delta") {
                assert.equal(index, open);
            } else {
                assert.equal(e.event, "content_block_stop");
                assert.equal(index, open);
                open = -1;
            }
        }
        assert.equal(open, -1, "a block left open");
        const delta = evs.at(-2)!.data as { delta: { stop_reason: string }; usage: { output_tokens: number } };
        assert.equal(delta.delta.stop_reason, "max_tokens");
        assert.equal(delta.usage.output_tokens, 6);
    });

    it("a tool forced with tool_choice {type: 'tool'}: a tool_use block whose input fits the schema, streamed and not", async () => {
        const body = { model: "qwen3-coder", max_tokens: 256, messages: ask, tools: [time, weather], tool_choice: { type: "tool" as const, name: "get_weather" }, ...greedy };
        const m = await client.messages.create(body);
        assert.equal(m.stop_reason, "tool_use");
        const uses = m.content.filter((b): b is Anthropic.ToolUseBlock => b.type === "tool_use");
        assert.equal(uses.length, 1, JSON.stringify(m.content));
        assert.equal(uses[0].name, "get_weather");
        assert.ok(uses[0].id.length > 0);
        assertWeatherInput(uses[0].input);

        const stream = client.messages.stream(body);
        const evs: Anthropic.MessageStreamEvent[] = [];
        stream.on("streamEvent", (e) => evs.push(e));
        const final = await stream.finalMessage();
        assert.deepEqual(comparable(final), comparable(m));
        // the call's block opens with its id and name and an empty input, which input_json_delta fragments then fill
        const start = evs.find((e): e is Anthropic.RawContentBlockStartEvent => e.type === "content_block_start" && e.content_block.type === "tool_use")!;
        assert.equal((start.content_block as Anthropic.ToolUseBlock).name, "get_weather");
        assert.deepEqual((start.content_block as Anthropic.ToolUseBlock).input, {});
        const json = evs.map((e) => (e.type === "content_block_delta" && e.delta.type === "input_json_delta" ? e.delta.partial_json : "")).join("");
        assert.deepEqual(JSON.parse(json), uses[0].input);
    });

    it("a two-turn tool loop: tool_use, then tool_result, then the next turn; count_tokens is the prompt it is billed for", async () => {
        const tools = [weather, time];
        const first = await client.messages.create({ model: "qwen3-coder", max_tokens: 256, messages: ask, tools, tool_choice: { type: "any", disable_parallel_tool_use: true }, ...greedy });
        assert.equal(first.stop_reason, "tool_use");
        const uses = first.content.filter((b): b is Anthropic.ToolUseBlock => b.type === "tool_use");
        assert.ok(uses.length > 0);
        const messages: Anthropic.MessageParam[] = [
            ...ask,
            { role: "assistant", content: first.content },
            { role: "user", content: [...uses.map((u) => ({ type: "tool_result" as const, tool_use_id: u.id, content: "22 degrees and sunny" })), { type: "text" as const, text: "Thanks." }] },
        ];
        const second = await client.messages.create({ model: "qwen3-coder", max_tokens: 8, messages, tools, ...greedy });
        assert.ok(["end_turn", "max_tokens", "tool_use"].includes(second.stop_reason!), second.stop_reason!);
        const count = await client.messages.countTokens({ model: "qwen3-coder", messages, tools });
        assert.equal(count.input_tokens, second.usage.input_tokens + (second.usage.cache_read_input_tokens ?? 0));
        // the call and the tool's answer are in that prompt: without them the count is smaller
        const without = await client.messages.countTokens({ model: "qwen3-coder", messages: ask, tools });
        assert.ok(without.input_tokens < count.input_tokens);
        // a last assistant turn that calls a tool cannot be continued (a prefill): the call needs its tool_result
        await assert.rejects(client.messages.countTokens({ model: "qwen3-coder", messages: messages.slice(0, 2), tools }), (e: unknown) => {
            assert.ok(e instanceof Anthropic.BadRequestError, String(e));
            assert.match(e.message, /'messages\[1\]'/);
            return true;
        });
    });

    it("thinking enabled with a budget on a thinking template: a thinking block comes first, streamed and not", async () => {
        const body = { model: "r1", max_tokens: 48, messages: ask, thinking: { type: "enabled" as const, budget_tokens: 6 }, ...greedy };
        const m = await client.messages.create(body);
        assert.equal(m.content[0].type, "thinking", JSON.stringify(m.content));
        const th = m.content[0] as Anthropic.ThinkingBlock;
        assert.ok(th.thinking.length > 0);
        assert.equal(typeof th.signature, "string");
        const final = await client.messages.stream(body).finalMessage();
        assert.deepEqual(comparable(final), comparable(m));
        // the thinking goes back in the history as the assistant's reasoning
        const next = await client.messages.create({ ...body, max_tokens: 24, messages: [...ask, { role: "assistant", content: m.content }, { role: "user", content: "And tomorrow?" }] });
        assert.equal(next.type, "message");
    });

    it("stop_sequences: the turn ends at one, which stop_reason 'stop_sequence' and stop_sequence name", async () => {
        const body = { model: "qwen2.5", max_tokens: 24, messages: ask, ...greedy };
        const free = await client.messages.create(body);
        const text = (free.content[0] as Anthropic.TextBlock).text;
        assert.ok(text.length >= 8, JSON.stringify(text));
        const stop = text.slice(4, 7);
        const cut = text.indexOf(stop);
        const m = await client.messages.create({ ...body, stop_sequences: ["\u0001never", stop] });
        assert.equal(m.stop_reason, "stop_sequence");
        assert.equal(m.stop_sequence, stop);
        const got = m.content.length > 0 ? (m.content[0] as Anthropic.TextBlock).text : "";
        assert.equal(got, text.slice(0, cut));
        const final = await client.messages.stream({ ...body, stop_sequences: ["\u0001never", stop] }).finalMessage();
        assert.equal(final.stop_reason, "stop_sequence");
        assert.equal(final.stop_sequence, stop);
    });

    it("count_tokens equals the prompt a message is billed for, system and tools included", async () => {
        const body = { model: "qwen3-coder", messages: ask, system: [{ type: "text" as const, text: "You are terse." }], tools: [weather] };
        const count = await client.messages.countTokens(body);
        const m = await client.messages.create({ ...body, max_tokens: 2, ...greedy });
        assert.equal(count.input_tokens, m.usage.input_tokens + (m.usage.cache_read_input_tokens ?? 0));
        const bare = await client.messages.countTokens({ model: "qwen3-coder", messages: ask });
        assert.ok(bare.input_tokens < count.input_tokens);
    });

    it("a last assistant turn is a prefill: the answer continues it", async () => {
        const prefill: Anthropic.MessageParam[] = [...ask, { role: "assistant", content: "The weather in Paris is" }];
        const count = await client.messages.countTokens({ model: "qwen2.5", messages: prefill });
        const tokenize = async (continued: boolean) => fetch(`${url}/tokenize`, {
            method: "POST", headers: { "content-type": "application/json", "x-api-key": KEY },
            body: JSON.stringify({ model: "qwen2.5", messages: prefill, continue_final_message: continued, add_generation_prompt: !continued }),
        }).then((r) => r.json() as Promise<{ count: number }>);
        assert.equal(count.input_tokens, (await tokenize(true)).count);
        assert.notEqual(count.input_tokens, (await tokenize(false)).count);
        const m = await client.messages.create({ model: "qwen2.5", max_tokens: 4, messages: prefill, ...greedy });
        assert.equal(m.usage.input_tokens + (m.usage.cache_read_input_tokens ?? 0), count.input_tokens);
    });

    it("errors in Anthropic's shape, as the SDK's typed errors", async () => {
        const raw = async (body: unknown, headers: Record<string, string> = { "x-api-key": KEY }, path = "/v1/messages") => {
            const r = await fetch(`${url}${path}`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(body) });
            const j = (await r.json()) as { type: string; error: { type: string; message: string }; request_id?: string };
            assert.equal(j.type, "error", JSON.stringify(j));
            assert.equal(typeof j.error.message, "string");
            assert.ok(!("param" in j.error) && !("code" in j.error), "Anthropic's error has only type and message");
            assert.equal(j.request_id, r.headers.get("x-request-id"));
            return { status: r.status, error: j.error };
        };
        const bad = async (body: Record<string, unknown>, field: string) => {
            const r = await raw({ model: "qwen3-coder", max_tokens: 4, messages: ask, ...body });
            assert.equal(r.status, 400, JSON.stringify(r));
            assert.equal(r.error.type, "invalid_request_error");
            assert.ok(r.error.message.includes(`'${field}'`), `${r.error.message} does not name '${field}'`);
        };
        // max_tokens is required, as Anthropic requires it
        await bad({ max_tokens: undefined }, "max_tokens");
        await bad({ tool_choice: { type: "tool", name: "nope" }, tools: [weather] }, "tool_choice.name");
        await bad({ tool_choice: { type: "sometimes" } }, "tool_choice.type");
        await bad({ tool_choice: { type: "any" } }, "tool_choice");
        await bad({ tools: [{ type: "web_search_20250305", name: "web_search" }] }, "tools[0].type");
        await bad({ tools: [{ name: "f" }] }, "tools[0].input_schema");
        await bad({ temperature: 1.5 }, "temperature");
        await bad({ messages: [{ role: "user", content: [{ type: "image", source: { type: "base64", media_type: "image/png", data: "" } }] }] }, "messages[0].content[0]");
        await bad({ messages: [...ask, { role: "assistant", content: [{ type: "tool_use", id: "t1", name: "get_weather", input: "days=3" }] }] }, "messages[1].content[0].input");
        await bad({ thinking: { type: "enabled", budget_tokens: 8 } }, "thinking.budget_tokens"); // not less than max_tokens
        await bad({ container: "c1" }, "container");
        await bad({ max_tokens: 4, messages: [{ role: "user", content: "hello ".repeat(5000) }] }, "messages");

        const nf = await raw({ model: "nope", max_tokens: 4, messages: ask });
        assert.equal(nf.status, 404);
        assert.equal(nf.error.type, "not_found_error");
        const auth = await raw({ model: "qwen2.5", max_tokens: 4, messages: ask }, { "x-api-key": "wrong" });
        assert.equal(auth.status, 401);
        assert.equal(auth.error.type, "authentication_error");
        const none = await raw({ model: "qwen2.5", messages: ask }, {}, "/v1/messages/count_tokens");
        assert.equal(none.status, 401);
        // the other routes keep OpenAI's shape
        const oa = await fetch(`${url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json", "x-api-key": KEY }, body: JSON.stringify({ model: "nope", messages: ask }) });
        assert.equal(oa.status, 404);
        assert.ok(((await oa.json()) as { error: { param?: unknown } }).error.param !== undefined);

        // the SDK's typed errors
        await assert.rejects(client.messages.create({ model: "qwen2.5", messages: ask } as unknown as Anthropic.MessageCreateParamsNonStreaming), (e: unknown) => {
            assert.ok(e instanceof Anthropic.BadRequestError, String(e));
            assert.equal(e.status, 400);
            assert.equal(e.type, "invalid_request_error");
            return true;
        });
        await assert.rejects(client.messages.create({ model: "qwen3-coder", max_tokens: 4, messages: ask, tools: [weather], tool_choice: { type: "tool", name: "nope" } }), Anthropic.BadRequestError);
        await assert.rejects(client.messages.create({ model: "nope", max_tokens: 4, messages: ask }), (e: unknown) => {
            assert.ok(e instanceof Anthropic.NotFoundError, String(e));
            assert.equal(e.type, "not_found_error");
            return true;
        });
        const stranger = new Anthropic({ baseURL: url, apiKey: "wrong", maxRetries: 0 });
        await assert.rejects(stranger.messages.create({ model: "qwen2.5", max_tokens: 4, messages: ask }), (e: unknown) => {
            assert.ok(e instanceof Anthropic.AuthenticationError, String(e));
            assert.equal(e.type, "authentication_error");
            return true;
        });
        await assert.rejects(stranger.messages.countTokens({ model: "qwen2.5", messages: ask }), Anthropic.AuthenticationError);
        // Bearer is taken too, on these routes as on the others
        const bearer = new Anthropic({ baseURL: url, authToken: KEY, apiKey: null, maxRetries: 0 });
        assert.ok((await bearer.messages.countTokens({ model: "qwen2.5", messages: ask })).input_tokens > 0);
    });
});

describe("Anthropic's error statuses", () => {
    it("a full queue is 529 overloaded_error, a server not ready or draining a 503 overloaded_error, a 500 an api_error", () => {
        const full = anthropicError(toApiError(new BatchwiseError(ErrorCode.QueueFull, "the queue is full"), {}, 3), "r1");
        assert.deepEqual(full, { status: 529, body: { type: "error", error: { type: "overloaded_error", message: "the queue is full" }, request_id: "r1" } });
        const draining = anthropicError(toApiError(new BatchwiseError(ErrorCode.EngineClosed, "closed")));
        assert.equal(draining.status, 503);
        assert.equal(draining.body.error.type, "overloaded_error");
        assert.equal(anthropicError(new ApiError(500, "boom", "server_error")).body.error.type, "api_error");
        assert.equal(anthropicError(new ApiError(413, "big")).body.error.type, "request_too_large");
        assert.equal(anthropicError(new ApiError(415, "media")).body.error.type, "invalid_request_error");
        assert.equal(anthropicError(new ApiError(429, "slow", "rate_limit_error")).status, 429);
    });
});

describe("Anthropic's event framing", () => {
    it("named events, an error as `event: error` with Anthropic's body, and no [DONE]", async () => {
        let head: Record<string, unknown> = {};
        let out = "";
        let ended = false;
        const raw = {
            writableEnded: false, destroyed: false,
            writeHead: (_status: number, h: Record<string, unknown>) => (head = h),
            write: (t: string) => (out += t),
            end: (t?: string) => {
                out += t ?? "";
                ended = true;
            },
        };
        const reply = { hijack: () => {}, raw, getHeaders: () => ({}) } as unknown as FastifyReply;
        // the framing the /v1/messages route gives its stream
        const sse = new Sse(reply, "req-1", { done: false, error: (e) => ({ event: "error", data: anthropicError(e, "req-1").body }) });
        assert.equal(head["x-request-id"], "req-1");
        sse.send({ type: "ping" }, "ping");
        const req = { log: { error: () => {} } } as unknown as Parameters<Sse["guard"]>[0];
        await sse.guard(req, {}, async () => {
            throw new BatchwiseError(ErrorCode.QueueFull, "full");
        });
        assert.ok(ended);
        assert.equal(out, 'event: ping\ndata: {"type":"ping"}\n\n' +
            'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"full"},"request_id":"req-1"}\n\n');
    });
});
