// Tool calling, reasoning and the chat options agents rely on, on random-weight models carrying real chat
// templates from llama.cpp's models/templates: through the engine, and through the server with the
// official openai client (streamed and not, a multi-turn agent loop), on every format tested.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";
import { BatchwiseError, Engine, ErrorCode, type ChatTool, type GenerateEvent } from "../lib/index.js";
import { createServer, type BatchwiseServer } from "../lib/server/server.js";
import { gpu, gpuLayers, modelPath, tinyQwen, type Shape, template } from "./helpers.js";

/** llama architecture with Llama 3's 128K BPE tokenizer, which adds BOS (and whose template writes it too). */
const tinyLlama3: Shape = {
    vocabFrom: "llama-bpe", architecture: "llama", embeddingSize: 64, layers: 2, heads: 4, kvHeads: 4,
    feedForwardSize: 128, contextLength: 2048, type: "f16", seed: 4,
};

const KEY = "tools-test-key";

/** The formats tested (docs/server.md lists the same): a name for the server's model, and the template file. */
const FORMATS: { name: string; file: string; thinks?: boolean }[] = [
    { name: "qwen3-coder", file: "Qwen3-Coder.jinja" },
    { name: "qwen2.5", file: "Qwen-Qwen2.5-7B-Instruct.jinja" },
    { name: "llama3.3", file: "meta-llama-Llama-3.3-70B-Instruct.jinja" },
    { name: "deepseek-v3.1", file: "deepseek-ai-DeepSeek-V3.1.jinja", thinks: true },
    { name: "gpt-oss", file: "openai-gpt-oss-120b.jinja", thinks: true },
    { name: "devstral", file: "unsloth-mistral-Devstral-Small-2507.jinja" },
];

const engineOptions = { gpuLayers, contextSize: 4096, maxRunning: 4, batchTokens: 512, flashAttention: gpu ? ("on" as const) : ("auto" as const) };

// small argument spaces (a boolean, a bounded integer): a random model under the grammar finishes a call in a few dozen
// tokens. (String arguments are free text in the XML formats, Qwen3-Coder's: a random model would not end one.)
const weather: ChatTool = {
    type: "function",
    function: {
        name: "get_weather", description: "The weather forecast",
        parameters: { type: "object", properties: { days: { type: "integer", minimum: 1, maximum: 7 }, celsius: { type: "boolean" } }, required: ["days", "celsius"] },
    },
};
const time: ChatTool = {
    type: "function",
    function: { name: "get_time", description: "The time", parameters: { type: "object", properties: { utc: { type: "boolean" } }, required: ["utc"] } },
};

/** Checks a call's arguments against the weather tool's schema. */
function assertWeatherArgs(args: string): void {
    const a = JSON.parse(args) as Record<string, unknown>;
    assert.ok(Number.isInteger(a.days) && (a.days as number) >= 1 && (a.days as number) <= 7, args);
    assert.equal(typeof a.celsius, "boolean", args);
    assert.deepEqual(Object.keys(a).sort(), ["celsius", "days"], args);
}

const ask = [{ role: "user", content: "What is the weather in Paris?" }];

describe("tool calling on each template (engine)", () => {
    for (const f of FORMATS) {
        describe(f.name, () => {
            let engine: Engine;
            before(async () => {
                engine = await Engine.load({ model: await modelPath(tinyQwen), ...engineOptions, chatTemplate: template(f.file) });
            });
            after(async () => {
                await engine?.close();
            });

            // a template that thinks first gets a thinking budget: a random model would think until max_tokens
            const think = f.thinks ? { reasoningBudget: 8 } : {};

            it("tool_choice required: the grammar forces a call whose arguments fit the schema", async () => {
                const r = await engine.chat({ messages: ask, tools: [weather], toolChoice: "required", parallelToolCalls: false, temperature: 0, maxTokens: 256, ...think }).result();
                const m = r.choices[0].message!;
                assert.equal(m.toolCalls.length, 1, `not one tool call in ${JSON.stringify(r.text)}`);
                assert.equal(r.finishReason, "stop", "the grammar ends after the call");
                assert.equal(m.toolCalls[0].function.name, "get_weather");
                assertWeatherArgs(m.toolCalls[0].function.arguments);
                assert.match(m.toolCalls[0].id, /^[A-Za-z0-9_-]+$/);
            });

            it("a named function is the one called, among several tools", async () => {
                const r = await engine.chat({
                    messages: ask, tools: [time, weather], toolChoice: { type: "function", function: { name: "get_weather" } }, temperature: 0.8, seed: 7, maxTokens: 256, ...think,
                }).result();
                const calls = r.choices[0].message!.toolCalls;
                assert.equal(calls.length, 1, r.text);
                assert.equal(calls[0].function.name, "get_weather");
                assertWeatherArgs(calls[0].function.arguments);
            });

            it("assistant tool calls and tool results go through the template", async () => {
                const prompt = engine.formatChat([
                    ...ask,
                    { role: "assistant", content: null, tool_calls: [{ id: "call_abc123", type: "function", function: { name: "get_weather", arguments: '{"days":3,"celsius":true}' } }] },
                    { role: "tool", tool_call_id: "call_abc123", content: "22 degrees and sunny" },
                ]);
                assert.ok(prompt.includes("get_weather"), prompt);
                assert.ok(prompt.includes("celsius"), prompt);
                assert.ok(prompt.includes("22 degrees and sunny"), prompt);
            });

            it("messageDeltas: false reads the message once, at the end: the same message, and the deltas carry none of it", async () => {
                const request = { messages: ask, tools: [weather], toolChoice: "required" as const, parallelToolCalls: false, temperature: 0, maxTokens: 256, ...think };
                const streamed = await engine.chat(request).result();
                const deltas: GenerateEvent[] = [];
                const gen = engine.chat({ ...request, messageDeltas: false });
                for await (const ev of gen) if (ev.type === "delta") deltas.push(ev);
                const changes = deltas.flatMap((ev, i) => (ev.type === "delta" && (ev.message?.length ?? 0) > 0 ? [i] : []));
                const once = await gen.result();
                assert.equal(once.text, streamed.text, "the same generation");
                const strip = (m: NonNullable<typeof once.choices[0]["message"]>) => ({ ...m, toolCalls: m.toolCalls.map((c) => ({ ...c, id: "" })) });
                assert.deepEqual(strip(once.choices[0].message!), strip(streamed.choices[0].message!));
                // the text is read once, when the choice ends: its last delta carries the whole message's changes (a
                // choice that ends at a stop token has no text in its last delta, and then no delta carries any)
                assert.ok(changes.length === 0 || (changes.length === 1 && changes[0] === deltas.length - 1), `message changes in deltas ${changes} of ${deltas.length}`);
                await assert.rejects(engine.chat({ ...request, messageDeltas: "no" as unknown as boolean }).result(),
                    (e: BatchwiseError) => e.code === ErrorCode.InvalidArgument && e.field === "messageDeltas");
            });

            it("tool_choice auto leaves a model that does not call a tool free (no grammar before the trigger)", async () => {
                const r = await engine.chat({ messages: ask, tools: [weather], toolChoice: "auto", temperature: 0, maxTokens: 8 }).result();
                assert.ok(["stop", "length"].includes(r.finishReason));
                assert.equal(typeof r.choices[0].message!.content, "string");
            });
        });
    }
});

describe("tool calling through the server (openai client)", () => {
    let server: BatchwiseServer;
    let client: OpenAI;
    let url: string;

    before(async () => {
        const path = await modelPath(tinyQwen);
        server = await createServer({
            models: [
                ...FORMATS.map((f) => ({ name: f.name, path, options: { ...engineOptions, chatTemplate: template(f.file) } })),
                { name: "llama3-bpe", path: await modelPath(tinyLlama3), options: { ...engineOptions, chatTemplate: template("meta-llama-Llama-3.3-70B-Instruct.jinja") } },
                { name: "chatml", path, options: engineOptions },
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

    for (const f of FORMATS) {
        it(`${f.name}: a required call, streamed and not, the stream's deltas adding up to the message`, async () => {
            const think = f.thinks ? { reasoning_budget_tokens: 8 } : {};
            const body = { model: f.name, messages: ask as OpenAI.ChatCompletionMessageParam[], tools: [weather], tool_choice: "required" as const, parallel_tool_calls: false, temperature: 0, max_tokens: 256, ...think };
            const full = await client.chat.completions.create(body);
            const c = full.choices[0];
            assert.equal(c.finish_reason, "tool_calls");
            const calls = c.message.tool_calls!;
            assert.equal(calls.length, 1);
            const call = calls[0] as OpenAI.ChatCompletionMessageFunctionToolCall;
            assert.equal(call.type, "function");
            assert.equal(call.function.name, "get_weather");
            assertWeatherArgs(call.function.arguments);

            const s = await client.chat.completions.create({ ...body, stream: true });
            const got: { id?: string; name: string; arguments: string }[] = [];
            let finish: string | null = null;
            let content = "";
            for await (const chunk of s) {
                const d = chunk.choices[0]?.delta;
                if (chunk.choices[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
                if (d?.content) content += d.content;
                for (const tc of d?.tool_calls ?? []) {
                    if (tc.id !== undefined) {
                        // a call opens with its id, type and name, before any of its arguments
                        assert.equal(got[tc.index], undefined, "a call opened twice");
                        assert.equal(tc.type, "function");
                        assert.ok(tc.function?.name, "the name comes with the id");
                        got[tc.index] = { id: tc.id, name: tc.function!.name!, arguments: tc.function?.arguments ?? "" };
                    } else {
                        assert.ok(got[tc.index], "arguments before their call's id and name");
                        got[tc.index].arguments += tc.function?.arguments ?? "";
                    }
                }
            }
            assert.equal(finish, "tool_calls");
            assert.deepEqual(got.map((g) => ({ name: g.name, arguments: g.arguments })), calls.map((x) => {
                const fx = x as OpenAI.ChatCompletionMessageFunctionToolCall;
                return { name: fx.function.name, arguments: fx.function.arguments };
            }));
            assert.equal(content, c.message.content ?? "");
        });

        it(`${f.name}: an agent loop: call, tool result, next turn`, async () => {
            const messages: OpenAI.ChatCompletionMessageParam[] = [...(ask as OpenAI.ChatCompletionMessageParam[])];
            const think = f.thinks ? { reasoning_budget_tokens: 8 } : {};
            const first = await client.chat.completions.create({ model: f.name, messages, tools: [weather, time], tool_choice: "required", parallel_tool_calls: false, temperature: 0, max_tokens: 256, ...think });
            const msg = first.choices[0].message;
            assert.ok(msg.tool_calls && msg.tool_calls.length > 0);
            messages.push(msg as OpenAI.ChatCompletionMessageParam);
            for (const call of msg.tool_calls) messages.push({ role: "tool", tool_call_id: call.id, content: "22 degrees and sunny" });
            const second = await client.chat.completions.create({ model: f.name, messages, tools: [weather, time], temperature: 0, max_tokens: 8, ...think });
            assert.ok(["stop", "length", "tool_calls"].includes(second.choices[0].finish_reason));
            // the tool's answer is in the prompt the second turn was billed for
            const tok = await fetch(`${url}/tokenize`, {
                method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${KEY}` },
                body: JSON.stringify({ model: f.name, messages, tools: [weather, time] }),
            }).then((r) => r.json() as Promise<{ count: number }>);
            assert.equal(tok.count, second.usage?.prompt_tokens);
        });
    }

    it("the 400s: unknown tool type, a named function that is not there, required without tools, grammar with tools, a template from the request", async () => {
        const bad = async (body: Record<string, unknown>, param: string) => {
            const r = await fetch(`${url}/v1/chat/completions`, {
                method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${KEY}` },
                body: JSON.stringify({ model: "qwen3-coder", messages: ask, max_tokens: 4, ...body }),
            });
            const j = (await r.json()) as { error: { param: string | null; message: string } };
            assert.equal(r.status, 400, JSON.stringify(j));
            assert.equal(j.error.param, param, j.error.message);
        };
        await bad({ tools: [{ type: "web_search" }] }, "tools[0].type");
        await bad({ tools: [weather], tool_choice: { type: "function", function: { name: "nope" } } }, "tool_choice.function.name");
        await bad({ tool_choice: "required" }, "tool_choice");
        await bad({ tools: [weather, weather] }, "tools[1].function.name");
        await bad({ tools: [weather], grammar: 'root ::= "x"' }, "grammar");
        await bad({ chat_template: "{{ messages }}" }, "chat_template");
        await bad({ continue_final_message: true, add_generation_prompt: true, messages: [...ask, { role: "assistant", content: "It is" }] }, "continue_final_message");
        await bad({ continue_final_message: true }, "continue_final_message");
        await bad({ reasoning_budget_tokens: -2 }, "reasoning_budget_tokens");
        await bad({ chat_template_kwargs: { enable_thinking: "yes" } }, "chat_template_kwargs.enable_thinking");
        await bad({ messages: [{ role: "assistant", content: null, tool_calls: [{ id: "c", type: "function", function: { name: "f", arguments: "{not json" } }] }] }, "messages[0].tool_calls[0].function.arguments");
    });

    it("/tokenize with messages counts the prompt tokens a chat is billed for: one BOS, whether the template writes it or not", async () => {
        for (const model of ["llama3-bpe", "chatml", "qwen2.5"]) {
            const r = await client.chat.completions.create({ model, messages: ask as OpenAI.ChatCompletionMessageParam[], max_tokens: 2, temperature: 0 });
            const tok = await fetch(`${url}/tokenize`, {
                method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${KEY}` }, body: JSON.stringify({ model, messages: ask }),
            }).then((x) => x.json() as Promise<{ tokens: number[]; count: number }>);
            assert.equal(tok.count, r.usage?.prompt_tokens, model);
            if (model === "llama3-bpe") {
                const bos = 128000; // <|begin_of_text|>
                assert.equal(tok.tokens[0], bos);
                assert.notEqual(tok.tokens[1], bos, "two BOS tokens");
            }
        }
    });

    it("a thinking budget or a reasoning effort on a template that does not think is taken and changes nothing", async () => {
        const base = { model: "qwen2.5", messages: ask as OpenAI.ChatCompletionMessageParam[], temperature: 0, max_tokens: 6 };
        const plain = await client.chat.completions.create(base);
        for (const extra of [{ reasoning_budget_tokens: 8 }, { reasoning_effort: "high" }]) {
            const r = await client.chat.completions.create({ ...base, ...extra } as OpenAI.ChatCompletionCreateParamsNonStreaming);
            assert.equal(r.choices[0].message.content, plain.choices[0].message.content, JSON.stringify(extra));
        }
    });

    it("continue_final_message continues the assistant's message instead of opening a new turn", async () => {
        const body = { model: "qwen2.5", messages: [...ask, { role: "assistant", content: "The weather in Paris is" }], continue_final_message: true, add_generation_prompt: false };
        const tok = await fetch(`${url}/tokenize`, {
            method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${KEY}` }, body: JSON.stringify(body),
        }).then((r) => r.json() as Promise<{ tokens: number[] }>);
        const text = await fetch(`${url}/detokenize`, {
            method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${KEY}` }, body: JSON.stringify({ model: "qwen2.5", tokens: tok.tokens }),
        }).then((r) => r.json() as Promise<{ prompt: string }>);
        assert.ok(text.prompt.trimEnd().endsWith("The weather in Paris is"), JSON.stringify(text.prompt.slice(-80)));
        const r = await client.chat.completions.create({ ...body, temperature: 0, max_tokens: 4 } as OpenAI.ChatCompletionCreateParamsNonStreaming);
        assert.equal(r.choices[0].message.role, "assistant");
    });
});

describe("reasoning", () => {
    let engine: Engine;
    before(async () => {
        engine = await Engine.load({ model: await modelPath(tinyQwen), ...engineOptions, chatTemplate: template("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja") });
    });
    after(async () => {
        await engine?.close();
    });

    it("a thinking template's output is read as reasoning, apart from the content", async () => {
        const r = await engine.chat({ messages: ask, temperature: 0, maxTokens: 24 }).result();
        const m = r.choices[0].message!;
        // the template opens <think> in the prompt: a model that never closes it has thought all along
        assert.ok(m.reasoningContent.length > 0, JSON.stringify(m));
        assert.ok(!m.content.includes("<think>"), JSON.stringify(m));
    });

    it("a thinking budget forces the end of thinking, then the answer comes as content", async () => {
        const r = await engine.chat({ messages: ask, temperature: 0, maxTokens: 48, reasoningBudget: 6 }).result();
        const m = r.choices[0].message!;
        assert.ok(r.text.includes("</think>"), JSON.stringify(r.text));
        assert.ok(m.reasoningContent.length > 0, JSON.stringify(m));
        const thinkingTokens = (await engine.tokenize(m.reasoningContent, { addSpecial: false })).length;
        assert.ok(thinkingTokens <= 6 + 2, `${thinkingTokens} tokens of thinking: ${JSON.stringify(m.reasoningContent)}`);
        // the stream's reasoning and content deltas add up to the same message
        let reasoning = "", content = "";
        for await (const ev of engine.chat({ messages: ask, temperature: 0, maxTokens: 48, reasoningBudget: 6 })) {
            if (ev.type !== "delta") continue;
            for (const d of ev.message ?? []) {
                reasoning += d.reasoningContent ?? "";
                content += d.content ?? "";
            }
        }
        assert.equal(reasoning, m.reasoningContent);
        assert.equal(content, m.content);
    });
});
