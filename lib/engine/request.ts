// Request validation: every field checked before anything is queued, each error naming its field.
import { BatchwiseError, ErrorCode, fieldError, fitsFloat32, type SamplerParams } from "../binding/index.js";
import { requestLimits } from "./limits.js";

/**
 * The sampler of a request: the binding's SamplerParams (temperature, topK, topP, minP, penalties,
 * logitBias, seed, logprobs, grammar), less where it runs and the resume history (the scheduler's), and
 * what a chat's template adds (a lazy grammar and its triggers, the grammar's prefill, a thinking budget).
 * Choice i of n samples with seed + i; logprobs is 0..20.
 */
export type SamplingOptions = Omit<SamplerParams, "backend" | "history" | "grammarLazy" | "grammarTriggers" | "grammarPrefill" | "reasoningBudget">;

/** Constrains the output: any text, a JSON object, or JSON that follows a schema. */
export type ResponseFormat =
    | { type: "text" }
    | { type: "json_object" }
    | { type: "json_schema"; schema: object };

/** A copy of `o` without its undefined fields (the binding reads a present undefined as a wrong value). */
export function defined<T extends object>(o: T): T {
    const out = {} as T;
    for (const k of Object.keys(o) as (keyof T)[]) if (o[k] !== undefined) out[k] = o[k];
    return out;
}

export interface RequestOptions extends SamplingOptions {
    /** Tokens to generate at most. Default: up to the context. */
    maxTokens?: number;
    /** Stop strings (not part of the output) and stop token ids. */
    stop?: string | ReadonlyArray<string | number>;
    /** Keep going past end-of-generation tokens. */
    ignoreEos?: boolean;
    /** Choices to generate for the prompt (they share its KV). Default 1. */
    n?: number;
    /** Lower runs first; default 0. Equal priorities run in arrival order. */
    priority?: number;
    /** Tenant key: prefix-cache entries are shared only between requests with the same salt. */
    cacheSalt?: string;
    /** Use and fill the prefix cache. Default true. */
    cache?: boolean;
    /** Aborts the request: it ends with finishReason "abort" and frees its KV within one step. */
    signal?: AbortSignal;
    /** JSON output (any object, or one that follows a schema), enforced with a grammar. Not with `grammar`. */
    responseFormat?: ResponseFormat;
}

export interface GenerateRequest extends RequestOptions {
    /** Text (tokenized with the model's special tokens, e.g. BOS) or token ids. */
    prompt: string | ArrayLike<number>;
    /** For a text prompt: add BOS/EOS as the model asks. Default true. */
    addSpecial?: boolean;
    /** For a text prompt: read special-token text such as "<|im_start|>" as those tokens. Default true. */
    parseSpecial?: boolean;
    /**
     * Fill-in-the-middle: the code after the cursor (the prompt is the code before it). The prompt is
     * built with the model's FIM tokens; ERR_INVALID_ARGUMENT if it has none. Text prompts only.
     */
    suffix?: string;
}

export interface ValidRequest {
    n: number;
    maxTokens: number | undefined;
    /** The request's stop strings, then (a chat) its template's. */
    stopStrings: string[];
    /** How many of stopStrings the request gave: the ones a choice reports as its `stopString`. */
    requestStops: number;
    stopTokens: Set<number>;
    ignoreEos: boolean;
    priority: number;
    cacheSalt: string;
    useCache: boolean;
    samplers: SamplerParams[];
    logprobs: number;
}

function bad(field: string, what: string): BatchwiseError {
    return fieldError(ErrorCode.InvalidArgument, field, what);
}

function num(o: Record<string, unknown>, k: string, ok: (v: number) => boolean, what: string): number | undefined {
    const v = o[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number" || Number.isNaN(v) || !ok(v)) throw bad(k, `${what} (got ${JSON.stringify(v) ?? String(v)})`);
    return v;
}

const isInt = (v: number) => Number.isInteger(v);

/** Checks the options of a request; vocabSize bounds token ids in stop and logitBias. */
export function validateRequest(req: RequestOptions, vocabSize: number): ValidRequest {
    if (req === null || typeof req !== "object") throw new BatchwiseError(ErrorCode.InvalidArgument, "the request must be an object");
    const o = req as unknown as Record<string, unknown>;
    const { maxChoices: MAX_CHOICES, maxLogprobs: MAX_LOGPROBS, maxStops: MAX_STOPS, maxStopLength: MAX_STOP_LENGTH, maxLogitBias: MAX_LOGIT_BIAS } = requestLimits();
    const n = num(o, "n", (v) => isInt(v) && v >= 1 && v <= MAX_CHOICES, `must be an integer from 1 to ${MAX_CHOICES}`) ?? 1;
    const maxTokens = num(o, "maxTokens", (v) => isInt(v) && v >= 1, "must be a positive integer");
    // sampler numbers are 32-bit floats natively: beyond their range they turn into Infinity, and the logits into NaN
    const temperature = num(o, "temperature", (v) => v >= 0 && fitsFloat32(v), "must be a number from 0 to 3.4e38") ?? 1;
    // a top k at or above the vocabulary keeps every token, as 0 does (vLLM clamps it the same way)
    const topKAsked = num(o, "topK", (v) => isInt(v) && v >= 0 && v < 2 ** 31, "must be an integer from 0 to 2147483647");
    const topK = topKAsked !== undefined && topKAsked >= vocabSize ? 0 : topKAsked;
    const topP = num(o, "topP", (v) => v > 0 && v <= 1, "must be in (0, 1]");
    const minP = num(o, "minP", (v) => v >= 0 && v <= 1, "must be in [0, 1]");
    const repeatPenalty = num(o, "repeatPenalty", (v) => v > 0 && fitsFloat32(v), "must be a number > 0 and at most 3.4e38");
    const presencePenalty = num(o, "presencePenalty", (v) => v >= -2 && v <= 2, "must be in [-2, 2]");
    const frequencyPenalty = num(o, "frequencyPenalty", (v) => v >= -2 && v <= 2, "must be in [-2, 2]");
    const penaltyLastN = num(o, "penaltyLastN", (v) => isInt(v) && v >= -1 && v < 2 ** 31, "must be an integer from -1 to 2147483647");
    // 0xffffffff is llama.cpp's "pick a random seed": seeds stay below it
    const seed = num(o, "seed", (v) => isInt(v) && v >= 0 && v < 0xffffffff, "must be an integer from 0 to 4294967294");
    const logprobs = num(o, "logprobs", (v) => isInt(v) && v >= 0 && v <= MAX_LOGPROBS, `must be an integer from 0 to ${MAX_LOGPROBS}`);
    const priority = num(o, "priority", (v) => isInt(v) && Math.abs(v) <= 2 ** 31, "must be an integer") ?? 0;
    if (o.ignoreEos !== undefined && typeof o.ignoreEos !== "boolean") throw bad("ignoreEos", "must be a boolean");
    if (o.cache !== undefined && typeof o.cache !== "boolean") throw bad("cache", "must be a boolean");
    if (o.cacheSalt !== undefined && typeof o.cacheSalt !== "string") throw bad("cacheSalt", "must be a string");
    if (typeof o.cacheSalt === "string" && o.cacheSalt.length > requestLimits().maxCacheSalt) {
        throw bad("cacheSalt", `is ${o.cacheSalt.length} characters long, at most ${requestLimits().maxCacheSalt} are allowed`);
    }
    if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw bad("signal", "must be an AbortSignal");
    if (o.grammar !== undefined && (typeof o.grammar !== "string" || o.grammar.length === 0)) throw bad("grammar", "must be a non-empty GBNF string");
    if (o.grammarRoot !== undefined && (typeof o.grammarRoot !== "string" || o.grammarRoot.length === 0)) throw bad("grammarRoot", "must be a rule name");
    if (o.responseFormat !== undefined && o.responseFormat !== null) {
        const f = o.responseFormat as { type?: unknown; schema?: unknown };
        if (typeof f !== "object" || !["text", "json_object", "json_schema"].includes(f.type as string)) {
            throw bad("responseFormat", "must be { type: 'text' | 'json_object' | 'json_schema' }");
        }
        if (f.type === "json_schema" && (f.schema === null || typeof f.schema !== "object")) throw bad("responseFormat.schema", "must be a JSON schema object");
        if (f.type !== "text" && o.grammar !== undefined) throw bad("grammar", "cannot be combined with a JSON responseFormat");
    }
    if (o.history !== undefined) throw bad("history", "is not a request option (the scheduler replays generated tokens itself)");

    const stopStrings: string[] = [];
    const stopTokens = new Set<number>();
    if (o.stop !== undefined && o.stop !== null) {
        const list = typeof o.stop === "string" ? [o.stop] : o.stop;
        if (!Array.isArray(list)) throw bad("stop", "must be a string or an array of strings and token ids");
        if (list.length > MAX_STOPS) throw bad("stop", `holds ${list.length} entries, at most ${MAX_STOPS} are allowed`);
        list.forEach((s, i) => {
            if (typeof s === "string") {
                if (s.length === 0) throw bad(`stop[${i}]`, "must not be empty");
                if (s.length > MAX_STOP_LENGTH) throw bad(`stop[${i}]`, `is ${s.length} characters long, at most ${MAX_STOP_LENGTH} are allowed`);
                stopStrings.push(s);
            } else if (typeof s === "number" && isInt(s) && s >= 0 && s < vocabSize) {
                stopTokens.add(s);
            } else {
                throw bad(`stop[${i}]`, `must be a non-empty string or a token id in [0, ${vocabSize})`);
            }
        });
    }
    let logitBias: SamplerParams["logitBias"];
    if (o.logitBias !== undefined && o.logitBias !== null) {
        const entries: [unknown, unknown][] = Array.isArray(o.logitBias)
            ? (o.logitBias as unknown[]).map((e, i) => {
                  if (!Array.isArray(e) || e.length !== 2) throw bad(`logitBias[${i}]`, "must be a [token, bias] pair");
                  return [e[0], e[1]];
              })
            : typeof o.logitBias === "object"
              ? Object.entries(o.logitBias as object)
              : (() => {
                    throw bad("logitBias", "must be an object { token: bias } or an array of [token, bias] pairs");
                })();
        if (entries.length > MAX_LOGIT_BIAS) throw bad("logitBias", `has ${entries.length} entries, at most ${MAX_LOGIT_BIAS} are allowed`);
        const pairs: [number, number][] = [];
        for (const [k, v] of entries) {
            const t = typeof k === "string" ? (/^(0|[1-9][0-9]*)$/.test(k) ? Number(k) : NaN) : k;
            if (typeof t !== "number" || !isInt(t) || t < 0 || t >= vocabSize) throw bad("logitBias", `has a token id ${String(k)} outside [0, ${vocabSize})`);
            if (typeof v !== "number" || (v !== -Infinity && !fitsFloat32(v))) throw bad("logitBias", `has a bias for token ${t} that is not a finite number (up to 3.4e38) or -Infinity`);
            pairs.push([t, v]);
        }
        logitBias = pairs;
    }
    const base: SamplerParams = defined({
        temperature, topK, topP, minP, repeatPenalty, presencePenalty, frequencyPenalty, penaltyLastN, logitBias, logprobs,
        grammar: o.grammar as string | undefined, grammarRoot: o.grammarRoot as string | undefined,
    });
    const seed0 = seed ?? Math.floor(Math.random() * 0xffffffff);
    const samplers = Array.from({ length: n }, (_, i) => (temperature > 0 ? { ...base, seed: (seed0 + i) % 0xffffffff } : { ...base }));
    return {
        n, maxTokens, stopStrings, requestStops: stopStrings.length, stopTokens, ignoreEos: o.ignoreEos === true, priority,
        cacheSalt: (o.cacheSalt as string | undefined) ?? "", useCache: o.cache !== false, samplers, logprobs: logprobs ?? -1,
    };
}
