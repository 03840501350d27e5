// OpenAI request bodies to engine requests, and engine results to OpenAI responses and stream chunks.
import type { ChatMessage, ChatRequest, Engine, GenerateRequest, GenerateResult, RequestOptions, TokenLogprob } from "../index.js";
import { requestLimits } from "../engine/limits.js";
import { badRequest, leadingIndex, type FieldContext, type FieldRule, type RouteApi } from "./errors.js";
import { constraintField, outputOptions } from "./structured.js";

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
    messages: { role: string; content?: string | ContentPart[] | null; [k: string]: unknown }[];
    max_completion_tokens?: number | null;
    logprobs?: boolean | null;
    top_logprobs?: number | null;
    tools?: unknown[] | null;
    tool_choice?: unknown;
    chat_template_kwargs?: Record<string, unknown> | null;
}

const orUndef = <T>(v: T | null | undefined): T | undefined => (v === null ? undefined : v);

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
    if (b.tools != null && b.tools.length > 0 && b.tool_choice !== "none") {
        throw badRequest("tool calling is not supported yet: send the request without 'tools' (or with tool_choice 'none')", "tools");
    }
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
        return { ...m, content };
    });
    const opts = samplingOptions(b, undefined);
    opts.maxTokens = orUndef(b.max_completion_tokens) ?? opts.maxTokens;
    if (b.logprobs) opts.logprobs = b.top_logprobs ?? 0;
    else if (b.top_logprobs != null && b.top_logprobs > 0) throw badRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs");
    Object.assign(opts, outputOptions(b, "chat"));
    const r: ChatRequest = { ...opts, messages };
    const vars: Record<string, unknown> = { ...(b.chat_template_kwargs ?? {}) };
    if (b.tools != null && b.tools.length > 0) vars.tools = b.tools;
    if (Object.keys(vars).length > 0) r.templateVariables = vars;
    return r;
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

/** The engine's grammar, and the JSON format and schema it is made from, are the request field the constraint came from (structured.ts). */
const constraint = (fallback: string): FieldRule => (rest, at) => (constraintField(at.body) ?? fallback) + rest;

const SAMPLING_FIELDS: Record<string, FieldRule> = {
    maxTokens: "max_tokens", topK: "top_k", topP: "top_p", minP: "min_p", repeatPenalty: "repetition_penalty",
    presencePenalty: "presence_penalty", frequencyPenalty: "frequency_penalty", logitBias: "logit_bias",
    ignoreEos: "ignore_eos", cacheSalt: "cache_salt", penaltyLastN: "penalty_last_n", stop: stopField,
    grammar: constraint("grammar"), schema: constraint("response_format.json_schema.schema"), responseFormat: constraint("response_format"),
    "responseFormat.schema": constraint("response_format.json_schema.schema"),
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
    },
};

/** /tokenize and /detokenize: the engine's own names (prompt, messages, tokens) are the request's. */
export const tokenizeApi: RouteApi = { fields: {}, promptField: "prompt" };

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
