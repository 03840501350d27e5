// HTTP errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}. Engine errors map to
// statuses here, once: bad input is a 4xx naming its field, a full queue is 429 and a closing or loading
// server 503 (both with Retry-After), and 500 is left for what is really the server's fault.
import { BatchwiseError, ErrorCode } from "../binding/index.js";

export type ErrorType =
    | "invalid_request_error"
    | "authentication_error"
    | "not_found_error"
    | "rate_limit_error"
    | "service_unavailable_error"
    | "server_error";

export class ApiError extends Error {
    constructor(
        readonly status: number,
        message: string,
        readonly type: ErrorType = "invalid_request_error",
        readonly param: string | null = null,
        readonly code: string | null = null,
        /** Seconds, sent as Retry-After (429 and 503). */
        readonly retryAfter?: number,
    ) {
        super(message);
        this.name = "ApiError";
    }

    body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
        return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
    }
}

export const badRequest = (message: string, param: string | null = null, code: string | null = null) =>
    new ApiError(400, message, "invalid_request_error", param, code);

/** The engine's option names, and the OpenAI request fields they come from. */
const FIELD_NAMES: Record<string, string> = {
    maxTokens: "max_tokens", topK: "top_k", topP: "top_p", minP: "min_p", repeatPenalty: "repetition_penalty",
    presencePenalty: "presence_penalty", frequencyPenalty: "frequency_penalty", logitBias: "logit_bias",
    ignoreEos: "ignore_eos", cacheSalt: "cache_salt", responseFormat: "response_format", logprobs: "logprobs",
    penaltyLastN: "penalty_last_n", "responseFormat.schema": "response_format.json_schema.schema",
};

/** Rewrites the engine's field names in a message to the request's, and finds the first one named. */
function openaiFields(message: string): { message: string; param: string | null } {
    let param: string | null = null;
    const out = message.replace(/'([A-Za-z_.]+)(\[\d+\])?'/g, (m, name: string, index: string | undefined) => {
        const api = FIELD_NAMES[name] ?? name;
        param ??= api;
        return `'${api}${index ?? ""}'`;
    });
    return { message: out, param };
}

/**
 * Any error thrown while serving a request, as an ApiError. `promptField` names the field a context-length
 * error points at ("prompt" or "messages").
 */
export function toApiError(e: unknown, promptField = "prompt", retryAfter = 1): ApiError {
    if (e instanceof ApiError) return e;
    if (e instanceof BatchwiseError) {
        switch (e.code) {
            case ErrorCode.InvalidArgument:
            case ErrorCode.TokenRange:
            case ErrorCode.SamplerInvalid: {
                const { message, param } = openaiFields(e.message);
                return badRequest(message, param);
            }
            case ErrorCode.ChatTemplate:
                return badRequest(e.message, "messages", "chat_template_error");
            case ErrorCode.ContextLength:
                return badRequest(openaiFields(e.message).message, promptField, "context_length_exceeded");
            case ErrorCode.QueueFull:
                return new ApiError(429, e.message, "rate_limit_error", null, "queue_full", retryAfter);
            case ErrorCode.EngineClosed:
                return new ApiError(503, "the server is shutting down and takes no new requests", "service_unavailable_error", null, "draining", retryAfter);
            default:
                return new ApiError(500, `internal error (${e.code}): ${e.message}`, "server_error", null, e.code);
        }
    }
    const fe = e as { statusCode?: number; code?: string; message?: string };
    if (fe && typeof fe === "object" && typeof fe.statusCode === "number" && fe.statusCode >= 400 && fe.statusCode < 500) {
        // fastify's own, told apart by code (never by message text): the body, the URL, the media type
        switch (fe.code) {
            case "FST_ERR_CTP_BODY_TOO_LARGE":
                return new ApiError(413, `the request body is larger than the server accepts (${fe.message ?? ""})`, "invalid_request_error", null, "request_too_large");
            case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
                return unsupportedMediaType();
            case "FST_ERR_CTP_INVALID_JSON_BODY":
                // also a body with a __proto__ or constructor.prototype key, which the parser refuses
                return badRequest("the request body is not valid JSON");
            case "FST_ERR_CTP_EMPTY_JSON_BODY":
                return badRequest("the request body is empty: send a JSON object");
            case "FST_ERR_CTP_INVALID_CONTENT_LENGTH":
                return badRequest("the request body's length does not match its Content-Length", null, "malformed_request");
            case "FST_ERR_BAD_URL":
                return badRequest(`the URL is malformed (${fe.message ?? ""})`, null, "invalid_url");
            case "FST_ERR_MAX_PARAM_LENGTH":
                return new ApiError(414, "a path segment of the URL is too long", "invalid_request_error", null, "uri_too_long");
        }
        return new ApiError(fe.statusCode, fe.message ?? "bad request", "invalid_request_error", null, fe.code ?? null);
    }
    return new ApiError(500, `internal error: ${e instanceof Error ? e.message : String(e)}`, "server_error");
}

/**
 * 415 for a body that is not application/json, naming the Content-Type it came with ("" for none).
 * Only JSON is taken: a form or text/plain body is what a browser posts cross-site without a
 * preflight, so parsing those would let any web page drive the server.
 */
export function unsupportedMediaType(contentType?: string): ApiError {
    const got = contentType === undefined ? "" : ` (got ${contentType.trim() === "" ? "none" : `'${contentType.slice(0, 100)}'`})`;
    return new ApiError(415, `the request body must be JSON with Content-Type: application/json${got}; with curl, pass -H 'content-type: application/json'`,
        "invalid_request_error", null, "unsupported_media_type");
}
