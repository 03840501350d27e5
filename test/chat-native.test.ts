// The addon's chat layer (ChatTemplates, ChatParser) and the samplers tool calling and reasoning need (lazy grammars,
// the generation-prompt prefill, reasoning budgets), over real templates from llama.cpp's models/templates, a
// vocab-only GGUF and a random-weight model: no weights downloaded.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
    BatchwiseError, ChatParser, ChatTemplates, ErrorCode, LIMITS, LlamaModel, vocabDir,
    type ChatApplyResult, type ChatMessageDelta, type LlamaContext, type ParsedChatMessage, type SamplerParams,
} from "../lib/binding/index.js";
import { MessageReader } from "../lib/engine/chat.js";
import { contextOptions, gpuLayers, modelPath, tinyQwen } from "./helpers.js";

const templatesDir = join(vocabDir(), "templates");
const template = (name: string): string => readFileSync(join(templatesDir, name), "utf8");

// one per family the issue names
const TEMPLATES = [
    "Qwen3-Coder.jinja",
    "Qwen-Qwen2.5-7B-Instruct.jinja",
    "meta-llama-Llama-3.3-70B-Instruct.jinja",
    "deepseek-ai-DeepSeek-V3.1.jinja",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
    "openai-gpt-oss-120b.jinja",
    "unsloth-mistral-Devstral-Small-2507.jinja",
];

const WEATHER = {
    type: "function",
    function: {
        name: "get_weather",
        description: "The weather in a city",
        parameters: { type: "object", properties: { city: { type: "string" }, days: { type: "integer" } }, required: ["city"] },
    },
};
const TIME = {
    type: "function",
    function: { name: "get_time", description: "The time in a zone", parameters: { type: "object", properties: { zone: { type: "string" } }, required: ["zone"] } },
};
const USER = [{ role: "user", content: "What is the weather in Paris?" }];

function code(c: string, field?: string) {
    return (e: unknown) => {
        assert.ok(e instanceof BatchwiseError, String(e));
        assert.equal(e.code, c, e.message);
        if (field !== undefined) assert.equal(e.field, field, e.message);
        return true;
    };
}

/** Feeds `text` to a parser in pieces of `step` characters, then a final update; returns the deltas and the message. */
function parseIn(spec: ChatApplyResult["parser"], text: string, step: number): { deltas: ChatMessageDelta[]; message: ParsedChatMessage } {
    const p = ChatParser.create(spec);
    const deltas: ChatMessageDelta[] = [];
    for (let i = 0; i < text.length; i += step) deltas.push(...p.update(text.slice(i, i + step), true));
    deltas.push(...p.update("", false));
    return { deltas, message: p.message };
}

/** The message the deltas add up to (as a streaming client would). */
function concat(deltas: ChatMessageDelta[]): ParsedChatMessage {
    const m: ParsedChatMessage = { content: "", reasoningContent: "", toolCalls: [] };
    for (const d of deltas) {
        m.content += d.content ?? "";
        m.reasoningContent += d.reasoningContent ?? "";
        if (d.toolCall) {
            const c = (m.toolCalls[d.toolCall.index] ??= { id: "", name: "", arguments: "" });
            if (d.toolCall.id) c.id = d.toolCall.id;
            if (d.toolCall.name) c.name = d.toolCall.name;
            c.arguments += d.toolCall.arguments ?? "";
        }
    }
    return m;
}

describe("ChatTemplates over real templates (vocab-only model)", () => {
    let model: LlamaModel;
    before(async () => {
        model = await LlamaModel.load(join(vocabDir(), "ggml-vocab-qwen2.gguf"), { vocabOnly: true });
    });
    after(() => model.dispose());

    for (const name of TEMPLATES) {
        it(`${name}: required gives a grammar, auto a lazy one with triggers (or none), none no grammar`, () => {
            const ct = ChatTemplates.create(model, { template: template(name) });
            assert.equal(ct.caps.jinja, true);
            assert.equal(ct.caps.toolCalls, true);
            const required = ct.apply({ messages: USER, tools: [WEATHER], toolChoice: "required" });
            assert.ok(required.grammar && required.grammar.includes("get_weather"), "required: a grammar naming the tool");
            assert.equal(required.grammarLazy, false);
            const auto = ct.apply({ messages: USER, tools: [WEATHER], toolChoice: "auto" });
            if (name.startsWith("meta-llama")) {
                // llama.cpp's Llama 3.x handler leaves auto unconstrained (its calls are plain JSON, with no marker)
                assert.equal(auto.grammar, undefined);
            } else {
                assert.ok(auto.grammar?.includes("get_weather"));
                assert.equal(auto.grammarLazy, true);
                assert.ok(auto.grammarTriggers.length > 0);
                for (const t of auto.grammarTriggers) {
                    assert.ok(["token", "word", "pattern", "patternFull"].includes(t.type));
                    if (t.type === "token") assert.equal(typeof t.token, "number");
                }
                // the triggers compile where the sampler will take them
                model.checkGrammar(auto.grammar!, "root", { lazy: true, triggers: auto.grammarTriggers });
            }
            const none = ct.apply({ messages: USER, tools: [WEATHER], toolChoice: "none" });
            assert.equal(none.grammar, undefined);
            assert.equal(none.grammarLazy, false);
            const plain = ct.apply({ messages: USER });
            assert.equal(plain.grammar, undefined);
            assert.ok(plain.prompt.includes("What is the weather in Paris?"));
            assert.ok(plain.prompt.endsWith(plain.generationPrompt), "the generation prompt ends the prompt");
            ct.dispose();
            assert.equal(ct.disposed, true);
            assert.throws(() => ct.apply({ messages: USER }), code(ErrorCode.Disposed));
        });

        it(`${name}: an assistant's tool calls and the tool's answer round-trip into the prompt`, () => {
            const ct = ChatTemplates.create(model, { template: template(name) });
            const r = ct.apply({
                messages: [
                    ...USER,
                    { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"city":"Paris","days":3}' } }] },
                    { role: "tool", tool_call_id: "call_1", content: "sunny, 24C" },
                ],
                tools: [WEATHER],
            });
            assert.ok(r.prompt.includes("get_weather"), r.prompt);
            assert.ok(r.prompt.includes("Paris"), r.prompt);
            assert.ok(/days[^0-9]{0,30}3/.test(r.prompt), "the arguments are in the prompt");
            assert.ok(r.prompt.includes("sunny, 24C"), "the tool's answer is in the prompt");
            ct.dispose();
        });
    }

    it("the parser reads known model text for each format: content, reasoning, one call, parallel calls, many small updates", () => {
        const cases: { name: string; kwargs?: Record<string, unknown>; text: string; want: Partial<ParsedChatMessage> & { calls?: [string, object][] } }[] = [
            { name: "Qwen-Qwen2.5-7B-Instruct.jinja", text: "Hello there.", want: { content: "Hello there.", calls: [] } },
            {
                name: "Qwen-Qwen2.5-7B-Instruct.jinja",
                text: '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
                want: { content: "", calls: [["get_weather", { city: "Paris" }]] },
            },
            {
                name: "Qwen-Qwen2.5-7B-Instruct.jinja",
                text: '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>',
                want: { calls: [["get_weather", { city: "Paris" }], ["get_time", { zone: "CET" }]] },
            },
            {
                name: "Qwen3-Coder.jinja",
                text: "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
                want: { calls: [["get_weather", { city: "Paris", days: 3 }]] },
            },
            {
                name: "meta-llama-Llama-3.3-70B-Instruct.jinja",
                text: '{"name": "get_weather", "parameters": {"city": "Paris"}}',
                want: { calls: [["get_weather", { city: "Paris" }]] },
            },
            {
                name: "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
                text: "Let me think about it.\n</think>\n\nIt is sunny.",
                want: { reasoningContent: "Let me think about it.", content: "It is sunny.", calls: [] },
            },
            {
                name: "deepseek-ai-DeepSeek-V3.1.jinja",
                text: "Weather wanted.</think><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
                want: { reasoningContent: "Weather wanted.", calls: [["get_weather", { city: "Paris" }]] },
            },
            {
                name: "openai-gpt-oss-120b.jinja",
                text: "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>final<|message|>Sunny.",
                want: { reasoningContent: "Need the weather.", content: "Sunny.", calls: [] },
            },
            {
                name: "openai-gpt-oss-120b.jinja",
                text: "<|channel|>analysis<|message|>Call it.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}",
                want: { reasoningContent: "Call it.", calls: [["get_weather", { city: "Paris" }]] },
            },
            {
                name: "unsloth-mistral-Devstral-Small-2507.jinja",
                text: '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
                want: { calls: [["get_weather", { city: "Paris" }]] },
            },
        ];
        for (const c of cases) {
            const ct = ChatTemplates.create(model, { template: template(c.name) });
            const r = ct.apply({ messages: USER, tools: [WEATHER, TIME] });
            for (const step of [c.text.length, 1, 3]) {
                const { deltas, message } = parseIn(r.parser, c.text, step);
                const label = `${c.name} in pieces of ${step}: ${c.text.slice(0, 60)}`;
                if (c.want.content !== undefined) assert.equal(message.content.trim(), c.want.content, label);
                if (c.want.reasoningContent !== undefined) assert.equal(message.reasoningContent.trim(), c.want.reasoningContent, label);
                if (c.want.calls) {
                    assert.deepEqual(message.toolCalls.map((t) => [t.name, JSON.parse(t.arguments)]), c.want.calls, label);
                    for (const t of message.toolCalls) assert.match(t.id, /^call_[A-Za-z0-9]{24}$|^.+$/, label);
                }
                // the deltas add up to the message, and each call's id and name come before its arguments
                assert.deepEqual(concat(deltas), message, label);
                const seen = new Set<number>();
                for (const d of deltas) {
                    if (!d.toolCall) continue;
                    if (d.toolCall.arguments !== undefined) assert.ok(seen.has(d.toolCall.index), `${label}: arguments before the name`);
                    if (d.toolCall.name !== undefined) {
                        assert.ok(d.toolCall.id, label);
                        assert.equal(d.toolCall.arguments, undefined, `${label}: the header delta carries no arguments`);
                        seen.add(d.toolCall.index);
                    }
                }
            }
            ct.dispose();
        }
    });

    it("tool call ids: made when the model gives none, the same across updates", () => {
        const ct = ChatTemplates.create(model, { template: template("Qwen-Qwen2.5-7B-Instruct.jinja") });
        const r = ct.apply({ messages: USER, tools: [WEATHER] });
        const p = ChatParser.create(r.parser);
        p.update('<tool_call>\n{"name": "get_weather", "arguments": {"ci', true);
        const id = p.message.toolCalls[0]?.id;
        assert.match(id ?? "", /^call_[A-Za-z0-9]{24}$/);
        p.update('ty": "Paris"}}\n</tool_call>', false);
        assert.equal(p.message.toolCalls[0].id, id);
        assert.throws(() => p.update("more", true), code(ErrorCode.InvalidArgument, "partial"));
        ct.dispose();
    });

    it("a call is announced after the text that came before it in the same update (streams split it in two otherwise)", () => {
        const ct = ChatTemplates.create(model, { template: template("Qwen-Qwen2.5-7B-Instruct.jinja") });
        const r = ct.apply({ messages: USER, tools: [WEATHER], toolChoice: "auto" });
        const p = ChatParser.create(r.parser);
        p.update("Sure", true);
        const d = p.update(' thing\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa', true);
        const kinds = d.map((x) => (x.content !== undefined ? "content" : x.toolCall?.name !== undefined ? "header" : "args"));
        const header = kinds.indexOf("header");
        assert.ok(header >= 0, JSON.stringify(d));
        assert.ok(kinds.slice(header).every((k) => k !== "content"), `text after the call's header: ${JSON.stringify(d)}`);
        assert.ok(kinds.slice(0, header).every((k) => k === "content"), `arguments before the call's header: ${JSON.stringify(d)}`);
        ct.dispose();
    });

    it("tool-call arguments nested past the schema depth are refused, not parsed into the template (a stack overflow)", () => {
        // a reviewer found it: 100,000 levels of '[' in one call's arguments killed the process (rc 139) in the template layer
        const ct = ChatTemplates.create(model, { template: template("Qwen-Qwen2.5-7B-Instruct.jinja") });
        const deep = "[".repeat(100_000) + "]".repeat(100_000);
        const messages = [...USER, { role: "assistant", content: null, tool_calls: [{ id: "c", type: "function", function: { name: "get_weather", arguments: deep } }] },
            { role: "tool", tool_call_id: "c", content: "ok" }];
        assert.throws(() => ct.apply({ messages }), code(ErrorCode.InvalidArgument, "messages[1].tool_calls[0].function.arguments"));
        ct.dispose();
    });

    it("a final text the format cannot read is the content, with no tool calls; partial text never throws", () => {
        const ct = ChatTemplates.create(model, { template: template("Qwen3-Coder.jinja") });
        const r = ct.apply({ messages: USER, tools: [WEATHER], toolChoice: "required" });
        for (const text of ["<tool_call>\n<function=get_weather>\n<parameter=city>\nPar", "<tool_call><tool_call></function>", "\u0000\uFFFF<", ""]) {
            const p = ChatParser.create(r.parser);
            for (const ch of text) p.update(ch, true);
            p.update("", false);
            const m = p.message;
            assert.equal(typeof m.content, "string");
            assert.ok(Array.isArray(m.toolCalls));
        }
        ct.dispose();
    });

    it("a continued final message is not reported again", () => {
        const ct = ChatTemplates.create(model, { template: template("Qwen-Qwen2.5-7B-Instruct.jinja") });
        const r = ct.apply({ messages: [...USER, { role: "assistant", content: "It is" }], addGenerationPrompt: false, continueFinalMessage: true });
        assert.ok(r.prompt.endsWith("It is"), JSON.stringify(r.prompt.slice(-40)));
        const p = ChatParser.create(r.parser, { isContinuation: true });
        const d = [...p.update(" sunny.", true), ...p.update("", false)];
        assert.equal(concat(d).content, " sunny.");
        assert.throws(() => ct.apply({ messages: [...USER, { role: "assistant", content: "x" }], continueFinalMessage: true }),
            code(ErrorCode.InvalidArgument, "continueFinalMessage"));
        assert.throws(() => ct.apply({
            messages: [...USER, { role: "assistant", content: null, tool_calls: [{ id: "a", type: "function", function: { name: "get_weather", arguments: "{}" } }] }],
            addGenerationPrompt: false, continueFinalMessage: true,
        }), code(ErrorCode.InvalidArgument, "continueFinalMessage"));
        ct.dispose();
    });

    it("reasoning: thinking tags, enable_thinking and the kwargs", () => {
        const ct = ChatTemplates.create(model, { template: template("Qwen-Qwen3-0.6B.jinja") });
        assert.equal(ct.caps.thinking, true);
        const on = ct.apply({ messages: USER });
        assert.equal(on.thinking.supported, true);
        assert.equal(on.thinking.startTag, "<think>");
        assert.deepEqual(on.thinking.endTags, ["</think>"]);
        const off = ct.apply({ messages: USER, chatTemplateKwargs: { enable_thinking: false } });
        assert.notEqual(off.prompt, on.prompt);
        assert.deepEqual(ct.apply({ messages: USER, enableThinking: false }).prompt, off.prompt);
        assert.throws(() => ct.apply({ messages: USER, chatTemplateKwargs: { enable_thinking: "no" } }),
            code(ErrorCode.InvalidArgument, "chatTemplateKwargs.enable_thinking"));
        const { message } = parseIn(on.parser, "<think>\nHmm.\n</think>\n\nYes.", 2);
        assert.equal(message.reasoningContent.trim(), "Hmm.");
        assert.equal(message.content.trim(), "Yes.");
        // reasoningFormat none: the thinking stays in the content
        const raw = ct.apply({ messages: USER, reasoningFormat: "none" });
        const p = ChatParser.create(raw.parser, { reasoningFormat: "none" });
        p.update("<think>\nHmm.\n</think>\n\nYes.", false);
        assert.equal(p.message.reasoningContent, "");
        assert.ok(p.message.content.includes("Yes."));
        ct.dispose();
    });

    it("the model's own template, a built-in name (legacy mode: no tools), BOS cut when the tokenizer adds one", () => {
        const own = ChatTemplates.create(model);
        assert.equal(own.source, model.metadata.chatTemplate);
        own.dispose();
        const legacy = ChatTemplates.create(model, { template: "llama3" });
        assert.equal(legacy.caps.jinja, false);
        assert.equal(legacy.caps.tools, false);
        const r = legacy.apply({ messages: USER });
        assert.ok(r.prompt.includes("<|start_header_id|>user<|end_header_id|>"), r.prompt);
        assert.throws(() => legacy.apply({ messages: USER, tools: [WEATHER] }), code(ErrorCode.InvalidArgument, "tools"));
        legacy.dispose();
        const bos = ChatTemplates.create(model, { template: "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}" });
        const kept = bos.apply({ messages: USER, addBos: false }).prompt;
        const cut = bos.apply({ messages: USER, addBos: true }).prompt;
        assert.equal(kept.length - cut.length, kept.length - USER[0].content.length);
        bos.dispose();
    });

    it("errors are typed, with the field at fault", () => {
        assert.throws(() => ChatTemplates.create(model, { template: "{% for %}" }), code(ErrorCode.ChatTemplate, "template"));
        assert.throws(() => ChatTemplates.create(model, { template: "no jinja and no known markers" }), code(ErrorCode.ChatTemplate, "template"));
        assert.throws(() => ChatTemplates.create(model, { template: "" }), code(ErrorCode.ChatTemplate, "template"));
        const raising = ChatTemplates.create(model, { template: "{{ raise_exception('roles must alternate') }}" });
        assert.throws(() => raising.apply({ messages: USER }), code(ErrorCode.ChatTemplate, "template"));
        raising.dispose();
        const ct = ChatTemplates.create(model, { template: template("Qwen-Qwen2.5-7B-Instruct.jinja") });
        const bad: [object, string][] = [
            [{}, "messages"],
            [{ messages: "hi" }, "messages"],
            [{ messages: [{ content: "x" }] }, "messages[0].role"],
            [{ messages: [{ role: "user" }] }, "messages[0].content"],
            [{ messages: [{ role: "user", content: 3 }] }, "messages[0].content"],
            [{ messages: [{ role: "user", content: [{ type: "image_url", image_url: {} }] }] }, "messages[0].content[0].type"],
            [{ messages: [{ role: "assistant", tool_calls: [{ function: { arguments: "{}" } }] }] }, "messages[0].tool_calls[0].function.name"],
            [{ messages: USER, tools: {} }, "tools"],
            [{ messages: USER, tools: [{ type: "retrieval" }] }, "tools[0].type"],
            [{ messages: USER, tools: [{ type: "function", function: { name: "" } }] }, "tools[0].function.name"],
            [{ messages: USER, tools: [{ type: "function", function: { name: "f", parameters: "x" } }] }, "tools[0].function.parameters"],
            [{ messages: USER, tools: [{ type: "function", function: { name: "f", parameters: { type: "object", properties: { a: { $ref: "#/nowhere" } } } } }], toolChoice: "required" },
                "tools[0].function.parameters"],
            [{ messages: USER, toolChoice: "sometimes" }, "toolChoice"],
            [{ messages: USER, toolChoice: "required" }, "toolChoice"],
            [{ messages: USER, tools: [WEATHER], grammar: 'root ::= "a"' }, "grammar"],
            [{ messages: USER, jsonSchema: { type: "object" }, grammar: 'root ::= "a"' }, "grammar"],
            [{ messages: USER, jsonSchema: [] }, "jsonSchema"],
            [{ messages: USER, reasoningFormat: "loud" }, "reasoningFormat"],
            [{ messages: USER, addGenerationPrompt: "yes" }, "addGenerationPrompt"],
            [{ messages: USER, chatTemplateKwargs: [] }, "chatTemplateKwargs"],
        ];
        for (const [inputs, field] of bad) {
            assert.throws(() => ct.apply(inputs as never), code(ErrorCode.InvalidArgument, field), JSON.stringify(inputs));
        }
        // past the limits: refused before they are parsed
        const deep = { messages: USER, chatTemplateKwargs: { x: JSON.parse("[".repeat(LIMITS.maxChatJsonDepth) + "]".repeat(LIMITS.maxChatJsonDepth)) } };
        assert.throws(() => ct.apply(deep), code(ErrorCode.InvalidArgument, "inputs"));
        const big = { messages: [{ role: "user", content: "x".repeat(LIMITS.maxChatJsonBytes) }] };
        assert.throws(() => ct.apply(big), code(ErrorCode.InvalidArgument, "inputs"));
        const deepSchema = "{".repeat(1) + '"type":"object","properties":{"a":' + '{"type":"array","items":'.repeat(LIMITS.maxSchemaDepth) + "{}" + "}".repeat(LIMITS.maxSchemaDepth) + "}}";
        assert.throws(() => ct.apply({ messages: USER, tools: [{ type: "function", function: { name: "f", parameters: JSON.parse(deepSchema) } }] }),
            code(ErrorCode.InvalidArgument, "tools[0].function.parameters"));
        const cyclic: Record<string, unknown> = { messages: USER };
        cyclic.self = cyclic;
        assert.throws(() => ct.apply(cyclic as never), code(ErrorCode.InvalidArgument, "inputs"));
        // a parser spec that apply() did not make
        const r = ct.apply({ messages: USER, tools: [WEATHER] });
        assert.throws(() => ChatParser.create({ ...r.parser, parser: r.parser.parser.replace("get_weather", "get_weathe!") }), code(ErrorCode.InvalidArgument, "spec"));
        assert.throws(() => ChatParser.create({ format: 1, parser: "{}", generationPrompt: "", tag: "0" }), code(ErrorCode.InvalidArgument, "spec"));
        assert.throws(() => ChatParser.create(null as never), code(ErrorCode.InvalidArgument, "spec"));
        assert.throws(() => ChatParser.create(r.parser, { reasoningFormat: "x" as never }), code(ErrorCode.InvalidArgument, "reasoningFormat"));
        ct.dispose();
    });

    it("30 tools of an agent fit the limits (grammar, triggers)", (t) => {
        const str = { type: "string" };
        const tools = Array.from({ length: 30 }, (_, i) => ({
            type: "function",
            function: {
                name: `tool_${i}`,
                description: "A tool an agent has. ".repeat(10),
                parameters: {
                    type: "object",
                    properties: {
                        path: str, content: str, recursive: { type: "boolean" }, limit: { type: "integer" },
                        mode: { type: "string", enum: ["a", "b", "c"] }, items: { type: "array", items: { type: "object", properties: { old: str, new: str }, required: ["old", "new"] } },
                    },
                    required: ["path"],
                },
            },
        }));
        for (const name of [...TEMPLATES, "GLM-4.6.jinja", "MiniMax-M2.jinja"]) {
            const ct = ChatTemplates.create(model, { template: template(name) });
            for (const toolChoice of ["auto", "required"] as const) {
                const r = ct.apply({ messages: USER, tools, toolChoice });
                if (r.grammar) {
                    // GLM-4.6 and MiniMax-M2 write the most (about 110 KB for these 30): the limit must keep room for them
                    t.diagnostic(`${name} ${toolChoice}: grammar of ${r.grammar.length} bytes, ${r.grammarTriggers.length} triggers`);
                    assert.ok(r.grammar.length <= LIMITS.maxGrammarBytes, `${name} ${toolChoice}: grammar of ${r.grammar.length} bytes`);
                    const t0 = performance.now();
                    model.checkGrammar(r.grammar, "root", { lazy: r.grammarLazy, triggers: r.grammarTriggers });
                    t.diagnostic(`  loads in ${(performance.now() - t0).toFixed(0)} ms`);
                }
                assert.ok(r.grammarTriggers.length <= LIMITS.maxGrammarTriggers);
            }
            ct.dispose();
        }
    });

    it("a stream's reader parses at once while a parse is cheap, and waits 500 parses' time between costly ones (the pieces read together)", () => {
        const ct = ChatTemplates.create(model, { template: template("Qwen3-Coder.jinja") });
        const spec = ct.apply({ messages: USER, tools: [WEATHER] }).parser;
        const content = (d: ChatMessageDelta[]) => d.map((x) => x.content ?? "").join("");
        for (const tick of [0.01, 0.1]) {
            // a clock that moves `tick` ms at each read: a parse is read as taking `tick`
            let t = 0;
            const reader = new MessageReader({ spec, parseToolCalls: true, isContinuation: false, deltas: true }, () => (t += tick));
            const out: string[] = [content(reader.update("Hello", false))];
            out.push(content(reader.update(" there", false)));
            t += 60; // past 500 x 0.1 ms
            out.push(content(reader.update(", friend", false)));
            out.push(content(reader.update("", true)));
            if (tick < MessageReader.PARSE_COSTLY_MS) {
                assert.deepEqual(out, ["Hello", " there", ", friend", ""], "cheap parses: every piece at once");
            } else {
                assert.deepEqual(out, ["Hello", "", " there, friend", ""], "a costly parse: the next piece waits, then both come together");
            }
            assert.equal(reader.message().content, "Hello there, friend");
        }
        // the last piece is read at once, whatever the last parse cost
        let t = 0;
        const reader = new MessageReader({ spec, parseToolCalls: true, isContinuation: false, deltas: true }, () => (t += 1));
        assert.equal(content(reader.update("a", false)), "a");
        assert.equal(content(reader.update("b", false)), "", "waits (a parse took 1 ms: up to 250 ms)");
        assert.equal(content(reader.update("c", true)), "bc");
        // a parse that fails (here: past the parser's size limit) leaves what it was given unread, held-back pieces
        // included, for the caller to deliver as plain text
        t = 0;
        const failing = new MessageReader({ spec, parseToolCalls: true, isContinuation: false, deltas: true }, () => (t += 1));
        failing.update("a", false);
        failing.update("b", false); // held back
        t += 1000;
        const big = "x".repeat(LIMITS.maxChatJsonBytes);
        assert.throws(() => failing.update(big, false), (e: BatchwiseError) => e.code === ErrorCode.InvalidArgument);
        assert.equal(failing.unread(), "b" + big);
        ct.dispose();
    });
});

describe("samplers for tool calls and reasoning (random-weight model)", () => {
    let model: LlamaModel;
    let ctx: LlamaContext;
    const SET_MODE = {
        type: "function",
        function: {
            name: "set_mode",
            parameters: {
                type: "object",
                properties: { mode: { type: "string", enum: ["fast", "slow"] }, on: { type: "boolean" }, n: { type: "integer" } },
                required: ["mode", "on", "n"],
            },
        },
    };

    before(async () => {
        model = await LlamaModel.load(await modelPath(tinyQwen), { gpuLayers });
        ctx = await model.createContext(contextOptions({ contextSize: 2048, seqIds: 2, batchSize: 512 }));
    });
    after(() => {
        ctx.dispose();
        model.dispose();
    });

    const tok = async (text: string) => Array.from(await model.tokenize(text, { addSpecial: false, parseSpecial: true }));

    /**
     * Decodes `prompt` then `forced` (tokens fed as if generated: the sampler gets them as its history), and samples up
     * to `n` more, stopping after `stop` appears in the text. Returns the sampled tokens.
     */
    async function run(params: SamplerParams, prompt: number[], n: number, forced: number[] = [], stop?: string): Promise<number[]> {
        ctx.clear();
        ctx.setSampler(0, { ...params, history: Int32Array.from(forced) });
        const all = [...prompt, ...forced];
        let r = await ctx.decode({
            tokens: Int32Array.from(all), positions: Int32Array.from(all, (_, i) => i),
            seqIds: new Int32Array(all.length), outputs: Uint8Array.from(all, (_, i) => (i === all.length - 1 ? 1 : 0)),
        });
        const out: number[] = [];
        let pos = all.length;
        while (out.length < n) {
            const t = r.tokens[0];
            if (t < 0 || model.isEog(t)) break;
            out.push(t);
            if (stop && (await model.detokenize(out, { special: true })).includes(stop)) break;
            r = await ctx.decode({ tokens: Int32Array.of(t), positions: Int32Array.of(pos++), seqIds: Int32Array.of(0), outputs: Uint8Array.of(1) });
        }
        return out;
    }

    // Qwen3-Coder's XML format takes any text for a string parameter (an enum too): its tool has only a boolean and an integer
    const SET_FLAG = {
        type: "function",
        function: { name: "set_mode", parameters: { type: "object", properties: { on: { type: "boolean" }, n: { type: "integer" } }, required: ["on", "n"] } },
    };
    for (const [name, opener, closer, tool] of [
        ["meta-llama-Llama-3.3-70B-Instruct.jinja", "{", "}}", SET_MODE],
        ["Qwen-Qwen2.5-7B-Instruct.jinja", "<tool_call>\n", "</tool_call>", SET_MODE],
        ["Qwen3-Coder.jinja", "<tool_call>\n<function=set_mode>\n", "</tool_call>", SET_FLAG],
    ] as const) {
        it(`${name}: the required tool's grammar makes a call whose arguments follow the schema`, async () => {
            const ct = ChatTemplates.create(model, { template: template(name) });
            // Llama 3.x's template writes today's date into the prompt: pinned, so that the random model's answer does not
            // change with the day the tests run (on 2026-12-01 it rambled past 400 tokens of whitespace)
            const r = ct.apply({
                messages: [{ role: "user", content: "go" }], tools: [tool], toolChoice: "required", parallelToolCalls: false,
                chatTemplateKwargs: { date_string: "30 Nov 2026" },
            });
            assert.ok(r.grammar);
            const prompt = Array.from(await model.tokenize(r.prompt, { addSpecial: true, parseSpecial: true }));
            // common's grammar lets the answer start with text before the call: the call's opener is fed as if generated
            // (a random model would ramble for ever), then the grammar writes the rest
            const forced = await tok(opener);
            const params: SamplerParams = { temperature: 0.8, seed: 5, backend: false, grammar: r.grammar, grammarLazy: r.grammarLazy, grammarTriggers: r.grammarTriggers, grammarPrefill: r.generationPrompt };
            const out = await run(params, prompt, 400, forced, closer);
            const text = opener + (await model.detokenize(out, { special: true }));
            assert.ok(text.includes(closer), `the call ends within 400 tokens: ${JSON.stringify(text.slice(0, 300))}`);
            const p = ChatParser.create(r.parser);
            const deltas = [...p.update(text.slice(0, 10), true), ...p.update(text.slice(10), true), ...p.update("", false)];
            const calls = p.message.toolCalls;
            assert.equal(calls.length, 1, JSON.stringify(text));
            assert.equal(calls[0].name, "set_mode");
            const args = JSON.parse(calls[0].arguments) as { mode?: string; on: boolean; n: number };
            if (tool === SET_MODE) assert.ok(["fast", "slow"].includes(args.mode!), calls[0].arguments);
            assert.equal(typeof args.on, "boolean");
            assert.ok(Number.isInteger(args.n));
            assert.deepEqual(concat(deltas), p.message);
            // a resumed sequence (the same tokens as history) ends in the same grammar state: greedy, the next token is
            // the same (a seeded sampler's random state is not part of what a resume restores)
            const greedy = { ...params, temperature: 0 };
            const first = await run(greedy, prompt, 12, forced);
            for (const k of [1, 5, first.length - 1]) {
                assert.deepEqual(await run(greedy, prompt, 1, [...forced, ...first.slice(0, k)]), first.slice(k, k + 1), `resumed after ${k}`);
            }
            // without the prefill the grammar still expects the generation prompt: the opener does not fit it
            assert.throws(() => ctx.setSampler(1, { ...params, grammarPrefill: undefined, history: Int32Array.from(forced) }),
                code(ErrorCode.SamplerInvalid, "history"));
            ct.dispose();
        });
    }

    it("a lazy grammar is not active before its trigger, and constrains after it", async () => {
        const ct = ChatTemplates.create(model, { template: template("Qwen-Qwen2.5-7B-Instruct.jinja") });
        const r = ct.apply({ messages: [{ role: "user", content: "go" }], tools: [SET_MODE], toolChoice: "auto", parallelToolCalls: false });
        assert.equal(r.grammarLazy, true);
        const prompt = Array.from(await model.tokenize(r.prompt, { addSpecial: true, parseSpecial: true }));
        const base: SamplerParams = { temperature: 0.9, seed: 11, backend: false };
        const lazy: SamplerParams = { ...base, grammar: r.grammar, grammarLazy: true, grammarTriggers: r.grammarTriggers };
        const free = await run(base, prompt, 40);
        assert.ok(!(await model.detokenize(free, { special: true })).includes("<tool_call>"));
        assert.deepEqual(await run(lazy, prompt, 40), free, "the same tokens as with no grammar");
        // once the trigger was written the grammar holds: the call that follows parses, with schema-valid arguments
        const forced = await tok("Sure.\n<tool_call>\n");
        const out = await run(lazy, prompt, 400, forced, "</tool_call>");
        const text = "Sure.\n<tool_call>\n" + (await model.detokenize(out, { special: true }));
        const p = ChatParser.create(r.parser);
        p.update(text, false);
        assert.equal(p.message.toolCalls.length, 1, text);
        assert.ok(["fast", "slow"].includes((JSON.parse(p.message.toolCalls[0].arguments) as { mode: string }).mode));
        assert.equal(p.message.content.trim(), "Sure.");
        ct.dispose();
    });

    it("a token that completes a lazy grammar's trigger with text the grammar refuses is not sampled: another one is", async () => {
        // found by the binding fuzz: 'ctile' completes the trigger 'c' and leaves 'tile', which root ::= "a" refuses;
        // llama.cpp's grammar throws in accept (a state it cannot be asked about first), which failed the sequence
        const prompt = [1, 2, 3, 4, 5, 6];
        const params: SamplerParams = { topK: 0, seed: 343472351, grammar: 'root ::= "a"', grammarLazy: true, grammarTriggers: [{ type: "pattern", value: "(a|b)*c" }] };
        const out = await run(params, prompt, 12);
        assert.ok(out.length > 0);
        const text = await model.detokenize(out, { special: true });
        // whatever came, it never had a 'c' followed by anything but the grammar's "a" in the same token
        for (const t of out) {
            const piece = new TextDecoder().decode(model.tokenToPiece(t, { special: true }));
            const c = piece.indexOf("c");
            if (c >= 0) assert.ok(piece.slice(c + 1) === "" || piece.slice(c + 1) === "a", `token ${JSON.stringify(piece)} in ${JSON.stringify(text)}`);
        }
    });

    it("a reasoning budget of N forces the end tag after N thinking tokens", async () => {
        const prompt = await tok("<|im_start|>user\ngo<|im_end|>\n<|im_start|>assistant\n");
        const forced = [...await tok(" ok."), ...await tok("</think>")];
        for (const N of [0, 3, 9]) {
            const budget = { tokens: N, startTag: "<think>", endTags: ["</think>"], message: " ok." };
            // the thinking opened by the prefill (the generation prompt), or by the history (tokens generated before)
            const a = await run({ temperature: 0.8, seed: 2, backend: false, reasoningBudget: { ...budget, prefill: "<think>" } }, prompt, N + forced.length + 3);
            assert.deepEqual(a.slice(N, N + forced.length), forced, `budget ${N}, prefill`);
            assert.equal(ctx.setSampler(1, { reasoningBudget: budget }).backend, false);
            const start = await tok("<think>");
            const b = await run({ temperature: 0.8, seed: 2, backend: false, reasoningBudget: budget }, prompt, N + forced.length + 3, start);
            assert.deepEqual(b.slice(N, N + forced.length), forced, `budget ${N}, history`);
            // resumed part-way through the forcing: it goes on where it was
            if (N > 0) {
                const c = await run({ temperature: 0.8, seed: 2, backend: false, reasoningBudget: budget }, prompt, 2, [...start, ...b.slice(0, N + 1)]);
                assert.deepEqual(c, forced.slice(1, 3));
            }
        }
        // a budget that never runs out forces nothing
        const free = await run({ temperature: 0.8, seed: 2, backend: false }, prompt, 20, await tok("<think>"));
        assert.deepEqual(await run({ temperature: 0.8, seed: 2, backend: false, reasoningBudget: { tokens: 2 ** 31 - 1, startTag: "<think>", endTags: ["</think>"] } }, prompt, 20, await tok("<think>")), free);
    });

    it("sampler errors are typed: triggers, prefill, budget", () => {
        const g = 'root ::= "a"';
        const bad: [SamplerParams, string][] = [
            [{ grammar: g, grammarLazy: true }, "grammarTriggers"],
            [{ grammarLazy: true, grammarTriggers: [{ type: "word", value: "x" }] }, "grammarLazy"],
            [{ grammar: g, grammarLazy: true, grammarTriggers: [{ type: "pattern", value: "(unclosed" }] }, "grammarTriggers[0].value"],
            [{ grammar: g, grammarLazy: true, grammarTriggers: [{ type: "patternFull", value: "[z-a]" }] }, "grammarTriggers[0].value"],
            [{ grammar: g, grammarLazy: true, grammarTriggers: [{ type: "odd" as never, value: "x" }] }, "grammarTriggers[0].type"],
            [{ grammar: g, grammarLazy: true, grammarTriggers: [{ type: "token", value: "x", token: -1 }] }, "grammarTriggers[0].token"],
            [{ grammar: g, grammarLazy: true, grammarTriggers: [{ type: "token", value: "x" }] }, "grammarTriggers[0].token"],
            [{ grammar: g, grammarLazy: true, grammarTriggers: [{ type: "word", value: "" }] }, "grammarTriggers[0].value"],
            [{ grammar: g, grammarLazy: true, grammarTriggers: [{ type: "word", value: "x".repeat(LIMITS.maxGrammarTriggerBytes + 1) }] }, "grammarTriggers[0].value"],
            [{ grammar: g, grammarLazy: true, grammarTriggers: Array.from({ length: LIMITS.maxGrammarTriggers + 1 }, () => ({ type: "word" as const, value: "x" })) }, "grammarTriggers"],
            [{ grammar: g, grammarPrefill: "b" }, "grammarPrefill"],
            [{ grammar: g, grammarPrefill: "x".repeat(LIMITS.maxSamplerPrefillBytes + 1) }, "grammarPrefill"],
            [{ reasoningBudget: { tokens: -1, startTag: "<think>", endTags: ["</think>"] } }, "reasoningBudget.tokens"],
            [{ reasoningBudget: { tokens: 2 ** 31, startTag: "<think>", endTags: ["</think>"] } }, "reasoningBudget.tokens"],
            [{ reasoningBudget: { tokens: 1.5, startTag: "<think>", endTags: ["</think>"] } }, "reasoningBudget.tokens"],
            [{ reasoningBudget: { tokens: 1, startTag: "", endTags: ["</think>"] } }, "reasoningBudget.startTag"],
            [{ reasoningBudget: { tokens: 1, startTag: "<think>", endTags: [] } }, "reasoningBudget.endTags"],
            [{ reasoningBudget: { tokens: 1, startTag: "<think>", endTags: [""] } }, "reasoningBudget.endTags[0]"],
            [{ reasoningBudget: { tokens: 1, startTag: "<think>", endTags: Array(LIMITS.maxReasoningEndTags + 1).fill("</think>") } }, "reasoningBudget.endTags"],
            [{ reasoningBudget: { tokens: 1, startTag: "x".repeat(LIMITS.maxReasoningTagBytes + 1), endTags: ["</think>"] } }, "reasoningBudget.startTag"],
            [{ reasoningBudget: "yes" as never }, "reasoningBudget"],
        ];
        for (const [params, field] of bad) {
            const want = field === "grammarTriggers[0].token" && params.grammarTriggers?.[0].token === -1 ? ErrorCode.TokenRange : ErrorCode.SamplerInvalid;
            assert.throws(() => ctx.setSampler(0, params), code(want, field), JSON.stringify(params).slice(0, 200));
        }
        assert.throws(() => model.checkGrammar(g, "root", { lazy: true, triggers: [{ type: "pattern", value: "(" }] }), code(ErrorCode.SamplerInvalid, "grammarTriggers[0].value"));
        assert.throws(() => model.checkGrammar(g, "root", { lazy: true }), code(ErrorCode.SamplerInvalid, "grammarTriggers"));
        // at the limits: taken
        ctx.setSampler(0, { grammar: g, grammarLazy: true, grammarTriggers: Array.from({ length: LIMITS.maxGrammarTriggers }, () => ({ type: "word" as const, value: "x".repeat(LIMITS.maxGrammarTriggerBytes) })) });
        ctx.setSampler(0, { grammar: 'root ::= "ab"', grammarPrefill: "a" });
        ctx.setSampler(0, { reasoningBudget: { tokens: 2 ** 31 - 1, startTag: "<think>", endTags: Array(LIMITS.maxReasoningEndTags).fill("</think>") } });
        ctx.setSampler(0, null);
    });
});
