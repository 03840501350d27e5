/** Stable error codes: the native binding's (native/common.h), then the engine's. */
export const ErrorCode = {
    InvalidArgument: "ERR_INVALID_ARGUMENT",
    ModelNotFound: "ERR_MODEL_NOT_FOUND",
    ModelNotGguf: "ERR_MODEL_NOT_GGUF",
    ModelTruncated: "ERR_MODEL_TRUNCATED",
    ModelUnsupported: "ERR_MODEL_UNSUPPORTED",
    ModelLoadFailed: "ERR_MODEL_LOAD_FAILED",
    ModelInUse: "ERR_MODEL_IN_USE",
    ContextCreateFailed: "ERR_CONTEXT_CREATE_FAILED",
    /** The paged KV cache was asked for and llama.cpp cannot page this model on this device (the context is not created). */
    PagedKvUnsupported: "ERR_PAGED_KV_UNSUPPORTED",
    ContextBusy: "ERR_CONTEXT_BUSY",
    Disposed: "ERR_DISPOSED",
    SeqIdRange: "ERR_SEQ_ID_RANGE",
    TokenRange: "ERR_TOKEN_RANGE",
    BatchTooLarge: "ERR_BATCH_TOO_LARGE",
    BatchInvalid: "ERR_BATCH_INVALID",
    KvFull: "ERR_KV_FULL",
    DecodeFailed: "ERR_DECODE_FAILED",
    StateFailed: "ERR_STATE_FAILED",
    SamplerInvalid: "ERR_SAMPLER_INVALID",
    ChatTemplate: "ERR_CHAT_TEMPLATE",
    Io: "ERR_IO",
    NativeNotBuilt: "ERR_NATIVE_NOT_BUILT",
    Internal: "ERR_INTERNAL",
    /** The prompt, or prompt + maxTokens, does not fit the context. */
    ContextLength: "ERR_CONTEXT_LENGTH",
    /** The engine's waiting queue is at maxQueued: retry later. */
    QueueFull: "ERR_QUEUE_FULL",
    /** The engine is closing or closed. */
    EngineClosed: "ERR_ENGINE_CLOSED",
    /** The engine stopped after an internal error: the requests it was serving failed with this, and it takes no more (a new engine is needed). */
    EngineFailed: "ERR_ENGINE_FAILED",
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/**
 * Where an error points, when an argument is at fault: `field` is the path of the offending value in the
 * caller's terms ("topK", "prompt[3]", "responseFormat.schema"), `reason` what is wrong with it ("must be an
 * integer from 0 to 20 (got 21)"). The message then reads `'field' reason`. A server maps the field to its
 * API's names without reading the message.
 */
export interface ErrorDetails {
    cause?: unknown;
    field?: string;
    reason?: string;
}

/** Every error batchwise raises: `code` is stable, `message` says what went wrong and with which value. */
export class BatchwiseError extends Error {
    readonly code: ErrorCode;
    /** The argument at fault, as a path ("topK", "prompt[3]"), when there is one. */
    readonly field?: string;
    /** What is wrong with `field`, without its name. */
    readonly reason?: string;

    constructor(code: ErrorCode, message: string, options?: ErrorDetails) {
        super(message, options?.cause === undefined ? undefined : { cause: options.cause });
        this.name = "BatchwiseError";
        this.code = code;
        if (options?.field !== undefined) this.field = options.field;
        if (options?.reason !== undefined) this.reason = options.reason;
    }
}

/** An error about one argument: the message is `'field' reason`, and both travel as properties. */
export function fieldError(code: ErrorCode, field: string, reason: string, cause?: unknown): BatchwiseError {
    return new BatchwiseError(code, `'${field}' ${reason}`, { field, reason, cause });
}

const known = new Set<string>(Object.values(ErrorCode));

/** Converts an error thrown by the native addon into a BatchwiseError (others pass through). */
export function toBatchwiseError(e: unknown): unknown {
    if (e instanceof BatchwiseError) return e;
    if (e instanceof Error && typeof (e as { code?: unknown }).code === "string") {
        const code = (e as unknown as { code: string }).code;
        if (known.has(code)) {
            // the addon names the argument at fault as properties, like fieldError
            const { field, reason } = e as { field?: unknown; reason?: unknown };
            return new BatchwiseError(code as ErrorCode, e.message, {
                cause: e, field: typeof field === "string" ? field : undefined, reason: typeof reason === "string" ? reason : undefined,
            });
        }
    }
    if (e instanceof TypeError || e instanceof RangeError) {
        return new BatchwiseError(ErrorCode.InvalidArgument, e.message, { cause: e });
    }
    return e;
}

/** Runs `fn`, rethrowing native errors as BatchwiseError. */
export function native<T>(fn: () => T): T {
    try {
        return fn();
    } catch (e) {
        throw toBatchwiseError(e);
    }
}

/** Awaits a native promise, rejecting with a BatchwiseError. */
export async function nativeAsync<T>(fn: () => Promise<T>): Promise<T> {
    try {
        return await fn();
    } catch (e) {
        throw toBatchwiseError(e);
    }
}
