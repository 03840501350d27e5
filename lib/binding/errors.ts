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
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Every error batchwise raises: `code` is stable, `message` says what went wrong and with which value. */
export class BatchwiseError extends Error {
    readonly code: ErrorCode;

    constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
        super(message, options);
        this.name = "BatchwiseError";
        this.code = code;
    }
}

const known = new Set<string>(Object.values(ErrorCode));

/** Converts an error thrown by the native addon into a BatchwiseError (others pass through). */
export function toBatchwiseError(e: unknown): unknown {
    if (e instanceof BatchwiseError) return e;
    if (e instanceof Error && typeof (e as { code?: unknown }).code === "string") {
        const code = (e as unknown as { code: string }).code;
        if (known.has(code)) return new BatchwiseError(code as ErrorCode, e.message, { cause: e });
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
