// OpenAI's Responses API (POST /v1/responses) over the engine's chat path: a request's input items become
// chat messages (the model's template, tools, reasoning and grammar do the rest, as on /v1/chat/completions),
// and the assistant's message comes back as output items: a reasoning item for its thinking, a message
// item for its text, a function_call item per tool call. Stateless: nothing is stored, so
// previous_response_id and store: true are refused with a 400 that says so.
import { randomBytes } from "node:crypto";
import type { AssistantMessage, ChatMessage, ChatRequest, ChatTool, Engine, FinishReason, GenerateResult, MessageDelta, ToolChoice } from "../index.js";
import { ApiError, badRequest, leadingIndex, type FieldContext, type FieldRule, type RouteApi } from "./errors.js";
import { orUndef, samplingOptions, type SamplingBody } from "./openai.js";
import { constraintField, constraintRule, outputOptions } from "./structured.js";

// ---- the request ------------------------------------------------------------------------------------

type Part = { type: string; text?: string; [k: string]: unknown };

/** One input item: a message (typed or not), a function call and its output, an earlier reasoning item. */
export interface InputItem {
    type?: string;
    role?: string;
    content?: string | Part[] | null;
    call_id?: string;
    name?: string;
    arguments?: string;
    output?: string | Part[];
    summary?: Part[];
    encrypted_content?: string | null;
    [k: string]: unknown;
}

export interface ResponsesTool {
    type: string;
    name?: string;
    description?: string | null;
    parameters?: Record<string, unknown> | null;
    strict?: boolean | null;
    [k: string]: unknown;
}

export type TextFormat = { type: "text" } | { type: "json_object" } | { type: "json_schema"; name?: string; schema: Record<string, unknown>; strict?: boolean | null; description?: string };

export interface ResponsesBody extends Omit<SamplingBody, "max_tokens" | "n" | "stream" | "stream_options" | "temperature" | "top_p" | "user"> {
    model?: string;
    input?: string | InputItem[];
    instructions?: string | null;
    tools?: ResponsesTool[] | null;
    tool_choice?: string | { type: string; name?: string; [k: string]: unknown } | null;
    parallel_tool_calls?: boolean | null;
    max_output_tokens?: number | null;
    temperature?: number | null;
    top_p?: number | null;
    text?: { format?: TextFormat | null; verbosity?: string | null } | null;
    reasoning?: { effort?: string | null; summary?: string | null; generate_summary?: string | null; mode?: string | null; [k: string]: unknown } | null;
    stream?: boolean | null;
    stream_options?: Record<string, unknown> | null;
    metadata?: Record<string, string> | null;
    user?: string | null;
    store?: boolean | null;
    previous_response_id?: string | null;
    include?: string[] | null;
    top_logprobs?: number | null;
    truncation?: string | null;
    background?: boolean | null;
    conversation?: unknown;
    prompt?: unknown;
    context_management?: unknown;
    moderation?: unknown;
    // the extensions the other routes take too (vLLM's and llama-server's names): top_k, min_p, seed, stop, the penalties,
    // logit_bias, priority, cache_salt, grammar, structured_outputs, ... (SamplingBody's, read by samplingOptions and outputOptions)
    n?: number | null;
    chat_template_kwargs?: Record<string, unknown> | null;
    reasoning_budget_tokens?: number | null;
}

const present = (v: unknown) => v !== undefined && v !== null;

/** The one include value served: reasoning items carry their text back to the client (see reasoningItem). */
const ENCRYPTED_REASONING = "reasoning.encrypted_content";

/** Fields of OpenAI's Responses API that would change the output and that a stateless batchwise cannot honour. */
function refuseResponsesFields(b: ResponsesBody): void {
    const refuse = (field: string, why: string) => {
        throw badRequest(`'${field}' ${why}`, field, "unsupported_parameter");
    };
    if (present(b.previous_response_id)) refuse("previous_response_id", "is not supported: batchwise stores no responses (the route is stateless); send the whole conversation in 'input'");
    if (b.store === true) refuse("store", "true is not supported: batchwise stores no responses; send store: false (or leave it out) and the whole conversation in 'input'");
    if (b.background === true) refuse("background", "true is not supported: responses are answered in the request (stream them with 'stream': true)");
    if (present(b.conversation)) refuse("conversation", "is not supported: batchwise stores no conversations; send the whole conversation in 'input'");
    if (present(b.prompt)) refuse("prompt", "is not supported: batchwise has no stored prompt templates; send 'instructions' and 'input'");
    if (b.truncation === "auto") refuse("truncation", "\"auto\" is not supported: an input too long for the context is refused, never truncated");
    if (Array.isArray(b.context_management) && b.context_management.length > 0) refuse("context_management", "is not supported: batchwise does no compaction");
    if (present(b.moderation)) refuse("moderation", "is not supported: batchwise runs no moderation");
    if (b.top_logprobs != null && b.top_logprobs > 0) refuse("top_logprobs", "is not supported on /v1/responses (logprobs are served on /v1/chat/completions)");
    for (const [i, v] of (b.include ?? []).entries()) {
        if (v !== ENCRYPTED_REASONING) refuse(`include[${i}]`, `'${v}' is not supported: the only include value served is '${ENCRYPTED_REASONING}'`);
    }
    const verbosity = b.text?.verbosity;
    if (present(verbosity) && verbosity !== "medium") refuse("text.verbosity", "other than \"medium\" is not supported: the model's answer length is its own");
    const mode = b.reasoning?.mode;
    if (present(mode) && mode !== "standard") refuse("reasoning.mode", "other than \"standard\" is not supported");
}

/** The text of a content list's text parts (input_text, output_text, text; summary_text and reasoning_text for reasoning). */
function partsText(parts: Part[], field: string, kinds: readonly string[]): string {
    return parts.map((p, j) => {
        if (!kinds.includes(p.type) || typeof p.text !== "string") {
            throw badRequest(`'${field}[${j}]' is a '${String(p.type)}' part; only ${kinds.join(", ")} parts are supported here`, `${field}[${j}]`);
        }
        return p.text;
    }).join("");
}

const MESSAGE_PARTS = ["input_text", "output_text", "text"] as const;

/** Where each chat message came from, for naming an engine error's field in the request's terms. */
interface MessageSource {
    /** The input item ("input[3]"), or "instructions", or "input" for a string input. */
    field: string;
    /** The function_call items that became this message's tool_calls, by position. */
    calls: number[];
}

/**
 * A Responses input as chat messages: instructions first (a system message), then the items in order.
 * An assistant message and the function_call items after it are one assistant turn (its content and
 * tool_calls); a function_call_output is a tool message; a reasoning item's text is the thinking
 * (reasoning_content) of the assistant turn after it, and is dropped when no assistant turn follows.
 */
export function inputMessages(b: ResponsesBody): { messages: ChatMessage[]; sources: MessageSource[] } {
    const messages: ChatMessage[] = [];
    const sources: MessageSource[] = [];
    const push = (m: ChatMessage, s: MessageSource) => {
        messages.push(m);
        sources.push(s);
    };
    if (present(b.instructions) && b.instructions !== "") push({ role: "system", content: b.instructions }, { field: "instructions", calls: [] });
    const input = b.input;
    if (input === undefined || input === null) throw badRequest("'input' is required", "input");
    if (typeof input === "string") {
        push({ role: "user", content: input }, { field: "input", calls: [] });
        return { messages, sources };
    }
    // the assistant turn being read: its thinking, text and calls come in separate items
    let turn: { m: ChatMessage & { tool_calls?: { id: string; type: "function"; function: { name: string; arguments: string } }[] }; s: MessageSource } | undefined;
    const close = () => {
        if (turn && (turn.m.content !== null || (turn.m.tool_calls?.length ?? 0) > 0)) push(turn.m, turn.s);
        turn = undefined;
    };
    const open = (field: string) => (turn ??= { m: { role: "assistant", content: null }, s: { field, calls: [] } });
    const callNames = new Map<string, string>();
    for (const [i, item] of input.entries()) {
        const at = `input[${i}]`;
        const type = item.type ?? (item.role !== undefined ? "message" : undefined);
        switch (type) {
            case "message": {
                const role = item.role;
                if (role !== "user" && role !== "assistant" && role !== "system" && role !== "developer") {
                    throw badRequest(`'${at}.role' must be user, assistant, system or developer`, `${at}.role`);
                }
                const c = item.content;
                const text = typeof c === "string" ? c : Array.isArray(c) ? partsText(c, `${at}.content`, role === "assistant" ? ["output_text", "text", "input_text"] : MESSAGE_PARTS) : null;
                if (text === null) throw badRequest(`'${at}.content' must be a string or a list of text parts`, `${at}.content`);
                if (role === "assistant") {
                    // its content joins the turn a reasoning item opened; otherwise it opens its own
                    if (turn && (turn.m.content !== null || (turn.m.tool_calls?.length ?? 0) > 0)) close();
                    const t = open(at);
                    t.m.content = text;
                    t.s.field = at;
                } else {
                    close();
                    // most templates know system, not developer: the developer's instructions are the system message
                    push({ role: role === "developer" ? "system" : role, content: text }, { field: at, calls: [] });
                }
                break;
            }
            case "function_call": {
                if (typeof item.call_id !== "string" || typeof item.name !== "string" || typeof item.arguments !== "string") {
                    throw badRequest(`'${at}' must have string 'call_id', 'name' and 'arguments'`, at);
                }
                const t = open(at);
                (t.m.tool_calls ??= []).push({ id: item.call_id, type: "function", function: { name: item.name, arguments: item.arguments } });
                t.s.calls.push(i);
                callNames.set(item.call_id, item.name);
                break;
            }
            case "function_call_output": {
                close();
                if (typeof item.call_id !== "string") throw badRequest(`'${at}.call_id' must be a string`, `${at}.call_id`);
                const out = item.output;
                const text = typeof out === "string" ? out : Array.isArray(out) ? partsText(out, `${at}.output`, ["input_text", "output_text", "text"]) : null;
                if (text === null) throw badRequest(`'${at}.output' must be a string or a list of text parts`, `${at}.output`);
                const name = callNames.get(item.call_id);
                push({ role: "tool", tool_call_id: item.call_id, content: text, ...(name !== undefined && { name }) }, { field: at, calls: [] });
                break;
            }
            case "reasoning": {
                close();
                const t = open(at);
                t.m.reasoning_content = reasoningText(item, at);
                break;
            }
            default:
                throw badRequest(`'${at}.type' ${type === undefined ? "is missing" : `'${type}' is not supported`}: the input items served are message, function_call, function_call_output and reasoning`, `${at}.type`);
        }
    }
    close();
    if (messages.length === 0) throw badRequest("'input' holds no message", "input");
    return { messages, sources };
}

/** An earlier reasoning item's text: its content, else its encrypted_content (which is batchwise's own, see reasoningItem), else its summary. */
function reasoningText(item: InputItem, at: string): string {
    if (Array.isArray(item.content) && item.content.length > 0) return partsText(item.content, `${at}.content`, ["reasoning_text"]);
    if (typeof item.encrypted_content === "string" && item.encrypted_content !== "") {
        const text = decodeReasoning(item.encrypted_content);
        if (text === undefined) throw badRequest(`'${at}.encrypted_content' is not one this server wrote (it holds the reasoning text of a batchwise response)`, `${at}.encrypted_content`);
        return text;
    }
    if (Array.isArray(item.summary)) return partsText(item.summary, `${at}.summary`, ["summary_text"]).trim();
    return "";
}

const REASONING_PREFIX = "bw1:";
/** A reasoning item's encrypted_content: its text, base64 (not encrypted: the text is in the item's content too). */
const encodeReasoning = (text: string) => REASONING_PREFIX + Buffer.from(text, "utf8").toString("base64");
function decodeReasoning(s: string): string | undefined {
    if (!s.startsWith(REASONING_PREFIX)) return undefined;
    return Buffer.from(s.slice(REASONING_PREFIX.length), "base64").toString("utf8");
}

/** A function tool in the chat shape; any other tool type is a 400 naming it. */
function chatTool(t: ResponsesTool, i: number): ChatTool {
    if (t.type !== "function") {
        throw badRequest(`'tools[${i}].type' '${String(t.type)}' is not supported: batchwise serves function tools only (no hosted tools such as web_search, file_search, code_interpreter, mcp)`, `tools[${i}].type`, "unsupported_parameter");
    }
    if (typeof t.name !== "string") throw badRequest(`'tools[${i}].name' is required for a function tool`, `tools[${i}].name`);
    const fn: ChatTool["function"] = { name: t.name };
    if (present(t.description)) fn.description = t.description!;
    if (present(t.parameters)) fn.parameters = t.parameters!;
    if (present(t.strict)) fn.strict = t.strict;
    return { type: "function", function: fn };
}

function toolChoice(tc: NonNullable<ResponsesBody["tool_choice"]>): ToolChoice {
    if (typeof tc === "string") return tc as ToolChoice;
    if (tc.type === "function" && typeof tc.name === "string") return { type: "function", function: { name: tc.name } };
    throw badRequest(`'tool_choice.type' '${String(tc.type)}' is not supported: give 'auto', 'none', 'required' or { type: 'function', name }`, "tool_choice.type", "unsupported_parameter");
}

/** The engine's chat request for a /v1/responses body; every field it cannot honour is a 400 naming it. */
export function responsesRequest(b: ResponsesBody): { request: ChatRequest; sources: MessageSource[] } {
    refuseResponsesFields(b);
    if (b.n != null && b.n !== 1) throw badRequest("'n' other than 1 is not supported on /v1/responses: a response has one output", "n", "unsupported_parameter");
    // the sampling and constraint fields the other routes take (vLLM's and llama-server's names) are taken here too
    const sampling: SamplingBody = { ...(b as SamplingBody), max_tokens: b.max_output_tokens, n: undefined };
    const r: ChatRequest = { ...samplingOptions(sampling, undefined), ...outputOptions(b, "chat"), messages: [] };
    const f = b.text?.format;
    if (f && f.type !== "text") {
        const other = constraintField(b);
        if (other !== undefined) throw badRequest(`'text.format' and '${other}' both constrain the output: give only one`, other);
        r.responseFormat = f.type === "json_object" ? { type: "json_object" } : { type: "json_schema", schema: f.schema };
    }
    const { messages, sources } = inputMessages(b);
    r.messages = messages;
    if (b.tools != null && b.tools.length > 0) r.tools = b.tools.map(chatTool);
    if (b.tool_choice != null) r.toolChoice = toolChoice(b.tool_choice);
    if (b.parallel_tool_calls != null) r.parallelToolCalls = b.parallel_tool_calls;
    const effort = b.reasoning?.effort;
    if (effort != null) r.reasoningEffort = effort as ChatRequest["reasoningEffort"];
    if (b.reasoning_budget_tokens != null && b.reasoning_budget_tokens >= 0) r.reasoningBudget = b.reasoning_budget_tokens;
    if (b.chat_template_kwargs != null) r.templateVariables = { ...b.chat_template_kwargs };
    return { request: r, sources };
}

// ---- field names ------------------------------------------------------------------------------------

/** A chat message's field ("[2].tool_calls[0].function.arguments") as the input item it came from ("input[5].arguments"). */
function messageField(rest: string, at: FieldContext): string {
    const i = leadingIndex(rest);
    if (!i) return "input";
    let sources: MessageSource[];
    try {
        sources = inputMessages(at.body as ResponsesBody).sources;
    } catch {
        return "input";
    }
    const s = sources[i.index];
    if (!s) return "input";
    const call = /^\.tool_calls\[(\d+)\](?:\.function)?(.*)$/.exec(i.after);
    if (call && s.calls[Number(call[1])] !== undefined) return `input[${s.calls[Number(call[1])]}]${call[2]}`;
    if (s.field === "instructions") return "instructions";
    if (i.after.startsWith(".reasoning_content")) return s.field;
    return s.field + (i.after.startsWith(".content") && s.field !== "input" ? ".content" : "");
}


/** /v1/responses: the prompt is the input items (and instructions) through the chat template; tools are flat. */
export const responsesApi: RouteApi = {
    promptField: "input",
    fields: {
        maxTokens: "max_output_tokens", topK: "top_k", topP: "top_p", minP: "min_p", repeatPenalty: "repetition_penalty",
        presencePenalty: "presence_penalty", frequencyPenalty: "frequency_penalty", cacheSalt: "cache_salt",
        ignoreEos: "ignore_eos", penaltyLastN: "penalty_last_n", logitBias: "logit_bias", stop: "stop",
        // the constraint: text.format, or the field of the other routes' it came from (structured.ts)
        grammar: constraintRule("text.format"), schema: constraintRule("text.format.schema"), responseFormat: constraintRule("text.format"), "responseFormat.schema": constraintRule("text.format.schema"),
        // the chat layer's name for the response format's schema, when it makes the grammar with the tools'
        jsonSchema: constraintRule("text.format.schema"),
        prompt: () => "input",
        messages: messageField,
        templateVariables: "chat_template_kwargs",
        // the chat shape's tools[i].function.name is the flat tools[i].name
        tools: (rest) => "tools" + rest.replace(/^(\[\d+\])\.function/, "$1"),
        toolChoice: (rest) => "tool_choice" + rest.replace(/^\.function/, ""),
        parallelToolCalls: "parallel_tool_calls",
        enableThinking: "chat_template_kwargs.enable_thinking",
        reasoningEffort: "reasoning.effort",
        reasoningBudget: "reasoning_budget_tokens",
    },
};

// ---- the response -----------------------------------------------------------------------------------

const newId = (prefix: string) => `${prefix}_${randomBytes(12).toString("hex")}`;

type Status = "in_progress" | "completed" | "incomplete";

export type OutputItem =
    | { type: "reasoning"; id: string; summary: []; content: { type: "reasoning_text"; text: string }[]; encrypted_content?: string; status: Status }
    | { type: "message"; id: string; role: "assistant"; status: Status; content: { type: "output_text"; text: string; annotations: []; logprobs: [] }[] }
    | { type: "function_call"; id: string; call_id: string; name: string; arguments: string; status: Status };

/** What a response echoes of its request, and what it says of itself besides its output. */
export interface ResponseHead {
    id: string;
    created: number;
    model: string;
    body: ResponsesBody;
}

/** The response object: in progress (no output yet), or done with its output items and usage. */
export function responseObject(head: ResponseHead, done?: { output: OutputItem[]; finishReason: FinishReason; usage: ReturnType<typeof responseUsage> }) {
    const b = head.body;
    // cut by max_output_tokens, or by a drain that timed out (the chat route's finish_reason "abort")
    const incomplete = done?.finishReason === "length" || done?.finishReason === "abort";
    const text = (done?.output ?? []).flatMap((o) => (o.type === "message" ? o.content.map((c) => c.text) : [])).join("");
    return {
        id: head.id, object: "response" as const, created_at: head.created,
        status: !done ? "in_progress" : incomplete ? "incomplete" : "completed",
        ...(done && { completed_at: Math.floor(Date.now() / 1000) }),
        background: false, error: null,
        incomplete_details: incomplete ? { reason: done.finishReason === "length" ? "max_output_tokens" : "abort" } : null,
        instructions: b.instructions ?? null,
        max_output_tokens: b.max_output_tokens ?? null,
        model: head.model,
        output: done?.output ?? [],
        output_text: text,
        parallel_tool_calls: b.parallel_tool_calls ?? true,
        previous_response_id: null,
        reasoning: { effort: b.reasoning?.effort ?? null, summary: b.reasoning?.summary ?? b.reasoning?.generate_summary ?? null },
        store: false,
        temperature: b.temperature ?? 1,
        text: { format: b.text?.format ?? { type: "text" }, verbosity: b.text?.verbosity ?? "medium" },
        tool_choice: b.tool_choice ?? "auto",
        tools: (b.tools ?? []).map((t) => ({ type: t.type, name: t.name, description: t.description ?? null, parameters: t.parameters ?? null, strict: t.strict ?? null })),
        top_p: b.top_p ?? 1,
        truncation: "disabled",
        usage: done?.usage ?? null,
        user: b.user ?? null,
        metadata: b.metadata ?? {},
    };
}

/**
 * The response's usage. Reasoning tokens are the thinking text's tokens (the text as the tokenizer reads
 * it again: the engine does not count the tokens of each kind), at most the output's.
 */
export function responseUsage(r: GenerateResult, reasoningTokens: number) {
    const out = r.usage.completionTokens;
    return {
        input_tokens: r.usage.promptTokens, input_tokens_details: { cached_tokens: r.usage.cachedTokens },
        output_tokens: out, output_tokens_details: { reasoning_tokens: Math.min(reasoningTokens, out) },
        total_tokens: r.usage.promptTokens + out,
    };
}

export async function reasoningTokens(engine: Engine, text: string): Promise<number> {
    return text.length === 0 ? 0 : (await engine.tokenize(text, { addSpecial: false })).length;
}

function reasoningItem(text: string, encrypted: boolean, status: Status): OutputItem {
    return { type: "reasoning", id: newId("rs"), summary: [], content: [{ type: "reasoning_text", text }], ...(encrypted && { encrypted_content: encodeReasoning(text) }), status };
}
const messageItem = (text: string, status: Status): OutputItem =>
    ({ type: "message", id: newId("msg"), role: "assistant", status, content: [{ type: "output_text", text, annotations: [], logprobs: [] }] });
const callItem = (call: { id: string; name: string; arguments: string }, status: Status): OutputItem =>
    ({ type: "function_call", id: newId("fc"), call_id: call.id, name: call.name, arguments: call.arguments, status });

/**
 * A finished message as output items: its thinking (a reasoning item), its text (a message item; an empty
 * one when it has nothing else), its calls (a function_call item each). A turn cut by max_output_tokens
 * has its last item incomplete.
 */
export function outputItems(m: AssistantMessage, finishReason: FinishReason, encryptedReasoning: boolean): OutputItem[] {
    const out: OutputItem[] = [];
    if (m.reasoningContent.length > 0) out.push(reasoningItem(m.reasoningContent, encryptedReasoning, "completed"));
    if (m.content.length > 0 || (m.toolCalls.length === 0 && out.length === 0)) out.push(messageItem(m.content, "completed"));
    for (const c of m.toolCalls) out.push(callItem({ id: c.id, name: c.function.name, arguments: c.function.arguments }, "completed"));
    if ((finishReason === "length" || finishReason === "abort") && out.length > 0) out[out.length - 1].status = "incomplete";
    return out;
}

export const wantsEncryptedReasoning = (b: ResponsesBody) => (b.include ?? []).includes(ENCRYPTED_REASONING);

// ---- the stream -------------------------------------------------------------------------------------

/** One streamed event: its type is also its SSE event name. */
export type ResponseEvent = { type: string; [k: string]: unknown };

/**
 * The response.* events of a streamed message, built from the engine's message changes in order: an
 * output item opens when the kind of change (thinking, text, a tool call) changes, and is done when
 * the next opens or the message ends. Each event gets the next sequence_number.
 */
export class ResponseEvents {
    private seq = 0;
    readonly output: OutputItem[] = [];
    private cur: OutputItem | undefined;
    /** The engine's index of the tool call the current function_call item is. */
    private callIndex = -1;

    constructor(private readonly encryptedReasoning: boolean, private readonly emit: (ev: ResponseEvent) => void) {}

    send(type: string, fields: Record<string, unknown>): void {
        this.emit({ type, ...fields, sequence_number: this.seq++ });
    }

    private get outputIndex(): number {
        return this.output.length - 1;
    }

    private open(item: OutputItem): void {
        this.close("completed");
        this.output.push(item);
        this.cur = item;
        this.send("response.output_item.added", { output_index: this.outputIndex, item: structuredClone({ ...item, ...(item.type === "message" && { content: [] }), ...(item.type === "reasoning" && { content: [] }) }) });
        if (item.type === "message") this.send("response.content_part.added", { item_id: item.id, output_index: this.outputIndex, content_index: 0, part: { type: "output_text", text: "", annotations: [], logprobs: [] } });
        if (item.type === "reasoning") this.send("response.content_part.added", { item_id: item.id, output_index: this.outputIndex, content_index: 0, part: { type: "reasoning_text", text: "" } });
    }

    /** Ends the current item (if any) with its done events. */
    close(status: Status): void {
        const item = this.cur;
        if (!item) return;
        this.cur = undefined;
        item.status = status;
        const at = { item_id: item.id, output_index: this.outputIndex };
        if (item.type === "message") {
            const part = item.content[0];
            this.send("response.output_text.done", { ...at, content_index: 0, text: part.text, logprobs: [] });
            this.send("response.content_part.done", { ...at, content_index: 0, part });
        } else if (item.type === "reasoning") {
            const part = item.content[0];
            if (this.encryptedReasoning) item.encrypted_content = encodeReasoning(part.text);
            this.send("response.reasoning_text.done", { ...at, content_index: 0, text: part.text });
            this.send("response.content_part.done", { ...at, content_index: 0, part });
        } else {
            this.send("response.function_call_arguments.done", { ...at, name: item.name, arguments: item.arguments });
        }
        this.send("response.output_item.done", { output_index: this.outputIndex, item });
    }

    /** One token's changes to the message. */
    push(changes: readonly MessageDelta[]): void {
        for (const d of changes) {
            if (d.reasoningContent) {
                if (this.cur?.type !== "reasoning") this.open(reasoningItem("", false, "in_progress"));
                const item = this.cur as Extract<OutputItem, { type: "reasoning" }>;
                item.content[0].text += d.reasoningContent;
                this.send("response.reasoning_text.delta", { item_id: item.id, output_index: this.outputIndex, content_index: 0, delta: d.reasoningContent });
            }
            if (d.content) {
                if (this.cur?.type !== "message") this.open(messageItem("", "in_progress"));
                const item = this.cur as Extract<OutputItem, { type: "message" }>;
                item.content[0].text += d.content;
                this.send("response.output_text.delta", { item_id: item.id, output_index: this.outputIndex, content_index: 0, delta: d.content, logprobs: [] });
            }
            const tc = d.toolCall;
            if (!tc) continue;
            if (this.cur?.type !== "function_call" || this.callIndex !== tc.index) {
                this.open(callItem({ id: tc.id ?? newId("call"), name: tc.name ?? "", arguments: "" }, "in_progress"));
                this.callIndex = tc.index;
            }
            const item = this.cur as Extract<OutputItem, { type: "function_call" }>;
            if (tc.arguments) {
                item.arguments += tc.arguments;
                this.send("response.function_call_arguments.delta", { item_id: item.id, output_index: this.outputIndex, delta: tc.arguments });
            }
        }
    }

    /** The error event of a stream that failed (OpenAI's: code, message, param), with the next sequence number. */
    error(e: ApiError): ResponseEvent {
        return { type: "error", code: e.code ?? e.type, message: e.message, param: e.param, sequence_number: this.seq++ };
    }

    emitError(e: ApiError): void {
        this.emit(this.error(e));
    }

    /** The message ended: its last item is done (incomplete when cut by max_output_tokens); an answer with no item gets an empty message. */
    finish(finishReason: FinishReason): void {
        if (this.output.length === 0) this.open(messageItem("", "in_progress"));
        this.close(finishReason === "length" || finishReason === "abort" ? "incomplete" : "completed");
    }
}

// ---- the body's schema ------------------------------------------------------------------------------

const nullable = (s: Record<string, unknown>) => ({ anyOf: [s, { type: "null" }] });
const int = (min?: number, max?: number) => nullable({ type: "integer", ...(min !== undefined && { minimum: min }), ...(max !== undefined && { maximum: max }) });
const num = (extra: Record<string, unknown>) => nullable({ type: "number", ...extra });

const textParts = { type: "array", items: { type: "object", required: ["type"], properties: { type: { type: "string" }, text: { type: "string" } } } };
const functionName = { type: "string", pattern: "^[A-Za-z0-9_.:-]{1,128}$", description: "1-128 letters, digits, '_', '-', '.' or ':'" };

/** The fields of the chat body's schema that /v1/responses takes too, checked the same way. */
const SHARED_FIELDS = [
    "top_k", "min_p", "seed", "n", "stop", "stop_token_ids", "presence_penalty", "frequency_penalty", "repetition_penalty", "penalty_last_n", "logit_bias",
    "ignore_eos", "priority", "cache_salt", "response_format", "grammar", "json_schema", "structured_outputs", "guided_json", "guided_regex", "guided_choice",
    "guided_grammar", "guided_decoding_backend", "chat_template_kwargs", "reasoning_budget_tokens",
];

/** The /v1/responses body's schema (fastify's Ajv); what it lets through, responsesRequest checks further. */
export function responsesBodySchema(chatBody: { properties: Record<string, unknown> }): object {
    const shared = Object.fromEntries(SHARED_FIELDS.map((k) => [k, chatBody.properties[k]]));
    return {
        type: "object",
        required: ["input"],
        properties: {
            ...shared,
            model: { type: "string", minLength: 1 },
            input: {
                description: "a string or a list of input items",
                anyOf: [
                    { type: "string" },
                    {
                        type: "array", minItems: 1,
                        items: {
                            type: "object",
                            properties: {
                                type: { type: "string" },
                                role: { type: "string" },
                                content: { anyOf: [{ type: "string" }, textParts], description: "a string or a list of text parts" },
                                call_id: { type: "string" },
                                name: { type: "string" },
                                arguments: { type: "string" },
                                output: { anyOf: [{ type: "string" }, textParts], description: "a string or a list of text parts" },
                                summary: textParts,
                                encrypted_content: nullable({ type: "string" }),
                            },
                        },
                    },
                ],
            },
            instructions: nullable({ type: "string" }),
            tools: nullable({
                type: "array", maxItems: 256,
                items: {
                    type: "object", required: ["type"],
                    properties: { type: { type: "string" }, name: functionName, description: nullable({ type: "string" }), parameters: nullable({ type: "object" }), strict: nullable({ type: "boolean" }) },
                },
            }),
            tool_choice: nullable({
                anyOf: [{ enum: ["auto", "none", "required"] }, { type: "object", required: ["type"], properties: { type: { type: "string" }, name: { type: "string" } } }],
                description: "'auto', 'none', 'required' or { type: 'function', name }",
            }),
            parallel_tool_calls: nullable({ type: "boolean" }),
            max_output_tokens: int(1),
            temperature: num({ minimum: 0, maximum: 2 }),
            top_p: num({ exclusiveMinimum: 0, maximum: 1 }),
            text: nullable({
                type: "object",
                properties: {
                    format: nullable({
                        type: "object", required: ["type"],
                        properties: { type: { enum: ["text", "json_object", "json_schema"] }, name: { type: "string" }, schema: { type: "object" }, strict: nullable({ type: "boolean" }) },
                        if: { properties: { type: { const: "json_schema" } } }, then: { required: ["schema"] },
                    }),
                    verbosity: nullable({ type: "string" }),
                },
            }),
            reasoning: nullable({
                type: "object",
                properties: {
                    effort: nullable({ enum: ["none", "minimal", "low", "medium", "high"] }),
                    summary: nullable({ enum: ["auto", "concise", "detailed"] }),
                    generate_summary: nullable({ enum: ["auto", "concise", "detailed"] }),
                    mode: nullable({ type: "string" }),
                },
            }),
            stream: nullable({ type: "boolean" }),
            metadata: nullable({ type: "object", maxProperties: 16, additionalProperties: { type: "string", maxLength: 512 } }),
            user: nullable({ type: "string" }),
            store: nullable({ type: "boolean" }),
            previous_response_id: nullable({ type: "string" }),
            include: nullable({ type: "array", items: { type: "string" } }),
            top_logprobs: int(0, 20),
            truncation: nullable({ enum: ["auto", "disabled"] }),
            background: nullable({ type: "boolean" }),
        },
    };
}
