// POST /v1/responses (OpenAI's Responses API) with the official openai client's responses.create and
// responses.stream over loopback, on random-weight models carrying real chat templates (as tools.test.ts):
// streamed and not (the same response for greedy decoding), a forced function call, a function_call_output
// turn, json_schema output, instructions, reasoning on thinking templates, and the 400s that say what is
// not served. The input-item mapping itself is checked directly, without a model.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";
import { inputMessages, type ResponsesBody } from "../lib/server/responses.js";
import { createServer, type BatchwiseServer } from "../lib/server/server.js";
import { gpu, gpuLayers, modelPath, tinyQwen, template } from "./helpers.js";

const KEY = "responses-test-key";

const FORMATS: { name: string; file: string; thinks?: boolean }[] = [
    { name: "qwen3-coder", file: "Qwen3-Coder.jinja" },
    { name: "llama3.3", file: "meta-llama-Llama-3.3-70B-Instruct.jinja" },
    { name: "deepseek-v3.1", file: "deepseek-ai-DeepSeek-V3.1.jinja", thinks: true },
    { name: "gpt-oss", file: "openai-gpt-oss-120b.jinja", thinks: true },
];

const engineOptions = { gpuLayers, contextSize: 4096, maxRunning: 4, batchTokens: 512, flashAttention: gpu ? ("on" as const) : ("auto" as const) };

// small argument spaces, as in tools.test.ts: a random model under the grammar ends a call in a few dozen tokens
const weather: OpenAI.Responses.FunctionTool = {
    type: "function", name: "get_weather", description: "The weather forecast", strict: true,
    parameters: { type: "object", properties: { days: { type: "integer", minimum: 1, maximum: 7 }, celsius: { type: "boolean" } }, required: ["days", "celsius"] },
};
const time: OpenAI.Responses.FunctionTool = {
    type: "function", name: "get_time", description: "The time", strict: true,
    parameters: { type: "object", properties: { utc: { type: "boolean" } }, required: ["utc"] },
};

function assertWeatherArgs(args: string): void {
    const a = JSON.parse(args) as Record<string, unknown>;
    assert.ok(Number.isInteger(a.days) && (a.days as number) >= 1 && (a.days as number) <= 7, args);
    assert.equal(typeof a.celsius, "boolean", args);
    assert.deepEqual(Object.keys(a).sort(), ["celsius", "days"], args);
}

/**
 * A response without what differs between two runs of the same request: ids (a call's too), times, the prompt
 * tokens found in the cache, and what the SDK's stream helper parses on its side (parsed_arguments, output_parsed).
 */
function stable(r: OpenAI.Responses.Response): unknown {
    return JSON.parse(JSON.stringify(r, (k, v: unknown) => (["id", "call_id", "created_at", "completed_at", "cached_tokens", "parsed_arguments", "output_parsed"].includes(k) ? undefined : v)));
}

const ASK = "What is the weather in Paris?";

describe("the Responses input as chat messages", () => {
    it("instructions first, an assistant message with its calls one turn, outputs as tool messages, reasoning to the next turn", () => {
        const body: ResponsesBody = {
            instructions: "Be brief.",
            input: [
                { role: "developer", content: "Use tools." },
                { type: "message", role: "user", content: [{ type: "input_text", text: "What is " }, { type: "input_text", text: "the weather?" }] },
                { type: "reasoning", summary: [], content: [{ type: "reasoning_text", text: "I should call it." }] },
                { type: "message", role: "assistant", content: [{ type: "output_text", text: "Let me look." }] },
                { type: "function_call", call_id: "call_1", name: "get_weather", arguments: '{"days":1,"celsius":true}' },
                { type: "function_call", call_id: "call_2", name: "get_time", arguments: '{"utc":true}' },
                { type: "function_call_output", call_id: "call_1", output: "22 degrees" },
                { type: "function_call_output", call_id: "call_2", output: [{ type: "input_text", text: "noon" }] },
                { type: "reasoning", summary: [{ type: "summary_text", text: "dropped: no turn follows" }] },
                { role: "user", content: "Thanks" },
            ],
        };
        const { messages, sources } = inputMessages(body);
        assert.deepEqual(messages, [
            { role: "system", content: "Be brief." },
            { role: "system", content: "Use tools." },
            { role: "user", content: "What is the weather?" },
            {
                role: "assistant", content: "Let me look.", reasoning_content: "I should call it.",
                tool_calls: [
                    { id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"days":1,"celsius":true}' } },
                    { id: "call_2", type: "function", function: { name: "get_time", arguments: '{"utc":true}' } },
                ],
            },
            { role: "tool", tool_call_id: "call_1", content: "22 degrees", name: "get_weather" },
            { role: "tool", tool_call_id: "call_2", content: "noon", name: "get_time" },
            { role: "user", content: "Thanks" },
        ]);
        assert.deepEqual(sources.map((s) => s.field), ["instructions", "input[0]", "input[1]", "input[3]", "input[6]", "input[7]", "input[9]"]);
        assert.deepEqual(sources[3].calls, [4, 5]);
    });

    it("function calls without a message before them are an assistant turn with no content; a string input is one user message", () => {
        const { messages } = inputMessages({ input: [{ role: "user", content: "hi" }, { type: "function_call", call_id: "c", name: "f", arguments: "{}" }] });
        assert.deepEqual(messages[1], { role: "assistant", content: null, tool_calls: [{ id: "c", type: "function", function: { name: "f", arguments: "{}" } }] });
        assert.deepEqual(inputMessages({ input: "hello" }).messages, [{ role: "user", content: "hello" }]);
    });

    it("an item it cannot read is a 400 naming it", () => {
        const param = (body: ResponsesBody) => {
            try {
                inputMessages(body);
            } catch (e) {
                return (e as { param: string }).param;
            }
            return undefined;
        };
        assert.equal(param({ input: [{ type: "item_reference", id: "x" }] }), "input[0].type");
        assert.equal(param({ input: [{ role: "user", content: [{ type: "input_image", image_url: "x" }] }] }), "input[0].content[0]");
        assert.equal(param({ input: [{ role: "tool", content: "x" }] }), "input[0].role");
        assert.equal(param({ input: [{ type: "function_call", name: "f", arguments: "{}" }] }), "input[0]");
        assert.equal(param({ input: [{ type: "reasoning", encrypted_content: "gAAAA-openai-blob" }, { role: "assistant", content: "x" }] }), "input[0].encrypted_content");
    });
});

describe("POST /v1/responses (openai client)", () => {
    let server: BatchwiseServer;
    let client: OpenAI;
    let url: string;

    before(async () => {
        const path = await modelPath(tinyQwen);
        server = await createServer({
            models: [
                ...FORMATS.map((f) => ({ name: f.name, path, options: { ...engineOptions, chatTemplate: template(f.file) } })),
                { name: "qwen2.5", path, options: { ...engineOptions, chatTemplate: template("Qwen-Qwen2.5-7B-Instruct.jinja") } },
                { name: "r1", path, options: { ...engineOptions, chatTemplate: template("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja") } },
            ],
            port: 0, apiKeys: [KEY], logger: false, warmup: false,
        });
        await server.ready();
        url = server.url;
        client = new OpenAI({ baseURL: `${url}/v1`, apiKey: KEY, maxRetries: 0 });
    });
    after(async () => {
        await server?.close();
    });

    const tokenize = (model: string, messages: unknown[], tools?: unknown[]) => fetch(`${url}/tokenize`, {
        method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${KEY}` },
        body: JSON.stringify({ model, messages, ...(tools && { tools }) }),
    }).then((r) => r.json() as Promise<{ count: number }>);

    for (const f of FORMATS) {
        // a template that thinks first gets a thinking budget: a random model would think until max_output_tokens
        const think = f.thinks ? { reasoning_budget_tokens: 8 } : {};

        it(`${f.name}: a forced function call, streamed and not: the same response, the events in order`, async () => {
            const body = {
                model: f.name, input: ASK, tools: [time, weather], tool_choice: { type: "function" as const, name: "get_weather" },
                parallel_tool_calls: false, temperature: 0, max_output_tokens: 256, ...think,
            };
            const full = await client.responses.create(body);
            assert.equal(full.object, "response");
            assert.match(full.id, /^resp_/);
            assert.equal(full.status, "completed");
            const calls = full.output.filter((o) => o.type === "function_call");
            assert.equal(calls.length, 1, JSON.stringify(full.output));
            const call = calls[0];
            assert.equal(call.name, "get_weather");
            assert.match(call.id!, /^fc_/);
            assert.match(call.call_id, /^[A-Za-z0-9_-]+$/);
            assert.equal(call.status, "completed");
            assertWeatherArgs(call.arguments);
            assert.equal(full.output[full.output.length - 1], call, "the call is the last item");
            // a thinking template's reasoning, when there is some, comes first
            assert.ok(full.output.slice(1).every((o) => o.type !== "reasoning"), JSON.stringify(full.output));
            assert.equal(full.usage!.total_tokens, full.usage!.input_tokens + full.usage!.output_tokens);
            assert.deepEqual(full.tool_choice, { type: "function", name: "get_weather" });
            assert.equal(full.parallel_tool_calls, false);
            assert.deepEqual(full.tools.map((t) => (t as OpenAI.Responses.FunctionTool).name), ["get_time", "get_weather"]);

            // raw events: the sequence, and each item's events between its added and done
            const events: OpenAI.Responses.ResponseStreamEvent[] = [];
            for await (const ev of await client.responses.create({ ...body, stream: true })) events.push(ev);
            assert.deepEqual(events.map((e) => e.sequence_number), events.map((_e, i) => i));
            assert.equal(events[0].type, "response.created");
            assert.equal(events[1].type, "response.in_progress");
            const last = events[events.length - 1];
            assert.equal(last.type, "response.completed");
            const streamed = (last as OpenAI.Responses.ResponseCompletedEvent).response;
            assert.deepEqual(stable(streamed), stable(full), "the streamed response is the non-streamed one");
            const open = new Set<number>();
            const args = new Map<string, string>();
            for (const e of events.slice(2, -1)) {
                if (e.type === "response.output_item.added") {
                    assert.equal(open.size, 0, "an item opened before the last was done");
                    open.add(e.output_index);
                } else if (e.type === "response.output_item.done") {
                    assert.ok(open.delete(e.output_index));
                    assert.deepEqual(e.item, streamed.output[e.output_index]);
                } else if (e.type === "response.function_call_arguments.delta") {
                    assert.ok(open.has(e.output_index));
                    args.set(e.item_id, (args.get(e.item_id) ?? "") + e.delta);
                } else if (e.type === "response.function_call_arguments.done") {
                    assert.equal(e.arguments, args.get(e.item_id));
                    assert.equal(e.name, "get_weather");
                } else {
                    assert.ok("output_index" in e && open.has(e.output_index), `${e.type} outside its item`);
                }
            }
            assert.equal(open.size, 0);
            assert.equal(args.size, 1);

            if (f === FORMATS[0]) {
                // the SDK's stream helper accumulates the same response from the events
                const final = await client.responses.stream(body).finalResponse();
                assert.deepEqual(stable(final), stable(full));
            }
        });

        it(`${f.name}: a function_call_output turn: the call, its output, the next turn`, async () => {
            const first = await client.responses.create({
                model: f.name, input: ASK, tools: [weather], tool_choice: "required", parallel_tool_calls: false, temperature: 0, max_output_tokens: 256, ...think,
            });
            const call = first.output.find((o) => o.type === "function_call");
            assert.ok(call, JSON.stringify(first.output));
            const input: OpenAI.Responses.ResponseInput = [
                { role: "user", content: ASK },
                ...(first.output as OpenAI.Responses.ResponseInputItem[]),
                { type: "function_call_output", call_id: call.call_id, output: "22 degrees and sunny" },
            ];
            const second = await client.responses.create({ model: f.name, input, tools: [weather], temperature: 0, max_output_tokens: 8, ...think });
            assert.ok(["completed", "incomplete"].includes(second.status!));
            // the prompt billed is the chat the items make: the call and the tool's answer in it
            const reasoning = first.output.find((o) => o.type === "reasoning");
            const messages = [
                { role: "user", content: ASK },
                {
                    role: "assistant", content: null, tool_calls: [{ id: call.call_id, type: "function", function: { name: call.name, arguments: call.arguments } }],
                    ...(reasoning && { reasoning_content: reasoning.content![0].text }),
                },
                { role: "tool", tool_call_id: call.call_id, name: call.name, content: "22 degrees and sunny" },
            ];
            const chatTools = [{ type: "function", function: { name: weather.name, description: weather.description, parameters: weather.parameters, strict: true } }];
            const tok = await tokenize(f.name, messages, chatTools);
            assert.equal(second.usage!.input_tokens, tok.count);
        });
    }

    it("instructions are the system message before the input", async () => {
        const r = await client.responses.create({ model: "qwen2.5", instructions: "Answer in French.", input: ASK, temperature: 0, max_output_tokens: 4 });
        assert.equal(r.instructions, "Answer in French.");
        const tok = await tokenize("qwen2.5", [{ role: "system", content: "Answer in French." }, { role: "user", content: ASK }]);
        assert.equal(r.usage!.input_tokens, tok.count);
        const without = await tokenize("qwen2.5", [{ role: "user", content: ASK }]);
        assert.notEqual(tok.count, without.count);
    });

    it("text.format json_schema: the output text parses and fits the schema", async () => {
        const schema = { type: "object", properties: { sunny: { type: "boolean" }, days: { type: "integer", minimum: 1, maximum: 3 } }, required: ["sunny", "days"], additionalProperties: false };
        for (const stream of [false, true]) {
            const body = { model: "qwen2.5", input: ASK, temperature: 0, max_output_tokens: 64, text: { format: { type: "json_schema" as const, name: "forecast", schema, strict: true } } };
            const r = stream ? await client.responses.stream(body).finalResponse() : await client.responses.create(body);
            assert.equal(r.status, "completed", JSON.stringify(r.output));
            const v = JSON.parse(r.output_text) as Record<string, unknown>;
            assert.equal(typeof v.sunny, "boolean", r.output_text);
            assert.ok(Number.isInteger(v.days) && (v.days as number) >= 1 && (v.days as number) <= 3, r.output_text);
            assert.deepEqual(Object.keys(v).sort(), ["days", "sunny"]);
            assert.deepEqual(r.text?.format, body.text.format);
        }
    });

    it("max_output_tokens: an incomplete response, its last item incomplete", async () => {
        const r = await client.responses.create({ model: "qwen2.5", input: ASK, temperature: 0, max_output_tokens: 3 });
        assert.equal(r.status, "incomplete");
        assert.deepEqual(r.incomplete_details, { reason: "max_output_tokens" });
        assert.equal(r.usage!.output_tokens, 3);
        const msg = r.output[r.output.length - 1];
        assert.equal(msg.type, "message");
        assert.equal(msg.status, "incomplete");
        assert.equal(msg.content[0].type, "output_text");
        assert.equal(r.output_text, (msg.content[0] as OpenAI.Responses.ResponseOutputText).text);
        const events: OpenAI.Responses.ResponseStreamEvent[] = [];
        for await (const ev of await client.responses.create({ model: "qwen2.5", input: ASK, temperature: 0, max_output_tokens: 3, stream: true })) events.push(ev);
        const last = events[events.length - 1];
        assert.equal(last.type, "response.incomplete");
        assert.deepEqual(stable((last as OpenAI.Responses.ResponseIncompleteEvent).response), stable(r));
    });

    it("reasoning on a thinking template: a reasoning item with the thinking text, its tokens counted, streamed as reasoning_text events", async () => {
        const body = { model: "r1", input: ASK, temperature: 0, max_output_tokens: 48, reasoning_budget_tokens: 6, reasoning: { effort: "high" as const, summary: "auto" as const }, include: ["reasoning.encrypted_content" as const] };
        const r = await client.responses.create(body);
        const item = r.output[0];
        assert.equal(item.type, "reasoning", JSON.stringify(r.output));
        assert.deepEqual(item.summary, []);
        const text = item.content![0].text;
        assert.ok(text.length > 0);
        assert.ok(!text.includes("<think>") && !text.includes("</think>"), text);
        assert.ok(r.usage!.output_tokens_details.reasoning_tokens > 0);
        assert.ok(r.usage!.output_tokens_details.reasoning_tokens <= r.usage!.output_tokens);
        assert.equal(r.output[1]?.type, "message", "the answer after the budget");
        assert.deepEqual(r.reasoning, { effort: "high", summary: "auto" });
        assert.ok(item.encrypted_content, "include asked for it");

        let deltas = "";
        for await (const ev of await client.responses.create({ ...body, stream: true })) {
            if (ev.type === "response.reasoning_text.delta") deltas += ev.delta;
            if (ev.type === "response.reasoning_text.done") assert.equal(ev.text, deltas);
            if (ev.type === "response.completed") assert.deepEqual(stable(ev.response), stable(r));
        }
        assert.equal(deltas, text);

        // the item sent back (by its encrypted_content alone, as Codex may) is the next assistant turn's thinking
        const next = await client.responses.create({
            model: "r1", temperature: 0, max_output_tokens: 2, ...{ reasoning_budget_tokens: 0 },
            input: [{ role: "user", content: ASK }, { type: "reasoning", id: item.id, summary: [], encrypted_content: item.encrypted_content }, { role: "assistant", content: "Sunny." }, { role: "user", content: "And tomorrow?" }],
        });
        assert.ok(["completed", "incomplete"].includes(next.status!));
    });

    it("reasoning.effort none turns thinking off on a template that can switch it", async () => {
        const r = await client.responses.create({ model: "deepseek-v3.1", input: ASK, temperature: 0, max_output_tokens: 6, reasoning: { effort: "none" } });
        assert.ok(!r.output.some((o) => o.type === "reasoning"), JSON.stringify(r.output));
    });

    it("the 400s name the Responses request's own fields; an unknown model is a 404", async () => {
        const bad = async (body: Record<string, unknown>, param: string | null, status = 400) => {
            const r = await fetch(`${url}/v1/responses`, {
                method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${KEY}` },
                body: JSON.stringify({ model: "qwen3-coder", input: ASK, max_output_tokens: 4, ...body }),
            });
            const j = (await r.json()) as { error: { param: string | null; message: string; type: string } };
            assert.equal(r.status, status, JSON.stringify(j));
            assert.equal(j.error.param, param, j.error.message);
            return j.error;
        };
        for (const type of ["web_search", "web_search_preview", "file_search", "code_interpreter", "mcp", "custom"]) await bad({ tools: [weather, { type }] }, "tools[1].type");
        assert.match((await bad({ previous_response_id: "resp_123" }, "previous_response_id")).message, /stores no responses/);
        assert.match((await bad({ store: true }, "store")).message, /stores no responses/);
        await bad({ background: true }, "background");
        await bad({ conversation: "conv_1" }, "conversation");
        await bad({ prompt: { id: "pmpt_1" } }, "prompt");
        await bad({ truncation: "auto" }, "truncation");
        await bad({ include: ["message.output_text.logprobs"] }, "include[0]");
        await bad({ top_logprobs: 2 }, "top_logprobs");
        await bad({ text: { verbosity: "low" } }, "text.verbosity");
        await bad({ tool_choice: { type: "web_search_preview" } }, "tool_choice.type");
        await bad({ tools: [weather], tool_choice: { type: "function", name: "nope" } }, "tool_choice.name");
        await bad({ tools: [weather, weather] }, "tools[1].name");
        await bad({ tool_choice: "required" }, "tool_choice");
        await bad({ reasoning: { effort: "huge" } }, "reasoning.effort");
        await bad({ text: { format: { type: "json_schema", name: "x", schema: { type: "object", properties: { a: { type: "nope" } } } } } }, "text.format.schema");
        await bad({ input: [{ role: "user", content: ASK }, { type: "function_call", call_id: "c", name: "get_weather", arguments: "{not json" }] }, "input[1].arguments");
        await bad({ input: [] }, "input");
        await bad({ n: 2 }, "n");
        await bad({ grammar: 'root ::= "x"', text: { format: { type: "json_object" } } }, "grammar");
        await bad({ structured_outputs: { regex: "(" } }, "structured_outputs.regex");
        assert.equal((await bad({ max_output_tokens: 100_000 }, "input")).type, "invalid_request_error", "too long for the context: the input is at fault (context_length_exceeded)");
        const e = await bad({ model: "nope" }, "model", 404);
        assert.equal(e.type, "not_found_error");
    });

    it("a request the server accepts: store false, metadata and user echoed, unknown-to-batchwise hints taken", async () => {
        const r = await client.responses.create({ model: "qwen2.5", input: ASK, max_output_tokens: 2, store: false, metadata: { run: "7" }, user: "u1", service_tier: "auto", prompt_cache_key: "k" });
        assert.deepEqual(r.metadata, { run: "7" });
        assert.equal(r.user, "u1");
        assert.equal((r as unknown as { store: boolean }).store, false);
    });
});
