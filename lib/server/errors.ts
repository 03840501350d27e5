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

/** Where a request is, for naming a field: its body, and which of its generations failed (a prompt of a list). */
export interface FieldContext {
    body: unknown;
    /** The generation (for /v1/completions, the prompt of the list) the error came from, when known. */
    index?: number;
}

/**
 * How one engine field is written in an API's request: a name that replaces the path's head (the rest,
 * an index or a sub-field, is kept), or a function of the rest of the path and the request.
 */
export type FieldRule = string | ((rest: string, at: FieldContext) => string);

/**
 * What an API route tells the error mapping about itself, at its registration: its request's names
 * for the engine's fields ("topK" is "top_k"), and the field a prompt-too-long error points at.
 */
export interface RouteApi {
    /** Engine field paths ("topK", "responseFormat.schema") to this API's; a field not listed keeps its name. */
    fields: Readonly<Record<string, FieldRule>>;
    /** The field a context-length error names: "prompt", "messages". */
    promptField: string;
    /** The shape its errors are answered in: OpenAI's (the default) or Anthropic's (anthropicError). */
    errorShape?: "openai" | "anthropic";
}

/** A route with no table: engine field names pass as they are, a context-length error names 'prompt'. */
export const PLAIN_API: RouteApi = { fields: {}, promptField: "prompt" };

/** Where an error happened: the route's API and the request, so that a field is named in the request's terms. */
export interface ErrorScope extends Partial<FieldContext> {
    api?: RouteApi;
}

/**
 * An engine field path in a request's terms: the longest head of the path ("responseFormat.schema",
 * else "responseFormat") that the table names is replaced, the rest kept ("stop[2]" stays "stop[2]",
 * "topK" becomes "top_k"). A path the table does not know is the request's own name already.
 */
export function requestField(path: string, api: RouteApi, at: FieldContext): string {
    // the heads of the path, longest first: "a.b[2]" has "a.b[2]", "a.b" and "a"
    const cuts = [path.length];
    for (let i = path.length - 1; i > 0; i--) if (path[i] === "." || path[i] === "[") cuts.push(i);
    for (const cut of cuts) {
        const head = path.slice(0, cut);
        if (!Object.hasOwn(api.fields, head)) continue;
        const rule = api.fields[head];
        const rest = path.slice(cut);
        return typeof rule === "string" ? rule + rest : rule(rest, at);
    }
    return path;
}

/** The index a path's rest starts with ("[3].x" is 3), and what follows it; undefined for a rest without one. */
export function leadingIndex(rest: string): { index: number; after: string } | undefined {
    if (!rest.startsWith("[")) return undefined;
    const close = rest.indexOf("]");
    const index = Number(rest.slice(1, close));
    return close > 1 && Number.isInteger(index) && index >= 0 ? { index, after: rest.slice(close + 1) } : undefined;
}

/**
 * An engine error that names its argument (`field`, `reason`; see BatchwiseError) as a 400 naming the
 * request's field: the param is that field in the route's terms, the message `'param' reason`. One that
 * names none is passed as it is, with param null: no message text is read for a name.
 */
function fieldBadRequest(e: BatchwiseError, scope: ErrorScope, param: string | null = null, code: string | null = null): ApiError {
    if (e.field === undefined) return badRequest(e.message, param, code);
    const field = requestField(e.field, scope.api ?? PLAIN_API, { body: scope.body, index: scope.index });
    const message = e.reason !== undefined ? `'${field}' ${e.reason}` : e.message;
    return badRequest(message, param ?? field, code);
}

/**
 * Any error thrown while serving a request, as an ApiError. `scope` says which API's names a field gets
 * and which field a context-length error points at (the route's, from its registration).
 */
export function toApiError(e: unknown, scope: ErrorScope = {}, retryAfter = 1): ApiError {
    if (e instanceof ApiError) return e;
    if (e instanceof BatchwiseError) {
        switch (e.code) {
            case ErrorCode.InvalidArgument:
            case ErrorCode.TokenRange:
            case ErrorCode.SamplerInvalid:
                return fieldBadRequest(e, scope);
            case ErrorCode.ChatTemplate:
                return badRequest(e.message, "messages", "chat_template_error");
            case ErrorCode.ContextLength:
                return fieldBadRequest(e, scope, (scope.api ?? PLAIN_API).promptField, "context_length_exceeded");
            case ErrorCode.QueueFull:
                return new ApiError(429, e.message, "rate_limit_error", null, "queue_full", retryAfter);
            case ErrorCode.EngineClosed:
                return new ApiError(503, "the server is shutting down and takes no new requests", "service_unavailable_error", null, "draining", retryAfter);
            case ErrorCode.EngineFailed:
                // the replica's fault, not the request's: a balancer retries it on another replica (503), and the
                // liveness probe restarts this one (/health is 503)
                return withCause(new ApiError(503, `${e.message}; another replica, or this one once restarted, can serve the request`,
                    "service_unavailable_error", null, "engine_unhealthy", retryAfter), e);
            default:
                return withCause(new ApiError(500, `internal error (${e.code}): ${e.message}`, "server_error", null, e.code), e);
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
    return withCause(new ApiError(500, `internal error: ${e instanceof Error ? e.message : String(e)}`, "server_error"), e);
}

/** A 500 keeps what caused it, for the log. */
function withCause(api: ApiError, cause: unknown): ApiError {
    api.cause = cause;
    return api;
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

// ---- Anthropic's shape -----------------------------------------------------------------------------

/** Anthropic's error types (its API reference, "Errors"). */
export type AnthropicErrorType =
    | "invalid_request_error" | "authentication_error" | "permission_error" | "not_found_error" | "request_too_large"
    | "rate_limit_error" | "api_error" | "overloaded_error";

export interface AnthropicErrorBody {
    type: "error";
    error: { type: AnthropicErrorType; message: string };
    request_id?: string;
}

/**
 * An error in Anthropic's shape, {"type": "error", "error": {"type", "message"}}, with its status: the
 * statuses are Anthropic's (400, 401, 403, 404, 413, 429, 500), except that a full queue, which is the
 * server's load and not the client's rate, is Anthropic's 529 overloaded_error, and a server not ready or
 * draining keeps its 503 (with Retry-After) as an overloaded_error. The message is the same as in
 * OpenAI's shape (it names the request's field in quotes); Anthropic's body has no param or code.
 */
export function anthropicError(e: ApiError, requestId?: string): { status: number; body: AnthropicErrorBody } {
    let status = e.status;
    let type: AnthropicErrorType;
    if (status === 429 && e.code === "queue_full") {
        status = 529;
        type = "overloaded_error";
    } else if (status === 503 || status === 529) {
        type = "overloaded_error";
    } else if (status >= 500) {
        type = "api_error";
    } else {
        const byStatus: Record<number, AnthropicErrorType> = {
            401: "authentication_error", 403: "permission_error", 404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
        };
        type = byStatus[status] ?? "invalid_request_error"; // Anthropic: "we may also use this type for other 4XX status codes"
    }
    return { status, body: { type: "error", error: { type, message: e.message }, ...(requestId !== undefined && { request_id: requestId }) } };
}
