// What createServer takes, and the HTTP settings resolved from it once, at construction: every other
// piece of the server reads `ServerSettings`, never the raw options.
import { createHash } from "node:crypto";
import type { Logger } from "pino";
import { BatchwiseError, ErrorCode, type Engine, type EngineOptions } from "../index.js";
import { parseOrigin } from "./plugins/cors.js";
import type { WarmupOptions } from "./warmup.js";

export interface ServedModel {
    /** The name clients put in "model". Default: the file name without .gguf. */
    name?: string;
    /** A GGUF file to load (or pass a loaded `engine`). */
    path?: string;
    /** Engine options for `path` (contextSize, maxSequences, gpuLayers, ...). */
    options?: Omit<EngineOptions, "model">;
    /** An engine already loaded; the server closes it when it stops. */
    engine?: Engine;
}

export interface ServerOptions {
    models: ServedModel[];
    /** Default 127.0.0.1. */
    host?: string;
    /** Default 8000; 0 picks a free port. */
    port?: number;
    /** Bearer keys; when set, every route needs one but the probes (/health, /ready, /metrics), and so does a route that does not exist. */
    apiKeys?: string[];
    /** Largest request body in bytes. Default 16 MiB. */
    bodyLimit?: number;
    /**
     * A request's headers must all arrive within this many ms of its first byte, or it gets 408 (a
     * connection that sends nothing is cut the same way). Default 15 s; 0: no limit.
     */
    headersTimeoutMs?: number;
    /**
     * A request body must arrive within this many ms, plus one second per `bodyMinRate` bytes received,
     * or it gets 408: a slow link is never cut while it keeps up that rate, a body that trickles is.
     * Only the upload is timed: a response, a long stream included, is never cut. Default 30 s; 0: no limit.
     */
    bodyTimeoutMs?: number;
    /** Bytes per second that extend a body's time past `bodyTimeoutMs`. Default 4096 (32 kbit/s). */
    bodyMinRate?: number;
    /**
     * Origins that browsers may call the API from (CORS), e.g. "http://localhost:3000", or "*" for any.
     * Preflights are answered before the API key is checked. Default: none, and no CORS headers at all.
     */
    corsOrigins?: string[];
    /** How long SIGTERM-style draining waits for requests in flight. Default 30 s. */
    drainTimeoutMs?: number;
    /** Warm-up before ready (default on). */
    warmup?: boolean | WarmupOptions;
    /** Retry-After seconds on 429 and 503. Default 1. */
    retryAfterSeconds?: number;
    /** /health and /ready turn 503, and requests for the model 503 engine_unhealthy, when an engine with work has not finished a step for this long (a stuck decode). Default 120 s. */
    livenessTimeoutMs?: number;
    /** A pino logger, or false for none. Default: pino at info level on stdout. */
    logger?: Logger | boolean;
    /** Load progress of each model, in [0, 1]. */
    onLoadProgress?: (model: string, progress: number) => void;
}

export type ServerState = "loading" | "warming" | "ready" | "draining" | "stopped" | "failed";

/** The options the HTTP side reads, checked and defaulted. */
export interface ServerSettings {
    /** SHA-256 of each API key; empty: no key needed. */
    keyDigests: Buffer[];
    /** CORS origins: none (null), any ("*"), or these canonical origins. */
    cors: Set<string> | "*" | null;
    retryAfter: number;
    bodyLimit: number;
    headersTimeoutMs: number;
    bodyTimeoutMs: number;
    bodyMinRate: number;
    livenessTimeoutMs: number;
    drainTimeoutMs: number;
}

export function resolveSettings(options: ServerOptions): ServerSettings {
    const origins = (options.corsOrigins ?? []).map(parseOrigin);
    const headersTimeoutMs = timeoutOption("headersTimeoutMs", options.headersTimeoutMs, 15_000);
    const bodyTimeoutMs = timeoutOption("bodyTimeoutMs", options.bodyTimeoutMs, 30_000);
    const bodyMinRate = options.bodyMinRate ?? 4096;
    if (!(bodyMinRate > 0 && Number.isFinite(bodyMinRate))) {
        throw new BatchwiseError(ErrorCode.InvalidArgument, `bodyMinRate must be a positive number of bytes per second (got ${options.bodyMinRate})`);
    }
    return {
        keyDigests: (options.apiKeys ?? []).map((k) => createHash("sha256").update(k).digest()),
        cors: origins.length === 0 ? null : origins.includes("*") ? "*" : new Set(origins),
        retryAfter: options.retryAfterSeconds ?? 1,
        bodyLimit: options.bodyLimit ?? 16 * 2 ** 20,
        headersTimeoutMs,
        bodyTimeoutMs,
        bodyMinRate,
        livenessTimeoutMs: options.livenessTimeoutMs ?? 120_000,
        drainTimeoutMs: options.drainTimeoutMs ?? 30_000,
    };
}

function timeoutOption(name: string, v: number | undefined, fallback: number): number {
    if (v === undefined) return fallback;
    if (!(Number.isFinite(v) && v >= 0)) throw new BatchwiseError(ErrorCode.InvalidArgument, `${name} must be a number of milliseconds >= 0 (got ${v})`);
    return Math.floor(v);
}
