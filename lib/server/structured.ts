// What a request body asks of the output beyond sampling, in one place for every generation route:
// its one constraint (OpenAI's response_format, llama-server's grammar and json_schema, vLLM's
// structured_outputs and older guided_* fields) as the engine's grammar or JSON format, and the refusal
// of fields that would change the output and that batchwise does not support. Unknown fields are still
// let through (forward compatibility); a known one that would be ignored is a 400 naming it.
import type { RequestOptions, ResponseFormat } from "../index.js";
import { ErrorCode, fieldError, jsonSchemaToGrammar } from "../binding/index.js";
import { choiceToGrammar, regexToGrammar } from "../engine/constraints.js";
import { badRequest, type FieldRule } from "./errors.js";

export type Route = "completions" | "chat";

type Body = Record<string, unknown>;

const present = (v: unknown) => v !== undefined && v !== null;
const isObject = (v: unknown): v is Body => typeof v === "object" && v !== null && !Array.isArray(v);

// ---- the constraint ---------------------------------------------------------------------------------

type Kind = "json" | "json_object" | "regex" | "choice" | "grammar";

/** One place a constraint can come from: its request field, and what it holds. */
interface Source {
    field: string;
    kind: Kind;
    value: unknown;
}

/** structured_outputs' keys that constrain (one of them per request), and what each is. */
const STRUCTURED_KINDS: Record<string, Kind> = { json: "json", regex: "regex", choice: "choice", grammar: "grammar", json_object: "json_object" };
/** structured_outputs' keys that only hint (how, not what), or that batchwise already honours. */
const STRUCTURED_HINTS = new Set(["backend", "disable_fallback", "disable_additional_properties", "disable_any_whitespace"]);

/** The constraints a body carries, each with the request field it came from (none, one, or the two a 400 names). */
function sources(b: Body): Source[] {
    const out: Source[] = [];
    const f = b.response_format;
    if (isObject(f) && f.type !== "text" && f.type !== undefined) {
        if (f.type === "json_schema") {
            const js = f.json_schema;
            out.push({ field: "response_format.json_schema.schema", kind: "json", value: isObject(js) ? js.schema : undefined });
        } else if (f.type === "json_object") {
            // llama-server takes a schema next to json_object
            if (present(f.schema)) out.push({ field: "response_format.schema", kind: "json", value: f.schema });
            else out.push({ field: "response_format", kind: "json_object", value: true });
        }
    }
    if (present(b.json_schema)) out.push({ field: "json_schema", kind: "json", value: b.json_schema });
    // llama-server reads an empty grammar as none
    if (present(b.grammar) && b.grammar !== "") out.push({ field: "grammar", kind: "grammar", value: b.grammar });
    const so = b.structured_outputs;
    if (present(so)) {
        if (!isObject(so)) throw badRequest("'structured_outputs' must be an object with one of json, regex, choice, grammar, json_object", "structured_outputs");
        const inner: Source[] = [];
        for (const [k, v] of Object.entries(so)) {
            if (!present(v)) continue;
            const kind = STRUCTURED_KINDS[k];
            if (kind === "json_object") {
                if (v === false) continue;
                if (v !== true) throw badRequest("'structured_outputs.json_object' must be true or false", "structured_outputs.json_object");
            }
            if (kind) inner.push({ field: `structured_outputs.${k}`, kind, value: v });
            else if (k === "structural_tag") throw badRequest("'structured_outputs.structural_tag' is not supported: use json, regex, choice or grammar", "structured_outputs.structural_tag", "unsupported_parameter");
            else if (k === "whitespace_pattern") throw badRequest("'structured_outputs.whitespace_pattern' is not supported (JSON whitespace follows llama.cpp's grammar; 'disable_any_whitespace': true removes it)", "structured_outputs.whitespace_pattern", "unsupported_parameter");
            else if (!STRUCTURED_HINTS.has(k)) throw badRequest(`'structured_outputs.${k}' is not a structured-output option batchwise knows (it takes json, regex, choice, grammar, json_object, and the hints backend, disable_fallback, disable_any_whitespace, disable_additional_properties)`, `structured_outputs.${k}`, "unsupported_parameter");
        }
        if (inner.length === 0) throw badRequest("'structured_outputs' needs one of json, regex, choice, grammar or json_object", "structured_outputs");
        if (inner.length > 1) throw both(inner);
        out.push(inner[0]);
    }
    for (const [k, kind] of [["guided_json", "json"], ["guided_regex", "regex"], ["guided_choice", "choice"], ["guided_grammar", "grammar"]] as const) {
        if (present(b[k])) out.push({ field: k, kind, value: b[k] });
    }
    return out;
}

function both(s: Source[]) {
    return badRequest(`'${s[0].field}' and '${s[1].field}' both constrain the output: give only one`, s[1].field);
}

/** The one constraint of a body, or undefined; two are a 400 naming both. */
function source(b: Body): Source | undefined {
    const s = sources(b);
    if (s.length > 1) throw both(s);
    return s[0];
}

/**
 * The request field a body's constraint came from ('grammar', 'structured_outputs.regex',
 * 'response_format.json_schema.schema', ...), for naming the engine's 'grammar' and 'schema' errors in
 * the request's terms; undefined for a body without one (or with a malformed one, refused elsewhere).
 */
export function constraintField(body: unknown): string | undefined {
    if (!isObject(body)) return undefined;
    try {
        return source(body)?.field;
    } catch {
        return undefined;
    }
}

/** A JSON schema given as an object or as its JSON text (vLLM takes both), as an object. */
function schemaObject(v: unknown, field: string): object {
    let s = v;
    if (typeof v === "string") {
        try {
            s = JSON.parse(v);
        } catch {
            throw fieldError(ErrorCode.InvalidArgument, field, "is a string that is not valid JSON (give a JSON schema object, or its JSON text)");
        }
    }
    if (typeof s === "boolean") s = s ? {} : { not: {} };
    if (!isObject(s)) throw fieldError(ErrorCode.InvalidArgument, field, "must be a JSON schema object (or its JSON text)");
    return s;
}

/** llama.cpp's JSON grammars allow whitespace between tokens through one rule, `space`: made empty, there is none. */
function withoutWhitespace(grammar: string, field: string): string {
    const re = /^space ::= .*$/m;
    if (!re.test(grammar)) throw fieldError(ErrorCode.InvalidArgument, field, "cannot be written without whitespace ('disable_any_whitespace')");
    return grammar.replace(re, 'space ::= ""');
}

/** A constraint as engine options: a grammar (GBNF, rule root) or a JSON response format. */
function toOptions(s: Source, noWhitespace: boolean): Pick<RequestOptions, "grammar" | "responseFormat"> {
    switch (s.kind) {
        case "grammar":
            if (typeof s.value !== "string" || s.value.length === 0) throw fieldError(ErrorCode.InvalidArgument, s.field, "must be a non-empty GBNF grammar string");
            return { grammar: s.value };
        case "regex":
            return { grammar: regexToGrammar(s.value as string, s.field) };
        case "choice":
            return { grammar: choiceToGrammar(s.value as string[], s.field) };
        case "json_object":
        case "json": {
            const format: ResponseFormat = s.kind === "json_object" ? { type: "json_object" } : { type: "json_schema", schema: schemaObject(s.value, s.field) };
            if (!noWhitespace) return { responseFormat: format };
            let grammar: string;
            try {
                grammar = jsonSchemaToGrammar(format.type === "json_schema" ? format.schema : { type: "object" });
            } catch (e) {
                const reason = (e as { reason?: string }).reason ?? (e as Error).message;
                throw fieldError(ErrorCode.InvalidArgument, s.field, reason, e);
            }
            return { grammar: withoutWhitespace(grammar, s.field) };
        }
    }
}

// ---- fields refused ----------------------------------------------------------------------------------

/** A field batchwise does not support where it would change the output. */
interface Refused {
    field: string;
    /** The routes it applies to; both when left out. */
    routes?: Route[];
    /** Whether a (present, non-null) value would change the output; always, when left out. */
    changes?: (v: unknown, body: Body) => boolean;
    /** What the 400 says after the field's name. */
    why: string;
}

const not = (neutral: unknown) => (v: unknown) => v !== neutral;
const nonEmpty = (v: unknown) => !(Array.isArray(v) && v.length === 0) && !(isObject(v) && Object.keys(v).length === 0);
const positive = (v: unknown) => typeof v !== "number" || v > 0;

/**
 * The fields (of vLLM's, llama-server's and OpenAI's APIs) that would change the output and that batchwise
 * does not support: each is a 400 naming it, where its value is not the one that changes nothing. Checked
 * in this order; the first present one answers.
 */
export const REFUSED: readonly Refused[] = [
    ...["lora", "lora_request", "lora_adapters", "adapter", "adapters"].map((field) => ({ field, why: "is not supported: batchwise serves no LoRA adapters" })),
    { field: "prompt_logprobs", why: "is not supported: batchwise computes no logprobs for prompt tokens" },
    { field: "best_of", routes: ["chat"], changes: (v, b) => v !== (b.n ?? 1), why: "other than 'n' is not supported" },
    { field: "use_beam_search", changes: not(false), why: "is not supported: batchwise samples, it does no beam search" },
    { field: "length_penalty", changes: not(1), why: "other than 1 is not supported (it is a beam-search parameter)" },
    { field: "early_stopping", changes: not(false), why: "is not supported (it is a beam-search parameter)" },
    { field: "min_tokens", changes: not(0), why: "other than 0 is not supported: the engine cannot hold off end-of-generation yet" },
    { field: "bad_words", changes: nonEmpty, why: "is not supported (ban tokens with 'logit_bias' -100)" },
    { field: "allowed_token_ids", why: "is not supported (restrict the output with a grammar or 'structured_outputs')" },
    { field: "truncate_prompt_tokens", why: "is not supported: a prompt too long for the context is refused, never truncated" },
    { field: "include_stop_str_in_output", changes: not(false), why: "true is not supported: a stop string is never part of the output" },
    { field: "skip_special_tokens", changes: not(true), why: "false is not supported: special tokens are never written to the output" },
    { field: "spaces_between_special_tokens", changes: not(true), why: "false is not supported" },
    { field: "typical_p", changes: not(1), why: "other than 1 is not supported (locally typical sampling)" },
    { field: "typ_p", changes: not(1), why: "other than 1 is not supported (locally typical sampling)" },
    { field: "tfs_z", changes: not(1), why: "other than 1 is not supported (tail-free sampling)" },
    { field: "mirostat", changes: not(0), why: "is not supported (Mirostat sampling)" },
    { field: "dry_multiplier", changes: not(0), why: "other than 0 is not supported (DRY sampling)" },
    { field: "xtc_probability", changes: not(0), why: "other than 0 is not supported (XTC sampling)" },
    { field: "top_n_sigma", changes: positive, why: "is not supported (top-n-sigma sampling)" },
    { field: "dynatemp_range", changes: not(0), why: "other than 0 is not supported (dynamic temperature)" },
    { field: "min_keep", changes: not(0), why: "other than 0 is not supported" },
    { field: "samplers", why: "is not supported: the sampler order is fixed" },
    { field: "n_probs", changes: not(0), why: "is not supported: use 'logprobs' (and 'top_logprobs' on chat)" },
    { field: "post_sampling_probs", changes: not(false), why: "is not supported" },
    { field: "n_predict", why: "is not supported: use 'max_tokens'" },
    { field: "repeat_penalty", changes: not(1), why: "is not supported: use 'repetition_penalty'" },
    { field: "repeat_last_n", why: "is not supported: use 'penalty_last_n'" },
    { field: "t_max_predict_ms", why: "is not supported: limit the output with 'max_tokens'" },
    { field: "t_max_prompt_ms", why: "is not supported" },
    { field: "logits_processors", changes: nonEmpty, why: "is not supported: batchwise runs no custom logits processors" },
    { field: "vllm_xargs", changes: nonEmpty, why: "is not supported: batchwise runs no custom logits processors" },
    { field: "return_tokens_as_token_ids", changes: not(false), why: "is not supported" },
    { field: "return_token_ids", changes: not(false), why: "is not supported: use /tokenize for a prompt's token ids" },
    { field: "prompt_embeds", why: "is not supported: send text or token ids" },
    { field: "image_data", why: "is not supported: batchwise serves text models" },
    { field: "multimodal_data", why: "is not supported: batchwise serves text models" },
    { field: "response_fields", why: "is not supported" },
    { field: "structural_tag", why: "is not supported: use 'structured_outputs' with json, regex, choice or grammar" },
    { field: "guided_whitespace_pattern", why: "is not supported (JSON whitespace follows llama.cpp's grammar)" },
    { field: "echo", routes: ["chat"], changes: not(false), why: "is not supported on chat completions (it is on /v1/completions)" },
    { field: "add_special_tokens", routes: ["chat"], changes: not(false), why: "true is not supported on chat: the chat template writes the special tokens" },
    { field: "audio", why: "is not supported: batchwise answers in text" },
    { field: "modalities", changes: (v) => !(Array.isArray(v) && v.length === 1 && v[0] === "text"), why: "other than [\"text\"] is not supported: batchwise answers in text" },
    { field: "prediction", why: "is not supported (predicted outputs)" },
    { field: "web_search_options", why: "is not supported: batchwise does no web search" },
    { field: "verbosity", changes: not("medium"), why: "other than \"medium\" is not supported: the model's answer length is its own" },
    { field: "stream_options.continuous_usage_stats", changes: not(false), why: "is not supported: usage comes in the last chunk ('include_usage')" },
];

/**
 * The fields known to be only hints (they change nothing in the output, or batchwise has no use for
 * them): accepted with a 200. Listed for the docs and the tests; any other unknown field is let through too.
 */
export const HINTS: readonly string[] = [
    "user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key", "stream_options", "request_id",
    "guided_decoding_backend", "kv_transfer_params", "cache_prompt", "id_slot", "n_keep", "mirostat_tau", "mirostat_eta",
    "dry_base", "dry_allowed_length", "dry_penalty_last_n", "dry_sequence_breakers", "xtc_threshold", "dynatemp_exponent",
];

function valueAt(b: Body, path: string): unknown {
    let v: unknown = b;
    for (const k of path.split(".")) {
        if (!isObject(v)) return undefined;
        v = v[k];
    }
    return v;
}

/** Throws the 400 of the first field of the body that would change the output and is not supported on this route. */
export function refuseUnsupported(body: Body, route: Route): void {
    for (const r of REFUSED) {
        if (r.routes && !r.routes.includes(route)) continue;
        const v = valueAt(body, r.field);
        if (!present(v)) continue;
        if (r.changes && !r.changes(v, body)) continue;
        throw badRequest(`'${r.field}' ${r.why}`, r.field, "unsupported_parameter");
    }
}

// ---- the one entry point -----------------------------------------------------------------------------

/**
 * What a body asks of the output beyond sampling, as engine options: its one constraint (a grammar or a
 * JSON response format; none when the body has none). First refuses, with a 400 naming the field, any
 * field that would change the output and is not supported on this route, and two constraints at once.
 */
export function outputOptions(body: object, route: Route): Pick<RequestOptions, "grammar" | "responseFormat"> {
    const b = body as Body;
    refuseUnsupported(b, route);
    const s = source(b);
    if (!s) return {};
    const so = b.structured_outputs;
    const noWhitespace = s.field.startsWith("structured_outputs.") && isObject(so) && so.disable_any_whitespace === true;
    if (noWhitespace && s.kind !== "json" && s.kind !== "json_object") {
        throw badRequest(`'structured_outputs.disable_any_whitespace' applies to JSON output only, not to '${s.field}'`, "structured_outputs.disable_any_whitespace");
    }
    return toOptions(s, noWhitespace);
}

/**
 * A route table's rule for the engine's grammar and JSON format: the request field the constraint came from, else
 * `fallback` (the route's own name for it).
 */
export const constraintRule = (fallback: string): FieldRule => (rest, at) => (constraintField(at.body) ?? fallback) + rest;
