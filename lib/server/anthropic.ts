// Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens) over the engine's chat path: a
// Messages body to the engine's chat request (system, content blocks, tool_use and tool_result, tools with
// input_schema, tool_choice, thinking), and the engine's answer back as Anthropic's message (content blocks:
// thinking, text, tool_use with parsed input; stop_reason; usage) and as its stream's events.
import type { AssistantMessage, ChatMessage, ChatRequest, ChatTool, Choice, GenerateResult, MessageDelta, ToolChoice } from "../index.js";
import { requestLimits } from "../engine/limits.js";
import { badRequest, leadingIndex, type FieldContext, type FieldRule, type RouteApi } from "./errors.js";

// ---- the request -------------------------------------------------------------------------------------

type Block = { type: string; [k: string]: unknown };

export interface MessagesBody {
    model: string;
    max_tokens?: number;
    messages: { role: string; content: string | Block[] }[];
    system?: string | Block[];
    stop_sequences?: string[];
    temperature?: number;
    top_p?: number;
    top_k?: number;
    stream?: boolean;
    metadata?: Record<string, unknown>;
    tools?: { name: string; type?: string | null; description?: string; input_schema?: Record<string, unknown>; strict?: boolean; [k: string]: unknown }[];
    tool_choice?: { type: "auto" | "any" | "tool" | "none"; name?: string; disable_parallel_tool_use?: boolean };
    thinking?: { type: "enabled" | "disabled" | "adaptive"; budget_tokens?: number; display?: "summarized" | "omitted" | null };
    output_config?: { effort?: string | null; format?: { type: "json_schema"; schema: Record<string, unknown> } | null };
    /** Extensions, as on the other routes. */
    priority?: number;
    cache_salt?: string;
    [k: string]: unknown;
}

/**
 * The fields of Anthropic's API that would change the output and that batchwise cannot honour: each is a
 * 400 naming it. (Hints that change nothing are accepted: metadata, service_tier, speed, inference_geo,
 * cache_control, diagnostics.)
 */
const REFUSED: Record<string, string> = {
    container: "is not supported: batchwise runs no code-execution containers",
    mcp_servers: "is not supported: batchwise connects to no MCP servers (run them in the client and pass their tools)",
    context_management: "is not supported: batchwise edits no context (the client keeps its own)",
};

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** The text of text blocks (a system prompt, a tool result), joined by blank lines; `at` names the field for a block that is not text. */
function textOf(blocks: readonly Block[], at: string): string {
    return blocks.map((b, j) => {
        if (b.type !== "text" || typeof b.text !== "string") throw badRequest(`'${at}[${j}]' is a '${b.type}' block; only text blocks are supported here`, `${at}[${j}].type`);
        return b.text;
    }).join("\n\n");
}

/** The chat messages of a Messages body, each with the request field it came from (for naming fields in errors). */
export function chatMessages(b: Pick<MessagesBody, "system" | "messages">): { messages: ChatMessage[]; origins: string[] } {
    const messages: ChatMessage[] = [];
    const origins: string[] = [];
    const push = (m: ChatMessage, origin: string) => {
        messages.push(m);
        origins.push(origin);
    };
    if (b.system !== undefined && b.system !== null) {
        const text = typeof b.system === "string" ? b.system : textOf(b.system, "system");
        if (text.length > 0) push({ role: "system", content: text }, "system");
    }
    const toolNames = new Map<string, string>(); // tool_use id -> name, for the tool messages that answer it
    b.messages.forEach((m, i) => {
        const at = `messages[${i}]`;
        if (m.role === "system") {
            // a system message in the list (the newer SDKs' SystemMessageParam)
            push({ role: "system", content: typeof m.content === "string" ? m.content : textOf(m.content, `${at}.content`) }, at);
            return;
        }
        if (typeof m.content === "string") {
            push({ role: m.role, content: m.content }, at);
            return;
        }
        if (m.role === "assistant") {
            let text = "", thinking = "";
            let hasText = false;
            const calls: NonNullable<ChatMessage["tool_calls"]>[number][] = [];
            m.content.forEach((blk, j) => {
                const f = `${at}.content[${j}]`;
                switch (blk.type) {
                    case "text":
                        if (typeof blk.text !== "string") throw badRequest(`'${f}.text' must be a string`, `${f}.text`);
                        text += (hasText ? "\n\n" : "") + blk.text;
                        hasText = true;
                        break;
                    case "thinking":
                        if (typeof blk.thinking !== "string") throw badRequest(`'${f}.thinking' must be a string`, `${f}.thinking`);
                        thinking += blk.thinking;
                        break;
                    case "redacted_thinking":
                        break; // opaque to any model but the one that wrote it
                    case "tool_use": {
                        if (typeof blk.id !== "string" || blk.id.length === 0) throw badRequest(`'${f}.id' must be a non-empty string`, `${f}.id`);
                        if (typeof blk.name !== "string" || blk.name.length === 0) throw badRequest(`'${f}.name' must be a non-empty string`, `${f}.name`);
                        if (!isObject(blk.input)) throw badRequest(`'${f}.input' must be an object`, `${f}.input`);
                        toolNames.set(blk.id, blk.name);
                        calls.push({ id: blk.id, type: "function", function: { name: blk.name, arguments: JSON.stringify(blk.input) } });
                        break;
                    }
                    default:
                        throw badRequest(`'${f}' is a '${blk.type}' block; an assistant message takes text, thinking and tool_use blocks`, `${f}.type`);
                }
            });
            const out: ChatMessage = { role: "assistant", content: hasText || calls.length === 0 ? text : null };
            if (thinking.length > 0) out.reasoning_content = thinking;
            if (calls.length > 0) out.tool_calls = calls;
            push(out, at);
            return;
        }
        // a user's turn: its text blocks are a user message; each tool_result a tool message, in the blocks' order
        let text: string[] = [];
        let textFrom = -1;
        const flush = () => {
            if (text.length > 0) push({ role: m.role, content: text.join("\n\n") }, `${at}.content[${textFrom}]`);
            text = [];
            textFrom = -1;
        };
        m.content.forEach((blk, j) => {
            const f = `${at}.content[${j}]`;
            if (blk.type === "text") {
                if (typeof blk.text !== "string") throw badRequest(`'${f}.text' must be a string`, `${f}.text`);
                if (textFrom < 0) textFrom = j;
                text.push(blk.text);
            } else if (blk.type === "tool_result") {
                flush();
                if (typeof blk.tool_use_id !== "string" || blk.tool_use_id.length === 0) throw badRequest(`'${f}.tool_use_id' must be a non-empty string`, `${f}.tool_use_id`);
                const c = blk.content;
                let content: string;
                if (c === undefined || c === null) content = "";
                else if (typeof c === "string") content = c;
                else if (Array.isArray(c)) content = textOf(c as Block[], `${f}.content`);
                else throw badRequest(`'${f}.content' must be a string or an array of text blocks`, `${f}.content`);
                // chat templates have no error flag for a tool's answer: it is said in the text
                if (blk.is_error === true) content = `Error: ${content}`;
                const tm: ChatMessage = { role: "tool", tool_call_id: blk.tool_use_id, content };
                const name = toolNames.get(blk.tool_use_id);
                if (name !== undefined) tm.name = name;
                push(tm, f);
            } else if (blk.type === "image" || blk.type === "document") {
                throw badRequest(`'${f}' is an '${blk.type}' block: batchwise serves text models`, `${f}.type`);
            } else {
                throw badRequest(`'${f}' is a '${blk.type}' block; a user message takes text and tool_result blocks`, `${f}.type`);
            }
        });
        flush();
    });
    return { messages, origins };
}

/**
 * The engine's chat request for a Messages body (`count`: for count_tokens, which has no sampling fields).
 * Every field that would change the output is honoured or refused with a 400 naming it.
 */
export function messagesRequest(b: MessagesBody, count = false): ChatRequest {
    for (const [field, why] of Object.entries(REFUSED)) {
        if (b[field] !== undefined && b[field] !== null) throw badRequest(`'${field}' ${why}`, field);
    }
    const { messages } = chatMessages(b);
    const r: ChatRequest = { messages };
    // a last assistant turn is a prefill, as Anthropic reads it: the answer continues it (and holds only what follows)
    if (b.messages.length > 0 && b.messages[b.messages.length - 1].role === "assistant" && messages.at(-1)?.role === "assistant") r.continueFinalMessage = true;
    if (!count) {
        if (b.max_tokens === undefined) throw badRequest("'max_tokens' is required", "max_tokens"); // as Anthropic requires it
        r.maxTokens = b.max_tokens;
        r.temperature = b.temperature ?? 1; // Anthropic's default
        if (b.top_p !== undefined) r.topP = b.top_p;
        if (b.top_k !== undefined) r.topK = b.top_k;
        if (b.stop_sequences !== undefined && b.stop_sequences.length > 0) r.stop = [...b.stop_sequences];
        if (b.priority !== undefined) r.priority = b.priority;
        if (b.cache_salt !== undefined) r.cacheSalt = b.cache_salt;
    }

    // tools: client tools only (a tool with a type other than "custom" is one of Anthropic's server tools)
    if (b.tools !== undefined) {
        r.tools = b.tools.map((t, i): ChatTool => {
            if (t.type !== undefined && t.type !== null && t.type !== "custom") {
                throw badRequest(`'tools[${i}].type' is '${t.type}': only client tools ({ name, description, input_schema }) are served; Anthropic's server tools are not`, `tools[${i}].type`);
            }
            if (!isObject(t.input_schema)) throw badRequest(`'tools[${i}].input_schema' is required: a JSON schema object`, `tools[${i}].input_schema`);
            const fn: ChatTool["function"] = { name: t.name, parameters: t.input_schema };
            if (t.description !== undefined) fn.description = t.description;
            if (t.strict !== undefined) fn.strict = t.strict;
            return { type: "function", function: fn };
        });
    }
    const tc = b.tool_choice;
    if (tc !== undefined) {
        let choice: ToolChoice;
        switch (tc.type) {
            case "auto": choice = "auto"; break;
            case "any": choice = "required"; break;
            case "none": choice = "none"; break;
            case "tool":
                if (typeof tc.name !== "string" || tc.name.length === 0) throw badRequest("'tool_choice.name' is required with type 'tool'", "tool_choice.name");
                choice = { type: "function", function: { name: tc.name } };
                break;
        }
        r.toolChoice = choice;
        if (tc.disable_parallel_tool_use === true) r.parallelToolCalls = false;
    }

    // thinking
    const th = b.thinking;
    if (th !== undefined) {
        if (th.type === "disabled") {
            r.enableThinking = false;
        } else {
            r.enableThinking = true;
            if (th.type === "enabled") {
                if (th.budget_tokens === undefined) throw badRequest("'thinking.budget_tokens' is required with type 'enabled'", "thinking.budget_tokens");
                if (!count && b.max_tokens !== undefined && th.budget_tokens >= b.max_tokens) {
                    throw badRequest(`'thinking.budget_tokens' must be less than 'max_tokens' (${th.budget_tokens} >= ${b.max_tokens})`, "thinking.budget_tokens");
                }
                r.reasoningBudget = th.budget_tokens;
            }
        }
    }

    // output_config: the effort (for templates that read one) and a JSON answer
    const oc = b.output_config;
    if (oc !== undefined) {
        if (oc.effort !== undefined && oc.effort !== null) {
            if (oc.effort !== "low" && oc.effort !== "medium" && oc.effort !== "high") {
                throw badRequest(`'output_config.effort' '${oc.effort}' is not supported: batchwise passes low, medium or high to templates that read a reasoning effort`, "output_config.effort");
            }
            r.reasoningEffort = oc.effort;
        }
        if (oc.format !== undefined && oc.format !== null) r.responseFormat = { type: "json_schema", schema: oc.format.schema };
    }
    return r;
}

// ---- the response ------------------------------------------------------------------------------------

export type ContentBlock =
    | { type: "thinking"; thinking: string; signature: string }
    | { type: "text"; text: string }
    | { type: "tool_use"; id: string; name: string; input: unknown };

/** A tool call's id as Anthropic writes one: the call's own, or one made from the request's id. */
export const toolUseId = (id: string | undefined, requestId: string, index: number) => (id !== undefined && id.length > 0 ? id : `toolu_${requestId}_${index}`);

/** A call's arguments as the tool_use block's input: the JSON object they are (an unfinished call, cut by max_tokens, is {}). */
function toolInput(args: string): unknown {
    try {
        const v: unknown = JSON.parse(args);
        return isObject(v) ? v : {};
    } catch {
        return {};
    }
}

/** A message's content blocks: its thinking, its text, then each tool call; `omitThinking`: thinking.display "omitted". */
export function contentBlocks(m: AssistantMessage | undefined, text: string, requestId: string, omitThinking: boolean): ContentBlock[] {
    const out: ContentBlock[] = [];
    const content = m ? m.content : text;
    if (m && m.reasoningContent.length > 0) out.push({ type: "thinking", thinking: omitThinking ? "" : m.reasoningContent, signature: "" });
    if (content.length > 0) out.push({ type: "text", text: content });
    (m?.toolCalls ?? []).forEach((c, i) => out.push({ type: "tool_use", id: toolUseId(c.id, requestId, i), name: c.function.name, input: toolInput(c.function.arguments) }));
    return out;
}

export type StopReason = "end_turn" | "max_tokens" | "stop_sequence" | "tool_use";

/** Why the turn ended, as Anthropic says it, and the request's stop sequence that ended it (the engine reports which). */
export function stopReason(c: Choice): { stop_reason: StopReason; stop_sequence: string | null } {
    // an answer cut short (by max_tokens, or by a drain that ran out of time) must not read as a finished turn:
    // Anthropic has no "incomplete", and max_tokens is what a client already handles as "cut off"
    if (c.finishReason === "length" || c.finishReason === "abort") return { stop_reason: "max_tokens", stop_sequence: null };
    if (c.message !== undefined && c.message.toolCalls.length > 0) return { stop_reason: "tool_use", stop_sequence: null };
    if (c.finishReason === "stop" && c.stopString !== undefined) return { stop_reason: "stop_sequence", stop_sequence: c.stopString };
    return { stop_reason: "end_turn", stop_sequence: null };
}

/** Anthropic's usage: input_tokens are the prompt tokens not read from the cache (Anthropic's sum is input + cache read + cache creation). */
export function anthropicUsage(r: GenerateResult) {
    return {
        input_tokens: r.usage.promptTokens - r.usage.cachedTokens,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: r.usage.cachedTokens,
        output_tokens: r.usage.completionTokens,
    };
}

/**
 * A streamed message's content blocks as Anthropic's events: a block starts when the kind of what comes
 * changes (thinking, text, each tool call), deltas fill it, and it stops before the next starts.
 */
export class BlockStream {
    private index = -1;
    private open: "thinking" | "text" | "tool_use" | null = null;
    private calls = 0;

    constructor(private readonly send: (event: string, data: unknown) => void, private readonly requestId: string, private readonly omitThinking: boolean) {}

    private start(kind: "thinking" | "text" | "tool_use", block: ContentBlock): void {
        this.stop();
        this.index++;
        this.open = kind;
        this.send("content_block_start", { type: "content_block_start", index: this.index, content_block: block });
    }

    private delta(delta: Record<string, unknown>): void {
        this.send("content_block_delta", { type: "content_block_delta", index: this.index, delta });
    }

    /** Stops the open block, if any. */
    stop(): void {
        if (this.open === null) return;
        this.send("content_block_stop", { type: "content_block_stop", index: this.index });
        this.open = null;
    }

    push(changes: readonly MessageDelta[]): void {
        for (const d of changes) {
            if (d.reasoningContent) {
                if (this.open !== "thinking") this.start("thinking", { type: "thinking", thinking: "", signature: "" });
                if (!this.omitThinking) this.delta({ type: "thinking_delta", thinking: d.reasoningContent });
            }
            if (d.content) {
                if (this.open !== "text") this.start("text", { type: "text", text: "" });
                this.delta({ type: "text_delta", text: d.content });
            }
            const tc = d.toolCall;
            if (!tc) continue;
            if (tc.id !== undefined || tc.name !== undefined) {
                this.start("tool_use", { type: "tool_use", id: toolUseId(tc.id, this.requestId, this.calls++), name: tc.name ?? "", input: {} });
            }
            if (tc.arguments && this.open === "tool_use") this.delta({ type: "input_json_delta", partial_json: tc.arguments });
        }
    }
}

// ---- field names -------------------------------------------------------------------------------------

/** An engine message path ("messages[3].tool_calls[0]...") as the request field that message came from. */
const messageField: FieldRule = (rest: string, at: FieldContext) => {
    const i = leadingIndex(rest);
    const b = at.body as MessagesBody | undefined;
    if (!i || !b || !Array.isArray(b.messages)) return "messages" + (i ? "" : rest);
    try {
        return chatMessages(b).origins[i.index] ?? "messages";
    } catch {
        return "messages";
    }
};

/** /v1/messages and /v1/messages/count_tokens: the engine's fields in Anthropic's names; errors in Anthropic's shape. */
export const messagesApi: RouteApi = {
    promptField: "messages",
    errorShape: "anthropic",
    fields: {
        maxTokens: "max_tokens", topK: "top_k", topP: "top_p", stop: "stop_sequences", cacheSalt: "cache_salt",
        messages: messageField,
        prompt: () => "messages",
        continueFinalMessage: (_rest, at) => `messages[${Math.max(0, ((at.body as MessagesBody | undefined)?.messages?.length ?? 1) - 1)}]`,
        tools: (rest) => "tools" + rest.replace(/^(\[\d+\])\.function\.parameters/, "$1.input_schema").replace(/^(\[\d+\])\.function/, "$1").replace(/^(\[\d+\])\.type/, "$1.type"),
        toolChoice: (rest) => "tool_choice" + rest.replace(/^\.function\.name/, ".name").replace(/^\.function/, ""),
        parallelToolCalls: "tool_choice.disable_parallel_tool_use",
        enableThinking: "thinking.type",
        reasoningBudget: "thinking.budget_tokens",
        reasoningEffort: "output_config.effort",
        responseFormat: "output_config.format",
        "responseFormat.schema": "output_config.format.schema",
        schema: "output_config.format.schema",
        grammar: "output_config.format",
    },
};

// ---- the body schemas ----------------------------------------------------------------------------------

let schemas: { messagesBody: object; countTokensBody: object } | undefined;

/** The JSON schemas of the two bodies (fastify checks them before a handler runs); content blocks are checked in chatMessages. */
export function messagesSchemas(): { messagesBody: object; countTokensBody: object } {
    if (schemas) return schemas;
    const limits = requestLimits();
    const block = { type: "object", required: ["type"], properties: { type: { type: "string" } } };
    const textBlock = { type: "object", required: ["type", "text"], properties: { type: { enum: ["text"] }, text: { type: "string" } } };
    const content = { anyOf: [{ type: "string" }, { type: "array", items: block }], description: "a string or an array of content blocks" };
    const common = {
        model: { type: "string", minLength: 1 },
        system: { anyOf: [{ type: "string" }, { type: "array", items: textBlock }], description: "a string or an array of text blocks" },
        messages: {
            type: "array", minItems: 1,
            items: { type: "object", required: ["role", "content"], properties: { role: { enum: ["user", "assistant", "system"] }, content } },
        },
        tools: {
            type: "array", maxItems: 256,
            items: {
                type: "object", required: ["name"],
                properties: {
                    name: { type: "string", pattern: "^[A-Za-z0-9_.:-]{1,128}$", description: "1-128 letters, digits, '_', '-', '.' or ':'" },
                    type: { anyOf: [{ type: "string" }, { type: "null" }] },
                    description: { type: "string" },
                    input_schema: { type: "object" },
                    strict: { type: "boolean" },
                },
            },
        },
        tool_choice: {
            type: "object", required: ["type"],
            properties: { type: { enum: ["auto", "any", "tool", "none"] }, name: { type: "string" }, disable_parallel_tool_use: { type: "boolean" } },
        },
        thinking: {
            type: "object", required: ["type"],
            properties: {
                type: { enum: ["enabled", "disabled", "adaptive"] },
                budget_tokens: { type: "integer", minimum: 0, maximum: 2 ** 31 - 1 },
                display: { anyOf: [{ enum: ["summarized", "omitted"] }, { type: "null" }] },
            },
        },
        output_config: {
            type: "object",
            properties: {
                effort: { anyOf: [{ type: "string" }, { type: "null" }] },
                format: {
                    anyOf: [{ type: "object", required: ["type", "schema"], properties: { type: { enum: ["json_schema"] }, schema: { type: "object" } } }, { type: "null" }],
                },
            },
        },
    };
    const messagesBody = {
        type: "object",
        required: ["model", "messages", "max_tokens"],
        properties: {
            ...common,
            max_tokens: { type: "integer", minimum: 1 },
            stop_sequences: { type: "array", maxItems: limits.maxStops, items: { type: "string", minLength: 1, maxLength: limits.maxStopLength } },
            temperature: { type: "number", minimum: 0, maximum: 1 },
            top_p: { type: "number", exclusiveMinimum: 0, maximum: 1 },
            top_k: { type: "integer", minimum: 0, maximum: 2 ** 31 - 1 },
            stream: { type: "boolean" },
            metadata: { type: "object", properties: { user_id: { anyOf: [{ type: "string" }, { type: "null" }] } } },
            priority: { type: "integer", minimum: -(2 ** 31), maximum: 2 ** 31 },
            cache_salt: { type: "string", maxLength: limits.maxCacheSalt },
        },
    };
    const countTokensBody = { type: "object", required: ["model", "messages"], properties: common };
    schemas = { messagesBody, countTokensBody };
    return schemas;
}
