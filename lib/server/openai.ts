// OpenAI request bodies to engine requests, and engine results to OpenAI responses and stream chunks.
import type {
    AssistantMessage, ChatMessage, ChatRequest, ChatTool, Engine, FinishReason, GenerateRequest, GenerateResult, MessageDelta, RequestOptions,
    TokenLogprob, ToolChoice,
} from "../index.js";
import { requestLimits } from "../engine/limits.js";
import { badRequest, leadingIndex, type FieldContext, type FieldRule, type RouteApi } from "./errors.js";
import { constraintRule, outputOptions } from "./structured.js";

export interface SamplingBody {
    model?: string;
    max_tokens?: number | null;
    temperature?: number | null;
    top_p?: number | null;
    n?: number | null;
    stop?: string | string[] | null;
    stop_token_ids?: number[] | null;
    seed?: number | null;
    presence_penalty?: number | null;
    frequency_penalty?: number | null;
    repetition_penalty?: number | null;
    logit_bias?: Record<string, number> | null;
    stream?: boolean | null;
    stream_options?: { include_usage?: boolean | null } | null;
    top_k?: number | null;
    min_p?: number | null;
    ignore_eos?: boolean | null;
    priority?: number | null;
    cache_salt?: string | null;
    penalty_last_n?: number | null;
    /** The output constraints (structured.ts reads them): OpenAI's, llama-server's and vLLM's names. */
    response_format?: { type: "text" | "json_object" | "json_schema"; json_schema?: { name?: string; schema?: object; strict?: boolean | null }; schema?: object } | null;
    grammar?: string | null;
    json_schema?: object | null;
    structured_outputs?: Record<string, unknown> | null;
    guided_json?: object | string | null;
    guided_regex?: string | null;
    guided_choice?: string[] | null;
    guided_grammar?: string | null;
}

export interface CompletionBody extends SamplingBody {
    prompt: string | string[] | number[] | number[][];
    suffix?: string | null;
    echo?: boolean | null;
    logprobs?: number | null;
    best_of?: number | null;
    add_special_tokens?: boolean | null;
}

type ContentPart = { type: string; text?: string };

export interface ChatBody extends SamplingBody {
    messages: { role: string; content?: string | ContentPart[] | null; reasoning?: string; [k: string]: unknown }[];
    max_completion_tokens?: number | null;
    logprobs?: boolean | null;
    top_logprobs?: number | null;
    tools?: unknown[] | null;
    tool_choice?: unknown;
    parallel_tool_calls?: boolean | null;
    /** The legacy names of tools and tool_choice. */
    functions?: unknown[] | null;
    function_call?: unknown;
    chat_template?: string | null;
    chat_template_kwargs?: Record<string, unknown> | null;
    reasoning_effort?: string | null;
    /** Most thinking tokens (llama-server's name; thinking_budget_tokens is taken too). -1: no limit. */
    reasoning_budget_tokens?: number | null;
    thinking_budget_tokens?: number | null;
    add_generation_prompt?: boolean | null;
    continue_final_message?: boolean | null;
}

/** A request field's null as absent. */
export const orUndef = <T>(v: T | null | undefined): T | undefined => (v === null ? undefined : v);

/** The sampling fields shared by both routes, as engine options. */
export function samplingOptions(b: SamplingBody, defaultMaxTokens: number | undefined): RequestOptions {
    const stop: (string | number)[] = [];
    if (typeof b.stop === "string") stop.push(b.stop);
    else if (Array.isArray(b.stop)) stop.push(...b.stop);
    if (Array.isArray(b.stop_token_ids)) stop.push(...b.stop_token_ids);
    const { maxStops } = requestLimits();
    if (stop.length > maxStops) throw badRequest(`'stop' and 'stop_token_ids' hold ${stop.length} entries together, at most ${maxStops} are allowed`, "stop");
    return {
        maxTokens: orUndef(b.max_tokens) ?? defaultMaxTokens,
        temperature: orUndef(b.temperature) ?? 1,
        topP: orUndef(b.top_p),
        topK: b.top_k === -1 ? 0 : orUndef(b.top_k),
        minP: orUndef(b.min_p),
        n: orUndef(b.n),
        stop: stop.length > 0 ? stop : undefined,
        seed: orUndef(b.seed),
        presencePenalty: orUndef(b.presence_penalty),
        frequencyPenalty: orUndef(b.frequency_penalty),
        repeatPenalty: orUndef(b.repetition_penalty),
        penaltyLastN: orUndef(b.penalty_last_n),
        logitBias: orUndef(b.logit_bias),
        ignoreEos: orUndef(b.ignore_eos),
        priority: orUndef(b.priority),
        cacheSalt: orUndef(b.cache_salt),
    };
}

/** One engine request per prompt of a /v1/completions body (a string, token ids, or a list of either). */
export function completionRequests(b: CompletionBody): GenerateRequest[] {
    if (b.echo && b.logprobs != null) {
        throw badRequest("'echo' with 'logprobs' is not supported: prompt tokens have no logprobs here", "echo");
    }
    if (b.best_of != null && b.best_of !== (b.n ?? 1)) {
        throw badRequest("'best_of' other than 'n' is not supported", "best_of");
    }
    const prompts = promptList(b.prompt);
    if (prompts.length > 1 && b.suffix != null) throw badRequest("'suffix' takes a single prompt", "suffix");
    // OpenAI's default for the completions API is 16 tokens
    const base: RequestOptions = { ...samplingOptions(b, 16), ...outputOptions(b, "completions") };
    if (b.logprobs != null) base.logprobs = b.logprobs;
    return prompts.map((prompt, i) => {
        if (prompt.length === 0) throw badRequest(prompts.length > 1 ? `'prompt[${i}]' must not be empty` : "'prompt' must not be empty", "prompt");
        const r: GenerateRequest = { ...base, prompt };
        if (b.suffix != null) r.suffix = b.suffix;
        if (b.add_special_tokens != null) r.addSpecial = b.add_special_tokens;
        return r;
    });
}

/** A completions body's prompts: one string or token-id array, or a list of them. */
function promptList(p: CompletionBody["prompt"]): (string | number[])[] {
    return typeof p === "string" ? [p] : p.length > 0 && typeof p[0] === "number" ? [p as number[]] : (p as (string | number[])[]);
}

/** The engine's chat request for a /v1/chat/completions body. */
export function chatRequest(b: ChatBody): ChatRequest {
    const messages: ChatMessage[] = b.messages.map((m, i) => {
        let content: string | null;
        if (Array.isArray(m.content)) {
            content = m.content.map((part, j) => {
                if (part.type !== "text" || typeof part.text !== "string") {
                    throw badRequest(`'messages[${i}].content[${j}]' is a '${part.type}' part; only text parts are supported`, `messages[${i}].content`);
                }
                return part.text;
            }).join("");
        } else {
            content = m.content ?? null;
        }
        const out: ChatMessage = { ...m, content };
        // the name some clients give an assistant's earlier thinking
        if (out.reasoning_content === undefined && typeof m.reasoning === "string") out.reasoning_content = m.reasoning;
        return out;
    });
    const opts = samplingOptions(b, undefined);
    opts.maxTokens = orUndef(b.max_completion_tokens) ?? opts.maxTokens;
    if (b.logprobs) opts.logprobs = b.top_logprobs ?? 0;
    else if (b.top_logprobs != null && b.top_logprobs > 0) throw badRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs");
    Object.assign(opts, outputOptions(b, "chat"));
    const r: ChatRequest = { ...opts, messages };
    // tools, and the legacy functions / function_call they replaced
    let tools = orUndef(b.tools) as ChatTool[] | undefined;
    let toolChoice = orUndef(b.tool_choice) as ToolChoice | undefined;
    if (b.functions != null) {
        if (tools !== undefined) throw badRequest("give 'tools' or the older 'functions', not both", "functions");
        tools = b.functions.map((fn) => ({ type: "function" as const, function: fn as ChatTool["function"] }));
    }
    if (b.function_call != null) {
        if (toolChoice !== undefined) throw badRequest("give 'tool_choice' or the older 'function_call', not both", "function_call");
        const fc = b.function_call;
        toolChoice = typeof fc === "string" ? (fc as ToolChoice) : { type: "function", function: { name: String((fc as { name?: unknown }).name) } };
    }
    if (tools !== undefined) r.tools = tools;
    if (toolChoice !== undefined) r.toolChoice = toolChoice;
    if (b.parallel_tool_calls != null) r.parallelToolCalls = b.parallel_tool_calls;

    // the template and reasoning
    // a template is code the server runs: a client's is not taken (vLLM takes one only when told to trust requests)
    if (b.chat_template != null) throw badRequest("'chat_template' is not taken from requests: the server's template is set with --chat-template-file", "chat_template");
    if (b.chat_template_kwargs != null) r.templateVariables = { ...b.chat_template_kwargs };
    if (b.reasoning_effort != null) r.reasoningEffort = b.reasoning_effort as ChatRequest["reasoningEffort"];
    const budget = b.reasoning_budget_tokens ?? b.thinking_budget_tokens;
    if (budget != null && budget >= 0) r.reasoningBudget = budget;
    if (b.add_generation_prompt != null) r.addGenerationPrompt = b.add_generation_prompt;
    if (b.continue_final_message != null) r.continueFinalMessage = b.continue_final_message;
    return r;
}

/** A chat choice's message, as OpenAI's chat API writes it. */
export function chatMessage(m: AssistantMessage | undefined, text: string) {
    const calls = m?.toolCalls ?? [];
    const content = m ? m.content : text;
    return {
        role: "assistant" as const,
        content: calls.length > 0 && content.length === 0 ? null : content,
        ...(m && m.reasoningContent.length > 0 && { reasoning_content: m.reasoningContent }),
        ...(calls.length > 0 && { tool_calls: calls }),
    };
}

/** OpenAI's finish reason for a chat choice: a turn that ended in tool calls says so. */
export function chatFinishReason(reason: FinishReason, m: AssistantMessage | undefined): string {
    return reason === "stop" && m !== undefined && m.toolCalls.length > 0 ? "tool_calls" : reason;
}

/**
 * A streamed choice's message changes as chat chunk deltas: text and thinking, and each tool call's id and
 * name in a delta of their own before its arguments come in fragments, as OpenAI streams them.
 */
export function chatDeltas(changes: readonly MessageDelta[]): Record<string, unknown>[] {
    const out: Record<string, unknown>[] = [];
    let cur: { content?: string; reasoning_content?: string; tool_calls?: { index: number; function: { arguments: string } }[] } = {};
    const flush = () => {
        if (Object.keys(cur).length > 0) out.push(cur);
        cur = {};
    };
    for (const d of changes) {
        if (d.reasoningContent) cur.reasoning_content = (cur.reasoning_content ?? "") + d.reasoningContent;
        if (d.content) cur.content = (cur.content ?? "") + d.content;
        const tc = d.toolCall;
        if (!tc) continue;
        if (tc.name !== undefined || tc.id !== undefined) {
            flush();
            out.push({ tool_calls: [{ index: tc.index, id: tc.id, type: "function", function: { name: tc.name ?? "", arguments: "" } }] });
        }
        if (tc.arguments) {
            const calls = (cur.tool_calls ??= []);
            const last = calls[calls.length - 1];
            if (last && last.index === tc.index) last.function.arguments += tc.arguments;
            else calls.push({ index: tc.index, function: { arguments: tc.arguments } });
        }
    }
    flush();
    return out;
}

// ---- field names ------------------------------------------------------------------------------
// Each route's table from the engine's field names to its request's (errors.ts: RouteApi), so that an
// engine error that names its field (BatchwiseError.field) is answered with the request's name for it.

/** The engine's stop list is 'stop' then 'stop_token_ids' (samplingOptions): an index into it is one of those. */
function stopField(rest: string, at: FieldContext): string {
    const stop = (at.body as SamplingBody | undefined)?.stop;
    const i = leadingIndex(rest);
    if (!i) return "stop" + rest;
    const strings = typeof stop === "string" ? 1 : Array.isArray(stop) ? stop.length : 0;
    if (i.index >= strings) return `stop_token_ids[${i.index - strings}]${i.after}`;
    return typeof stop === "string" ? "stop" + i.after : `stop[${i.index}]${i.after}`;
}


const SAMPLING_FIELDS: Record<string, FieldRule> = {
    maxTokens: "max_tokens", topK: "top_k", topP: "top_p", minP: "min_p", repeatPenalty: "repetition_penalty",
    presencePenalty: "presence_penalty", frequencyPenalty: "frequency_penalty", logitBias: "logit_bias",
    ignoreEos: "ignore_eos", cacheSalt: "cache_salt", penaltyLastN: "penalty_last_n", stop: stopField,
    grammar: constraintRule("grammar"), schema: constraintRule("response_format.json_schema.schema"), responseFormat: constraintRule("response_format"),
    "responseFormat.schema": constraintRule("response_format.json_schema.schema"),
};

/** /v1/completions: each prompt of a list is its own generation, so its fields are 'prompt[i]...'. */
export const completionApi: RouteApi = {
    promptField: "prompt",
    fields: {
        ...SAMPLING_FIELDS,
        prompt: (rest, at) => {
            const p = (at.body as CompletionBody | undefined)?.prompt;
            const list = p !== undefined && p !== null && typeof p !== "string" && p.length > 0 && typeof p[0] !== "number";
            return list && at.index !== undefined ? `prompt[${at.index}]${rest}` : `prompt${rest}`;
        },
    },
};

/** /v1/chat/completions: the prompt is the messages through the chat template, logprobs come from top_logprobs. */
export const chatApi: RouteApi = {
    promptField: "messages",
    fields: {
        ...SAMPLING_FIELDS,
        maxTokens: (rest, at) => ((at.body as ChatBody | undefined)?.max_completion_tokens != null ? "max_completion_tokens" : "max_tokens") + rest,
        logprobs: "top_logprobs",
        // a position in the templated prompt is no position in the request
        prompt: () => "messages",
        templateVariables: "chat_template_kwargs",
        tools: (rest, at) => ((at.body as ChatBody | undefined)?.functions != null ? "functions" + rest.replace(/^(\[\d+\])\.function/, "$1") : "tools" + rest),
        toolChoice: (rest, at) => ((at.body as ChatBody | undefined)?.function_call != null ? "function_call" + rest.replace(/^\.function/, "") : "tool_choice" + rest),
        parallelToolCalls: "parallel_tool_calls",
        enableThinking: "chat_template_kwargs.enable_thinking",
        reasoningEffort: "reasoning_effort",
        reasoningBudget: (rest, at) => ((at.body as ChatBody | undefined)?.reasoning_budget_tokens != null ? "reasoning_budget_tokens" : "thinking_budget_tokens") + rest,
        addGenerationPrompt: "add_generation_prompt",
        continueFinalMessage: "continue_final_message",
    },
};

/** /tokenize and /detokenize: the engine's own names (prompt, messages, tokens) are the request's. */
export const tokenizeApi: RouteApi = {
    fields: {
        templateVariables: "chat_template_kwargs", toolChoice: "tool_choice", addGenerationPrompt: "add_generation_prompt",
        continueFinalMessage: "continue_final_message", enableThinking: "chat_template_kwargs.enable_thinking",
    },
    promptField: "prompt",
};

// ---- responses --------------------------------------------------------------------------------

export const tokenText = (engine: Engine, token: number): string => Buffer.from(engine.tokenBytes(token)).toString("utf8");
const tokenBytes = (engine: Engine, token: number): number[] => Array.from(engine.tokenBytes(token));

/** The legacy completions API's logprobs object for some generated tokens. */
export function completionLogprobs(engine: Engine, lps: TokenLogprob[], offset0: number) {
    const out = { tokens: [] as string[], token_logprobs: [] as number[], top_logprobs: [] as Record<string, number>[], text_offset: [] as number[] };
    let offset = offset0;
    for (const lp of lps) {
        const text = tokenText(engine, lp.token);
        out.tokens.push(text);
        out.token_logprobs.push(lp.logprob);
        const top: Record<string, number> = {};
        for (const t of lp.top ?? []) top[tokenText(engine, t.token)] ??= t.logprob;
        out.top_logprobs.push(top);
        out.text_offset.push(offset);
        offset += text.length;
    }
    return out;
}

/** The chat API's logprobs object. */
export function chatLogprobs(engine: Engine, lps: TokenLogprob[]) {
    return {
        content: lps.map((lp) => ({
            token: tokenText(engine, lp.token), logprob: lp.logprob, bytes: tokenBytes(engine, lp.token),
            top_logprobs: (lp.top ?? []).map((t) => ({ token: tokenText(engine, t.token), logprob: t.logprob, bytes: tokenBytes(engine, t.token) })),
        })),
    };
}

export function usage(results: GenerateResult[]) {
    let prompt = 0, completion = 0, cached = 0;
    for (const r of results) {
        prompt += r.usage.promptTokens;
        completion += r.usage.completionTokens;
        cached += r.usage.cachedTokens;
    }
    return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion, prompt_tokens_details: { cached_tokens: cached } };
}
