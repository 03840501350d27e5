// Chats: messages, tools and reasoning options through the model's chat template, and the model's text
// back to a message (content, reasoning, tool calls). Both are llama.cpp's common chat layer (the addon's
// ChatTemplates and ChatParser), so the prompt, the grammar that constrains a tool call and the parser
// that reads it come from one place and agree for every format llama.cpp knows (Qwen3-Coder XML, Hermes
// JSON, Llama 3.x, DeepSeek, Mistral, gpt-oss, ...). Every field is checked here, before the template.
import {
    BatchwiseError, ChatParser, ChatTemplates, ErrorCode, fieldError,
    type ChatApplyInputs, type ChatApplyResult, type ChatMessageDelta, type ChatParserSpec, type LlamaModel, type SamplerParams,
} from "../binding/index.js";
import type { ResponseFormat } from "./request.js";

/** A chat message, in OpenAI's shape (the fields the template reads: role, content, tool_calls, tool_call_id, name, reasoning_content). */
export interface ChatMessage {
    role: string;
    content?: string | null | readonly { type: string; text?: string }[];
    /** An assistant's calls; arguments as a JSON string, as OpenAI sends them. */
    tool_calls?: readonly { id?: string; type?: "function"; function: { name: string; arguments: string } }[];
    /** A tool message: the call it answers. */
    tool_call_id?: string;
    name?: string;
    /** An assistant's thinking, for templates that render it. */
    reasoning_content?: string | null;
    [field: string]: unknown;
}

export interface ChatFormatOptions {
    /** A Jinja template, or the name of one of llama.cpp's built-in formats ("chatml", "llama3", ...). Default: the engine's. */
    template?: string;
    /** End with the assistant's turn opened (default true). */
    addGenerationPrompt?: boolean;
    /** Variables for the template (chat_template_kwargs), e.g. enable_thinking for templates that read it. */
    variables?: Record<string, unknown>;
}

/** A tool the model may call: a function with JSON-schema parameters. */
export interface ChatTool {
    type: "function";
    function: { name: string; description?: string; parameters?: Record<string, unknown>; strict?: boolean | null };
}

/** Whether the model may (auto), must (required, or this function) or must not (none) call a tool. */
export type ToolChoice = "auto" | "none" | "required" | { type: "function"; function: { name: string } };

/** The chat fields of a ChatRequest. */
export interface ChatOptions {
    /** A Jinja template, or a built-in template name ("chatml", "llama3", ...), instead of the engine's. */
    template?: string;
    /** Extra variables for the template (chat_template_kwargs: enable_thinking, reasoning_effort, ...). */
    templateVariables?: Record<string, unknown>;
    tools?: readonly ChatTool[];
    /** Default "auto" with tools. */
    toolChoice?: ToolChoice;
    /** Let the model call several tools in one turn. Default: what the template supports. */
    parallelToolCalls?: boolean;
    /** Think before answering, for templates that can switch it (Qwen3, DeepSeek V3.1, ...). Default true. */
    enableThinking?: boolean;
    /** "none" turns thinking off; other values reach templates that read reasoning_effort (gpt-oss). */
    reasoningEffort?: "none" | "minimal" | "low" | "medium" | "high";
    /** Most tokens of thinking: then the template's end-of-thinking tag is forced. */
    reasoningBudget?: number;
    /** Open the assistant's turn after the messages. Default true (false with continueFinalMessage). */
    addGenerationPrompt?: boolean;
    /** Continue the last message (an assistant's, left open) instead of starting a new turn. */
    continueFinalMessage?: boolean;
    /**
     * Read the message while it streams: each delta event carries the changes to it (`message`). Default true.
     * false reads the text once, when the choice ends (the result's message is the same, the delta events carry
     * none): for callers that only await the result. The reading is a parse of the whole text so far, so with
     * deltas a long output costs about its length squared (8,000 tokens of a tool call: about 0.8 s of the JS
     * thread), without them its length once.
     */
    messageDeltas?: boolean;
}

/** A parsed assistant message: what the model said, thought, and called. */
export interface AssistantMessage {
    role: "assistant";
    content: string;
    reasoningContent: string;
    toolCalls: { id: string; type: "function"; function: { name: string; arguments: string } }[];
}

/** One change to a choice's message while it streams: text, thinking, or a tool call (id and name first, then its arguments in fragments). */
export type MessageDelta = ChatMessageDelta;

/** A request's own constraint on a chat's output: a GBNF grammar or a JSON format. */
export interface ChatConstraint {
    grammar?: string;
    grammarRoot?: string;
    responseFormat?: ResponseFormat;
}

/** What a chat adds to its generate request: the sampler's grammar and budget, the template's stops, how the output is read. */
export interface ChatPlan {
    sampler: Pick<SamplerParams, "grammar" | "grammarRoot" | "grammarLazy" | "grammarTriggers" | "grammarPrefill" | "reasoningBudget">;
    stops: string[];
    /** Special tokens the parser must see as text (a call's start tag). */
    preservedTokens: string[];
    /** How each choice's text becomes a message (null: it is all content); `deltas`: read as it streams (ChatOptions.messageDeltas), else once at the end. */
    parser: { spec: ChatParserSpec; parseToolCalls: boolean; isContinuation: boolean; deltas: boolean } | null;
}

const REASONING_EFFORTS = ["none", "minimal", "low", "medium", "high"];
const TOOL_NAME = /^[A-Za-z0-9_.:-]{1,128}$/;
/** Tools in one request at most (agents send 10-50). */
export const MAX_TOOLS = 256;

const bad = (field: string, reason: string) => fieldError(ErrorCode.InvalidArgument, field, reason);
const isJinja = (t: string) => t.includes("{%") || t.includes("{{");
const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === "object" && !Array.isArray(v);

export class Chats {
    private readonly own: ChatTemplates | null;
    private readonly overrides = new Map<string, ChatTemplates>();
    private readonly ownError: unknown = null;

    /** `template`: the engine's template (a Jinja source or a built-in name) over the model's own. */
    constructor(private readonly model: LlamaModel, template: string | undefined) {
        let own: ChatTemplates | null = null;
        if (template !== undefined || model.metadata.chatTemplate) {
            try {
                own = ChatTemplates.create(model, template === undefined ? {} : { template });
            } catch (e) {
                if (template !== undefined) throw e; // the operator's own template: the load fails
                this.ownError = e; // the GGUF's: chats fail, completions still work
            }
        }
        this.own = own;
    }

    /** How the engine's template is rendered: Jinja (tools and reasoning), llama.cpp's built-in formats, or none. */
    get kind(): "jinja" | "builtin" | "none" {
        return this.own === null ? "none" : this.own.caps.jinja ? "jinja" : "builtin";
    }

    /** The engine's template source (null: none). */
    get source(): string | null {
        return this.own?.source ?? null;
    }

    dispose(): void {
        this.own?.dispose();
        for (const t of this.overrides.values()) t.dispose();
        this.overrides.clear();
    }

    private templates(source: string | undefined): ChatTemplates {
        if (source === undefined) {
            if (this.own) return this.own;
            if (this.ownError) throw this.ownError;
            throw new BatchwiseError(ErrorCode.ChatTemplate, "the model has no chat template: pass one (a Jinja template or a built-in name such as 'chatml')");
        }
        if (typeof source !== "string" || source.length === 0) throw bad("template", "must be a non-empty string");
        let t = this.overrides.get(source);
        if (!t) {
            t = ChatTemplates.create(this.model, { template: source });
            // requests may carry templates of their own: keep the most recent few (Map order is insertion order)
            if (this.overrides.size >= 16) {
                const [oldest, tmpl] = this.overrides.entries().next().value!;
                this.overrides.delete(oldest);
                tmpl.dispose();
            }
            this.overrides.set(source, t);
        } else {
            this.overrides.delete(source);
            this.overrides.set(source, t);
        }
        return t;
    }

    /** The prompt text of a chat (no tools): for Engine.formatChat. */
    format(messages: readonly ChatMessage[], options: ChatFormatOptions): string {
        return this.apply({ messages, template: options.template, templateVariables: options.variables, addGenerationPrompt: options.addGenerationPrompt }, undefined).result.prompt;
    }

    /**
     * A chat's prompt and plan. `constraint`: the request's own grammar or JSON format, which the template
     * combines with its own (a JSON answer after the thinking).
     */
    apply(request: ChatOptions & { messages: readonly ChatMessage[] }, constraint: ChatConstraint | undefined): { result: ChatApplyResult; plan: ChatPlan } {
        const templates = this.templates(request.template);
        const inputs = this.inputs(request, templates, constraint);
        let result: ChatApplyResult;
        try {
            result = templates.apply(inputs);
        } catch (e) {
            // the JSON format's schema is the request's responseFormat.schema (as a completion's error names it)
            if (e instanceof BatchwiseError && e.field === "jsonSchema" && e.reason !== undefined) {
                throw fieldError(e.code as ErrorCode, "responseFormat.schema", e.reason, e);
            }
            throw e;
        }
        const tools = inputs.tools !== undefined && inputs.tools.length > 0 && inputs.toolChoice !== "none";
        const sampler: ChatPlan["sampler"] = {};
        if (constraint?.grammar !== undefined) {
            // the request's own GBNF applies from the first token, as on a completion (the template does not place it)
            sampler.grammar = constraint.grammar;
            if (constraint.grammarRoot !== undefined) sampler.grammarRoot = constraint.grammarRoot;
        } else if (result.grammar !== undefined) {
            sampler.grammar = result.grammar;
            if (result.grammarLazy) {
                sampler.grammarLazy = true;
                sampler.grammarTriggers = result.grammarTriggers;
            } else if (result.generationPrompt.length > 0) {
                // a grammar the template made (tool calls, a JSON answer) begins with the generation prompt
                sampler.grammarPrefill = result.generationPrompt;
            }
        } else if (inputs.jsonSchema !== undefined) {
            throw new BatchwiseError(ErrorCode.ChatTemplate, "the chat template gave no grammar for the response format");
        }
        if (request.reasoningBudget !== undefined) {
            const budget = request.reasoningBudget;
            if (!Number.isInteger(budget) || budget < 0 || budget > 2 ** 31 - 1) throw bad("reasoningBudget", "must be an integer from 0 to 2147483647");
            // a template that does not think has nothing to cap: the budget changes nothing there (clients such as
            // Claude Code send one whatever the model), so it is taken and has no effect
            const thinks = result.thinking.supported && result.thinking.endTags.length > 0 && result.thinking.startTag.length > 0;
            if (thinks && inputs.enableThinking !== false) {
                sampler.reasoningBudget = {
                    tokens: budget, startTag: result.thinking.startTag, endTags: result.thinking.endTags, prefill: result.generationPrompt,
                };
            }
        }
        const thinking = result.thinking.supported && inputs.enableThinking !== false;
        const plain = !tools && !thinking && result.format === "Content-only";
        return {
            result,
            plan: {
                sampler, stops: result.additionalStops, preservedTokens: result.preservedTokens,
                parser: plain ? null : {
                    spec: result.parser, parseToolCalls: tools, isContinuation: inputs.continueFinalMessage === true, deltas: request.messageDeltas !== false,
                },
            },
        };
    }

    private inputs(request: ChatOptions & { messages: readonly ChatMessage[] }, templates: ChatTemplates,
        constraint: ChatConstraint | undefined): ChatApplyInputs {
        const { messages } = request;
        if (!Array.isArray(messages) || messages.length === 0) throw bad("messages", "must be a non-empty array of { role, content }");
        messages.forEach((m, i) => {
            if (!isObject(m)) throw bad(`messages[${i}]`, "must be an object");
            if (typeof m.role !== "string" || m.role.length === 0) throw bad(`messages[${i}].role`, "must be a non-empty string");
            const c = m.content;
            if (c !== undefined && c !== null && typeof c !== "string" && !Array.isArray(c)) throw bad(`messages[${i}].content`, "must be a string or an array of text parts");
            if (m.tool_calls !== undefined && m.tool_calls !== null) {
                if (m.role !== "assistant") throw bad(`messages[${i}].tool_calls`, "belong to assistant messages");
                if (!Array.isArray(m.tool_calls)) throw bad(`messages[${i}].tool_calls`, "must be an array");
                m.tool_calls.forEach((call, j) => {
                    const f = isObject(call) ? call.function : undefined;
                    if (!isObject(f) || typeof f.name !== "string" || f.name.length === 0) throw bad(`messages[${i}].tool_calls[${j}].function.name`, "must be a non-empty string");
                    if (typeof f.arguments !== "string") throw bad(`messages[${i}].tool_calls[${j}].function.arguments`, "must be a JSON string");
                    try {
                        JSON.parse(f.arguments);
                    } catch {
                        throw bad(`messages[${i}].tool_calls[${j}].function.arguments`, "is not valid JSON");
                    }
                });
            }
            if (m.tool_call_id !== undefined && m.tool_call_id !== null && typeof m.tool_call_id !== "string") throw bad(`messages[${i}].tool_call_id`, "must be a string");
        });
        const inputs: ChatApplyInputs = { messages: messages as unknown[] };
        const o = request as unknown as Record<string, unknown>;
        for (const k of ["parallelToolCalls", "enableThinking", "addGenerationPrompt", "continueFinalMessage", "messageDeltas"] as const) {
            if (o[k] !== undefined && o[k] !== null && typeof o[k] !== "boolean") throw bad(k, "must be a boolean");
        }
        const jinja = templates.caps.jinja;

        // tools and the choice between them
        let tools = request.tools;
        let choice: "auto" | "none" | "required" = "auto";
        if (tools !== undefined && tools !== null) {
            if (!Array.isArray(tools)) throw bad("tools", "must be an array of { type: 'function', function: { name, parameters } }");
            if (tools.length > MAX_TOOLS) throw bad("tools", `holds ${tools.length} tools, at most ${MAX_TOOLS} are allowed`);
            const names = new Set<string>();
            tools.forEach((t, i) => {
                if (!isObject(t) || t.type !== "function") throw bad(`tools[${i}].type`, "must be 'function' (the only tool type served)");
                const f = t.function;
                if (!isObject(f)) throw bad(`tools[${i}].function`, "must be { name, description?, parameters? }");
                if (typeof f.name !== "string" || !TOOL_NAME.test(f.name)) throw bad(`tools[${i}].function.name`, "must be 1-128 letters, digits, '_', '-', '.' or ':'");
                if (names.has(f.name)) throw bad(`tools[${i}].function.name`, `'${f.name}' names two tools`);
                names.add(f.name);
                if (f.description !== undefined && f.description !== null && typeof f.description !== "string") throw bad(`tools[${i}].function.description`, "must be a string");
                if (f.parameters !== undefined && f.parameters !== null && !isObject(f.parameters)) throw bad(`tools[${i}].function.parameters`, "must be a JSON schema object");
            });
        }
        const tc = request.toolChoice;
        if (tc !== undefined && tc !== null) {
            if (tc === "auto" || tc === "none" || tc === "required") choice = tc;
            else if (isObject(tc) && tc.type === "function" && isObject(tc.function) && typeof tc.function.name === "string") {
                const name = tc.function.name;
                const named = (tools ?? []).filter((t) => t.function.name === name);
                if (named.length === 0) throw bad("toolChoice.function.name", `'${name}' is not one of the tools`);
                tools = named; // the one function, required
                choice = "required";
            } else {
                throw bad("toolChoice", "must be 'auto', 'none', 'required' or { type: 'function', function: { name } }");
            }
        }
        const hasTools = tools !== undefined && tools !== null && tools.length > 0;
        if (!hasTools && choice === "required") throw bad("toolChoice", "'required' needs tools");
        if (hasTools && !jinja) throw bad("tools", "need a Jinja chat template; this one is one of llama.cpp's built-in formats, which have no tools");
        if (hasTools) {
            inputs.tools = tools as unknown[];
            inputs.toolChoice = choice;
            if (request.parallelToolCalls !== undefined && request.parallelToolCalls !== null) {
                inputs.parallelToolCalls = isObject(request.toolChoice) ? false : request.parallelToolCalls;
            } else if (isObject(request.toolChoice)) {
                inputs.parallelToolCalls = false;
            }
            if (choice !== "none" && (constraint?.grammar !== undefined || (constraint?.responseFormat && constraint.responseFormat.type !== "text"))) {
                throw bad(constraint.grammar !== undefined ? "grammar" : "responseFormat", "cannot be combined with tools: the tool calls have a grammar of their own");
            }
        }

        // what the template is given as variables, and thinking
        const vars: Record<string, unknown> = {};
        const tv = request.templateVariables;
        if (tv !== undefined && tv !== null) {
            if (!isObject(tv)) throw bad("templateVariables", "must be an object");
            Object.assign(vars, tv);
        }
        let enableThinking = request.enableThinking ?? undefined;
        if ("enable_thinking" in vars) {
            if (typeof vars.enable_thinking !== "boolean") throw bad("templateVariables.enable_thinking", "must be a boolean");
            enableThinking ??= vars.enable_thinking;
        }
        const effort = request.reasoningEffort;
        if (effort !== undefined && effort !== null) {
            if (typeof effort !== "string" || !REASONING_EFFORTS.includes(effort)) throw bad("reasoningEffort", `must be one of ${REASONING_EFFORTS.join(", ")}`);
            if (effort === "none") {
                enableThinking = false;
            } else {
                // templates that read it get it; for one that neither thinks nor reads it there is nothing to set (agents
                // such as Codex send an effort whatever the model): it is taken and changes nothing
                if (templates.source.includes("reasoning_effort")) vars.reasoning_effort = effort;
            }
        }
        if (Object.keys(vars).length > 0) {
            if (!jinja) throw bad("templateVariables", "need a Jinja chat template; this one is one of llama.cpp's built-in formats");
            inputs.chatTemplateKwargs = vars;
        }
        if (enableThinking !== undefined) inputs.enableThinking = enableThinking;

        // where the assistant's turn starts
        if (request.continueFinalMessage === true) {
            if (request.addGenerationPrompt === true) throw bad("continueFinalMessage", "cannot be combined with addGenerationPrompt: true (the last message is continued, no new turn is opened)");
            const last = messages[messages.length - 1];
            if (last.role !== "assistant") throw bad("continueFinalMessage", "needs the last message to be the assistant's");
            inputs.continueFinalMessage = true;
            inputs.addGenerationPrompt = false;
        } else if (request.addGenerationPrompt !== undefined && request.addGenerationPrompt !== null) {
            inputs.addGenerationPrompt = request.addGenerationPrompt;
        }

        // a JSON response format: the template places its grammar (after any thinking)
        const f = constraint?.responseFormat;
        if (f && f.type === "json_object") inputs.jsonSchema = { type: "object" };
        else if (f && f.type === "json_schema") inputs.jsonSchema = f.schema;
        return inputs;
    }
}

/**
 * Reads one choice's text as a message: while it streams, the deltas of each piece (each a parse of all the text so
 * far), or, without deltas (plan.deltas false), one parse of the whole text when it ends; then the whole message.
 *
 * Streaming, a parse costs more as the text grows (about 0.1 ms at 30,000 characters on a 2-core machine), so once
 * parses take over PARSE_COSTLY_MS (a moving average) the next waits until PARSE_SPACING times that has passed (at
 * most MAX_WAIT_MS): the pieces that came meanwhile are read together, and a stream's parsing stays near 0.2% of the
 * JS thread however long its output (64 such streams, about 13%). A short output, and the last piece of any, is read
 * at once. `node scripts/bench-chat-parse.mjs`: 30,000 characters in 7,500 pieces 16 ms apart, 214 ms of parsing
 * against 786 ms piece by piece, no piece waiting more than 144 ms.
 */
export class MessageReader {
    static readonly PARSE_COSTLY_MS = 0.05;
    static readonly PARSE_SPACING = 500;
    static readonly MAX_WAIT_MS = 250;

    private readonly parser: ChatParser;
    private readonly deltas: boolean;
    private pending = "";
    private lastParseMs = 0;
    private lastParseEnd = -Infinity;

    constructor(plan: NonNullable<ChatPlan["parser"]>, private readonly clock: () => number = () => performance.now()) {
        this.parser = ChatParser.create(plan.spec, { parseToolCalls: plan.parseToolCalls, isContinuation: plan.isContinuation });
        this.deltas = plan.deltas;
    }

    /** The changes `text` (the choice's next output) makes; `final` when it is the last. */
    update(text: string, final: boolean): MessageDelta[] {
        this.pending += text;
        if (!final) {
            if (!this.deltas) return [];
            const wait = this.lastParseMs < MessageReader.PARSE_COSTLY_MS ? 0 :
                Math.min(MessageReader.MAX_WAIT_MS, MessageReader.PARSE_SPACING * this.lastParseMs);
            if (this.clock() - this.lastParseEnd < wait) return [];
        }
        const t0 = this.clock();
        const out = this.parser.update(this.pending, !final); // on a throw the text stays unread (unread())
        this.pending = "";
        this.lastParseEnd = this.clock();
        // smoothed: one slow parse (a garbage collection) does not hold the next pieces back
        this.lastParseMs = this.lastParseMs === 0 ? this.lastParseEnd - t0 : 0.8 * this.lastParseMs + 0.2 * (this.lastParseEnd - t0);
        return out;
    }

    /** The text given to update() and not yet parsed (held back between costly parses, or the piece a parse failed on). */
    unread(): string {
        return this.pending;
    }

    message(): AssistantMessage {
        const m = this.parser.message;
        return {
            role: "assistant", content: m.content, reasoningContent: m.reasoningContent,
            toolCalls: m.toolCalls.map((c) => ({ id: c.id, type: "function" as const, function: { name: c.name, arguments: c.arguments } })),
        };
    }
}

/** The message of a choice that was not parsed: all of its text is content. */
export function plainMessage(text: string): AssistantMessage {
    return { role: "assistant", content: text, reasoningContent: "", toolCalls: [] };
}

/** True when a template source is Jinja (not a built-in name). */
export { isJinja };
