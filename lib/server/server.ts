// The OpenAI-compatible HTTP server: fastify routes over one engine per served model. It listens at
// once, so that /health and /ready answer while the models load and warm up; /ready turns 200 only
// when every model is loaded and warmed, and back to 503 when draining starts.
import { createHash, randomUUID, timingSafeEqual } from "node:crypto";
import { setMaxListeners } from "node:events";
import { maxHeaderSize, STATUS_CODES, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { basename } from "node:path";
import Fastify, { LogController, type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import type { Logger } from "pino";
import { BatchwiseError, Engine, ErrorCode, type EngineOptions, type GenerateEvent, type GenerateResult, type Generation } from "../index.js";
import { ApiError, badRequest, toApiError, unsupportedMediaType, type ErrorScope, type RouteApi } from "./errors.js";
import { ServerMetrics } from "./metrics.js";
import {
    chatApi, chatLogprobs, chatRequest, completionApi, completionLogprobs, completionRequests, tokenizeApi, usage,
    type ChatBody, type CompletionBody,
} from "./openai.js";
import { chatBody, completionBody, detokenizeBody, tokenizeBody } from "./schemas.js";
import { warmUp, type WarmupOptions } from "./warmup.js";

declare module "fastify" {
    interface FastifyContextConfig {
        /** The API a route speaks (its request's names for the engine's fields), read by the error handler. */
        api?: RouteApi;
    }
}

/** The error of a request in its route's terms: its API's field names (from the route's registration), its body. */
function scopeOf(req: FastifyRequest): ErrorScope {
    return { api: req.routeOptions?.config?.api, body: req.body };
}

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
    /** Bearer keys; when set, /v1/*, /tokenize and /detokenize need one. Probes and /metrics stay open. */
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
    /** /health turns 503 when an engine with work has not finished a step for this long (a stuck decode). Default 120 s. */
    livenessTimeoutMs?: number;
    /** A pino logger, or false for none. Default: pino at info level on stdout. */
    logger?: Logger | boolean;
    /** Load progress of each model, in [0, 1]. */
    onLoadProgress?: (model: string, progress: number) => void;
}

export type ServerState = "loading" | "warming" | "ready" | "draining" | "stopped" | "failed";

interface ModelEntry {
    name: string;
    spec: ServedModel;
    engine: Engine | undefined;
    created: number;
    warmupMs: number;
}

const PROTECTED = /^\/(v1\/|tokenize|detokenize)/;
/** A client's x-request-id is echoed when it is this sane (no header injection, no log spam). */
const SANE_ID = /^[\w.:-]{1,128}$/;
const PROBES = new Set(["/health", "/ready", "/metrics"]);

interface RequestInfo {
    model?: string;
    promptTokens?: number;
    completionTokens?: number;
    cachedTokens?: number;
    ttftMs?: number;
    finishReasons?: string[];
    stream?: boolean;
}

export class BatchwiseServer {
    readonly app: FastifyInstance;
    readonly metrics: ServerMetrics;
    private readonly entries = new Map<string, ModelEntry>();
    private stateValue: ServerState = "loading";
    private failure: unknown = null;
    private inflight = 0;
    private readonly controllers = new Set<AbortController>();
    private readonly keyDigests: Buffer[];
    private readonly retryAfter: number;
    private startup!: Promise<void>;
    private stopping: Promise<void> | null = null;
    private readonly info = new WeakMap<FastifyRequest, RequestInfo>();
    /** The response in flight on each socket, so that an error the HTTP parser raises mid-request answers with its id. */
    private readonly inFlight = new WeakMap<Duplex, { id: string; res: ServerResponse }>();
    /** Responses written straight on the socket (a body timeout, a parse error mid-body), with their status, for the log line. */
    private readonly rawStatus = new WeakMap<ServerResponse, number>();
    private readonly answered = new WeakSet<Duplex>();
    private readonly cors: Set<string> | "*" | null;
    private readonly headersTimeoutMs: number;
    private readonly bodyTimeoutMs: number;
    private readonly bodyMinRate: number;
    url = "";

    private constructor(private readonly options: ServerOptions) {
        this.retryAfter = options.retryAfterSeconds ?? 1;
        this.keyDigests = (options.apiKeys ?? []).map((k) => createHash("sha256").update(k).digest());
        const origins = (options.corsOrigins ?? []).map(parseOrigin);
        this.cors = origins.length === 0 ? null : origins.includes("*") ? "*" : new Set(origins);
        this.headersTimeoutMs = timeoutOption("headersTimeoutMs", options.headersTimeoutMs, 15_000);
        this.bodyTimeoutMs = timeoutOption("bodyTimeoutMs", options.bodyTimeoutMs, 30_000);
        this.bodyMinRate = options.bodyMinRate ?? 4096;
        if (!(this.bodyMinRate > 0 && Number.isFinite(this.bodyMinRate))) {
            throw new BatchwiseError(ErrorCode.InvalidArgument, `bodyMinRate must be a positive number of bytes per second (got ${options.bodyMinRate})`);
        }
        for (const spec of options.models) {
            const name = spec.name ?? (spec.path ? basename(spec.path).replace(/\.gguf$/i, "") : undefined);
            if (!name) throw new BatchwiseError(ErrorCode.InvalidArgument, "a served model needs a name or a path");
            if (this.entries.has(name)) throw new BatchwiseError(ErrorCode.InvalidArgument, `two models are named '${name}': give them distinct names`);
            if (!spec.engine && !spec.path) throw new BatchwiseError(ErrorCode.InvalidArgument, `model '${name}' needs a path or an engine`);
            this.entries.set(name, { name, spec, engine: spec.engine, created: Math.floor(Date.now() / 1000), warmupMs: 0 });
        }
        if (this.entries.size === 0) throw new BatchwiseError(ErrorCode.InvalidArgument, "the server needs at least one model");
        this.metrics = new ServerMetrics(() => [...this.entries.values()].map((e) => ({ name: e.name, engine: e.engine })), () => this.stateValue === "ready");
        this.app = this.build();
    }

    /** Builds the server, starts listening, and starts loading and warming the models (see ready()). */
    static async start(options: ServerOptions): Promise<BatchwiseServer> {
        if (options === null || typeof options !== "object" || !Array.isArray(options.models)) {
            throw new BatchwiseError(ErrorCode.InvalidArgument, "the server needs { models: [{ path | engine, name? }] }");
        }
        const server = new BatchwiseServer(options);
        try {
            const address = await server.app.listen({ host: options.host ?? "127.0.0.1", port: options.port ?? 8000 });
            server.url = address;
        } catch (e) {
            await server.closeEngines();
            throw e;
        }
        server.startup = server.load();
        server.startup.catch(() => {});
        return server;
    }

    get state(): ServerState {
        return this.stateValue;
    }

    /** Resolves when every model is loaded and warmed up; rejects if one failed to load. */
    ready(): Promise<void> {
        return this.startup;
    }

    /** The engine serving a model (undefined while it loads). */
    engine(name: string): Engine | undefined {
        return this.entries.get(name)?.engine;
    }

    get modelNames(): string[] {
        return [...this.entries.keys()];
    }

    /** What each model uses, for the startup summary. */
    summary(): { name: string; engine: Engine; warmupMs: number }[] {
        return [...this.entries.values()].filter((e) => e.engine).map((e) => ({ name: e.name, engine: e.engine!, warmupMs: e.warmupMs }));
    }

    private log(): Logger | undefined {
        return this.options.logger === false ? undefined : (this.app.log as unknown as Logger);
    }

    private async load(): Promise<void> {
        try {
            for (const e of this.entries.values()) {
                if (!e.engine) {
                    const onProgress = this.options.onLoadProgress ? (p: number) => this.options.onLoadProgress!(e.name, p) : undefined;
                    e.engine = await Engine.load({ ...e.spec.options, model: e.spec.path!, ...(onProgress && { onProgress }) });
                    if (this.stopping) throw new BatchwiseError(ErrorCode.EngineClosed, "the server stopped while loading");
                }
            }
            this.stateValue = "warming";
            const w = this.options.warmup ?? true;
            for (const e of this.entries.values()) {
                if (w !== false) {
                    const r = await warmUp(e.engine!, w === true ? {} : w);
                    e.warmupMs = r.ms;
                    this.metrics.warmupSeconds.set({ model_name: e.name }, r.ms / 1000);
                    this.log()?.info({ model: e.name, requests: r.requests, ms: Math.round(r.ms) }, "warm-up done");
                }
                this.metrics.resetBaseline(e.name, e.engine!);
                if (this.stopping) throw new BatchwiseError(ErrorCode.EngineClosed, "the server stopped while warming up");
            }
            if (this.stateValue === "warming") this.stateValue = "ready";
        } catch (e) {
            this.failure = e;
            if (!this.stopping) {
                this.stateValue = "failed";
                this.log()?.error({ err: e }, "loading the models failed");
            }
            throw e;
        }
    }

    /**
     * Graceful stop: /ready turns 503 and new generation requests get 503 at once; requests in flight
     * finish, for up to `timeoutMs`, and are aborted after it; then the engines and the listener close.
     */
    drain(timeoutMs = this.options.drainTimeoutMs ?? 30_000): Promise<void> {
        this.stopping ??= (async () => {
            this.stateValue = "draining";
            const deadline = performance.now() + timeoutMs;
            while (this.inflight > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
            for (const c of this.controllers) c.abort();
            // aborted requests end at the engine's next step; a wedged decode must not hold the stop forever
            const hard = performance.now() + 10_000;
            while (this.inflight > 0 && performance.now() < hard) await new Promise((r) => setTimeout(r, 5));
            await this.startup?.catch(() => {});
            // close() ends the connections idle at that moment; one whose request was in flight goes idle later and
            // would hold the listener open for the keep-alive timeout (72 s), past any drain deadline: end those too
            const closing = this.app.close();
            const idle = setInterval(() => this.app.server.closeIdleConnections(), 50);
            try {
                await closing;
            } finally {
                clearInterval(idle);
            }
            await this.closeEngines();
            this.stateValue = "stopped";
        })();
        return this.stopping;
    }

    /** Stops now: requests in flight are aborted. */
    close(): Promise<void> {
        return this.drain(0);
    }

    private async closeEngines(): Promise<void> {
        await Promise.all([...this.entries.values()].map((e) => e.engine?.close()));
    }

    // ---- HTTP -----------------------------------------------------------------------------------

    private build(): FastifyInstance {
        const logger = this.options.logger;
        const app = Fastify({
            loggerInstance: typeof logger === "object" ? logger : undefined,
            logger: typeof logger === "object" ? undefined : logger === false ? false : { level: "info" },
            logController: new LogController({ disableRequestLogging: true }), // one line a request, from onResponse
            bodyLimit: this.options.bodyLimit ?? 16 * 2 ** 20,
            requestIdHeader: false,
            genReqId: (req: IncomingMessage) => requestId(req.headers["x-request-id"]),
            ajv: { customOptions: { allErrors: true, coerceTypes: false, removeAdditional: false, useDefaults: false, verbose: true } },
            return503OnClosing: false,
            http: {
                // node's own clock for the headers (it also cuts a connection that sends nothing); the body's
                // is ours (watchBody), as node's requestTimeout is one fixed bound that a slow link would hit
                headersTimeout: this.headersTimeoutMs,
                requestTimeout: 0,
                // how often node looks for expired headers: the cut comes at most this late
                connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor((this.headersTimeoutMs || 10_000) / 10))),
                // node answers a missing Host with a bare 400; the onRequest hook answers it in our shape
                requireHostHeader: false,
            },
            // what node's HTTP parser refuses (bad Content-Length, CR/LF or NUL in a header, chunked plus
            // Content-Length, headers too large, a headers timeout) never reaches a route: answer it here
            clientErrorHandler: (err: Error, socket: Duplex) => this.onClientError(err, socket),
            // a URL that does not decode, or too long a path segment
            frameworkErrors: (err: Error, req: FastifyRequest, reply: FastifyReply) => {
                const e = toApiError(err);
                this.metrics.httpRequest("unknown", e.status);
                req.log.info({ method: req.method, url: req.url, status: e.status }, "request");
                void reply.code(e.status).header("x-request-id", req.id).send(e.body());
            },
        } as Parameters<typeof Fastify>[0]) as unknown as FastifyInstance;

        // only JSON bodies (fastify's parser, which also refuses __proto__ keys): a form or text/plain body
        // is what any web page can make a browser post here cross-site, with no preflight; those get 415
        app.removeContentTypeParser("text/plain");
        // an Expect other than 100-continue: node would answer a bare 417
        app.server.on("checkExpectation", (req: IncomingMessage, res: ServerResponse) => {
            const e = new ApiError(417, `the server does not support 'Expect: ${String(req.headers.expect).slice(0, 100)}' (only 100-continue)`,
                "invalid_request_error", null, "expectation_failed");
            this.metrics.httpRequest("unknown", 417);
            const body = JSON.stringify(e.body());
            res.writeHead(417, { "content-type": "application/json; charset=utf-8", "content-length": Buffer.byteLength(body), "x-request-id": requestId(req.headers["x-request-id"]), connection: "close" });
            res.end(body);
        });

        app.addHook("onRequest", async (req, reply) => {
            (req as unknown as { bwStart: number }).bwStart = performance.now();
            reply.header("x-request-id", req.id);
            this.inFlight.set(req.raw.socket, { id: req.id, res: reply.raw });
            // a client that goes away before the response ends gets its line too (status 499, as nginx logs
            // it), unless the server cut it off itself (408 for a body that trickled)
            reply.raw.once("close", () => {
                if (this.inFlight.get(req.raw.socket)?.res === reply.raw) this.inFlight.delete(req.raw.socket);
                if (!reply.raw.writableFinished) this.logRequest(req, this.rawStatus.get(reply.raw) ?? 499);
            });
            if (this.bodyTimeoutMs > 0) this.watchBody(req, reply);
            if (req.raw.httpVersion === "1.1" && req.headers.host === undefined) {
                throw badRequest("an HTTP/1.1 request needs a Host header", null, "malformed_request");
            }
            if (this.cors && this.corsHeaders(req, reply)) return reply; // a preflight, answered
            // the route fastify matched (after decoding the path), not the raw URL: /%761/completions is /v1/completions
            if (this.keyDigests.length > 0 && PROTECTED.test(req.routeOptions.url ?? req.url)) this.authorize(req);
        });
        app.addHook("onResponse", async (req, reply) => this.logRequest(req, reply.statusCode));

        app.setErrorHandler((err, req, reply) => {
            let e: ApiError;
            if ((err as { validation?: unknown }).validation) e = validationError(err as unknown as ValidationFailure);
            else if ((err as { code?: string }).code === "FST_ERR_CTP_INVALID_MEDIA_TYPE") e = unsupportedMediaType(req.headers["content-type"] ?? "");
            else e = toApiError(err, scopeOf(req), this.retryAfter);
            if (e.status >= 500) req.log.error({ err }, "request failed");
            if (e.retryAfter !== undefined) reply.header("retry-after", String(e.retryAfter));
            void reply.code(e.status).send(e.body());
        });
        app.setNotFoundHandler((req, reply) => {
            void reply.code(404).send(new ApiError(404, `no route ${req.method} ${req.url.split("?")[0]}`, "not_found_error", null, "not_found").body());
        });

        app.get("/health", async (_req, reply) => {
            const stallLimit = this.options.livenessTimeoutMs ?? 120_000;
            const failed: { model: string; reason: string }[] = [];
            for (const e of this.entries.values()) {
                const s = e.engine?.stats();
                if (!s) continue;
                if (!s.healthy) failed.push({ model: e.name, reason: "the engine loop stopped after an internal error" });
                else if (s.stalledMs > stallLimit) failed.push({ model: e.name, reason: `no step finished for ${Math.round(s.stalledMs / 1000)} s with work waiting` });
            }
            if (failed.length > 0 || this.stateValue === "failed") {
                return reply.code(503).send({ status: "error", failed, error: this.failure ? String(this.failure) : undefined });
            }
            return { status: "ok", state: this.stateValue };
        });
        app.get("/ready", async (_req, reply) => {
            if (this.stateValue === "ready") return { status: "ready", models: this.modelNames };
            void reply.header("retry-after", String(this.retryAfter));
            return reply.code(503).send({ status: this.stateValue });
        });
        app.get("/metrics", async (_req, reply) => {
            const text = await this.metrics.text();
            return reply.header("content-type", this.metrics.registry.contentType).send(text);
        });
        app.get("/v1/models", async () => ({
            object: "list",
            data: [...this.entries.values()].map((e) => ({
                id: e.name, object: "model", created: e.created, owned_by: "batchwise",
                max_model_len: e.engine?.maxContext ?? null,
            })),
        }));
        app.get<{ Params: { id: string } }>("/v1/models/:id", async (req) => {
            const e = this.entries.get(req.params.id);
            if (!e) throw modelNotFound(req.params.id, this.modelNames);
            return { id: e.name, object: "model", created: e.created, owned_by: "batchwise", max_model_len: e.engine?.maxContext ?? null };
        });
        app.post<{ Body: CompletionBody }>("/v1/completions", { schema: { body: completionBody }, config: { api: completionApi } }, (req, reply) => this.completions(req, reply));
        app.post<{ Body: ChatBody }>("/v1/chat/completions", { schema: { body: chatBody }, config: { api: chatApi } }, (req, reply) => this.chat(req, reply));
        app.post<{ Body: { model?: string; prompt?: string; messages?: ChatBody["messages"]; add_special_tokens?: boolean; add_generation_prompt?: boolean } }>(
            "/tokenize", { schema: { body: tokenizeBody }, config: { api: tokenizeApi } }, async (req) => {
                const { name, engine } = this.pick(req.body.model, false);
                let text: string;
                let addSpecial = req.body.add_special_tokens ?? true;
                if (req.body.messages) {
                    const chat = chatRequest({ messages: req.body.messages });
                    text = engine.formatChat(chat.messages, { addGenerationPrompt: req.body.add_generation_prompt ?? true });
                    addSpecial = req.body.add_special_tokens ?? false;
                } else {
                    text = req.body.prompt!;
                }
                const tokens = await engine.tokenize(text, { addSpecial });
                return { model: name, tokens, count: tokens.length, max_model_len: engine.maxContext };
            });
        app.post<{ Body: { model?: string; tokens: number[] } }>("/detokenize", { schema: { body: detokenizeBody }, config: { api: tokenizeApi } }, async (req) => {
            const { engine } = this.pick(req.body.model, false);
            return { prompt: await engine.detokenize(req.body.tokens) };
        });
        return app;
    }

    private authorize(req: FastifyRequest): void {
        const h = req.headers.authorization;
        const m = typeof h === "string" ? /^Bearer\s+(.+)$/i.exec(h.trim()) : null;
        let ok = false;
        if (m) {
            const d = createHash("sha256").update(m[1]).digest();
            // compare against every key, always, so the time taken says nothing about which matched
            for (const k of this.keyDigests) ok = timingSafeEqual(d, k) || ok;
        }
        if (!ok) {
            throw new ApiError(401, m ? "Incorrect API key provided." : "You didn't provide an API key: send it as 'Authorization: Bearer KEY'.",
                "authentication_error", null, "invalid_api_key");
        }
    }

    /**
     * An error node's HTTP parser raised ('clientError'): a malformed request, headers too large, a
     * headers timeout. No route saw it, so it is answered here, in raw HTTP on the socket, in the API's
     * shape with an x-request-id (the request's own when one was in flight on the socket).
     */
    private onClientError(err: Error & { code?: string; reason?: string; rawPacket?: Buffer }, socket: Duplex): void {
        if (err.code === "ECONNRESET" || socket.destroyed) return;
        const live = this.inFlight.get(socket);
        // a response already under way: nothing can be written in its middle (node does the same)
        if (live?.res.headersSent) {
            socket.destroy();
            return;
        }
        const e = clientError(err, this.headersTimeoutMs);
        const id = live?.id ?? idFromRawRequest(err.rawPacket) ?? randomUUID();
        if (live) this.rawStatus.set(live.res, e.status); // logged and counted when its response closes
        else this.metrics.httpRequest("unknown", e.status);
        // the request's own line comes when its response closes; one that never reached a route gets this one
        if (!live) this.log()?.info({ reqId: id, status: e.status, code: err.code, reason: err.reason }, "request refused by the HTTP parser");
        this.answerOnSocket(socket, e, id);
    }

    /** Writes `e` as a whole HTTP response on the socket and closes it. */
    private answerOnSocket(socket: Duplex, e: ApiError, id: string): void {
        if (this.answered.has(socket)) return; // the parser reports every later chunk of a broken request again
        this.answered.add(socket);
        if (!socket.writable) {
            socket.destroy();
            return;
        }
        const body = JSON.stringify(e.body());
        socket.end(`HTTP/1.1 ${e.status} ${STATUS_CODES[e.status] ?? ""}\r\ncontent-type: application/json; charset=utf-8\r\n` +
            `content-length: ${Buffer.byteLength(body)}\r\nx-request-id: ${id}\r\nconnection: close\r\n\r\n${body}`, () => socket.destroy());
        // a client that does not read must not hold the socket either
        setTimeout(() => socket.destroy(), 2000).unref();
    }

    /**
     * The body timeout: `bodyTimeoutMs` for the whole body, plus a second per `bodyMinRate` bytes it
     * has sent, so that a slow but steady upload is never cut and a trickle (slowloris) is. Only the
     * upload is timed: once the body is in, the response may take as long as it takes. A request
     * answered before its body was read (401, 415) keeps the clock: node reads the rest of that body
     * to get to the next request, and a trickle must not hold the connection that way either.
     */
    private watchBody(req: FastifyRequest, reply: FastifyReply): void {
        const raw = req.raw;
        const length = req.headers["content-length"];
        if (raw.complete || (req.headers["transfer-encoding"] === undefined && (length === undefined || length === "0"))) return;
        const socket = raw.socket;
        const start = performance.now();
        const read0 = socket.bytesRead;
        let timer: NodeJS.Timeout | undefined;
        const check = () => {
            if (raw.complete || socket.destroyed) return;
            const deadline = start + this.bodyTimeoutMs + ((socket.bytesRead - read0) / this.bodyMinRate) * 1000;
            const now = performance.now();
            if (now < deadline) {
                timer = setTimeout(check, deadline - now + 1);
                return;
            }
            if (reply.raw.headersSent) {
                // answered already (a 401, a 415), its body still coming: only the connection is left to close
                socket.destroy();
                return;
            }
            const e = new ApiError(408, `the request body did not arrive in time: a body gets ${this.bodyTimeoutMs / 1000} s plus 1 s per ${this.bodyMinRate} bytes sent ` +
                `(${socket.bytesRead - read0} bytes came in ${((now - start) / 1000).toFixed(1)} s)`, "invalid_request_error", null, "request_timeout");
            this.rawStatus.set(reply.raw, 408);
            req.log.info({ bytes: socket.bytesRead - read0, ms: Math.round(now - start) }, "request body timed out");
            this.answerOnSocket(socket, e, req.id);
        };
        timer = setTimeout(check, this.bodyTimeoutMs);
        // listeners on the request, not the socket: a keep-alive socket outlives its requests, and one listener
        // per request on it piled up (and held every request's closures) for as long as the client stayed
        const stop = () => clearTimeout(timer);
        raw.once("end", stop);
        raw.once("close", stop);
    }

    /**
     * CORS, when `corsOrigins` is set: an allowed Origin gets Access-Control-Allow-Origin on every
     * response, and its preflight (OPTIONS with Access-Control-Request-Method) a 204 with the methods and
     * headers allowed. Returns true when it answered a preflight. A preflight is answered before the API
     * key is checked: browsers never send credentials on one.
     */
    private corsHeaders(req: FastifyRequest, reply: FastifyReply): boolean {
        const origin = req.headers.origin;
        const preflight = req.method === "OPTIONS" && req.headers["access-control-request-method"] !== undefined;
        if (this.cors !== "*") reply.header("vary", "Origin");
        const allowed = typeof origin === "string" && (this.cors === "*" || this.cors!.has(canonicalOrigin(origin) ?? ""));
        if (allowed) {
            reply.header("access-control-allow-origin", this.cors === "*" ? "*" : origin);
            reply.header("access-control-expose-headers", "x-request-id, retry-after");
        }
        if (!preflight || typeof origin !== "string") return false;
        if (!allowed) {
            throw new ApiError(403, `origin '${origin.slice(0, 200)}' is not allowed to call this server (allowed: --cors-origin)`, "invalid_request_error", null, "origin_not_allowed");
        }
        // the headers it asked for (the openai SDK sends x-stainless-* ones), and ours
        const asked = String(req.headers["access-control-request-headers"] ?? "").split(",").map((h) => h.trim().toLowerCase()).filter((h) => /^[!#$%&'*+.^_`|~0-9a-z-]{1,100}$/.test(h));
        const headers = [...new Set(["authorization", "content-type", "x-request-id", ...asked])];
        void reply.code(204)
            .header("access-control-allow-methods", "GET, POST, OPTIONS")
            .header("access-control-allow-headers", headers.join(", "))
            .header("access-control-max-age", "600")
            .send();
        return true;
    }

    private readonly logged = new WeakSet<FastifyRequest>();

    private logRequest(req: FastifyRequest, status: number): void {
        if (this.logged.has(req)) return;
        this.logged.add(req);
        const route = req.routeOptions?.url ?? "unknown";
        this.metrics.httpRequest(route, status);
        const i = this.info.get(req);
        const line = {
            method: req.method, url: req.url, status, ms: Math.round((performance.now() - (req as unknown as { bwStart: number }).bwStart) || 0), ...i,
        };
        if (PROBES.has(route)) req.log.debug(line, "request");
        else req.log.info(line, "request");
    }

    /** The engine for a request's "model" (the only one when it is left out). */
    private pick(model: string | undefined, forGeneration = true): { name: string; engine: Engine } {
        if (forGeneration && this.stateValue !== "ready") {
            const why = this.stateValue === "draining" || this.stateValue === "stopped"
                ? "the server is shutting down and takes no new requests"
                : this.stateValue === "failed" ? "the server failed to load its models" : `the server is not ready yet (${this.stateValue})`;
            throw new ApiError(503, why, "service_unavailable_error", null, this.stateValue === "draining" ? "draining" : "not_ready", this.retryAfter);
        }
        let e: ModelEntry | undefined;
        if (model === undefined) {
            if (this.entries.size > 1) throw badRequest(`'model' is required: this server has ${this.modelNames.join(", ")}`, "model");
            e = this.entries.values().next().value;
        } else {
            e = this.entries.get(model);
            if (!e) throw modelNotFound(model, this.modelNames);
        }
        if (!e!.engine) throw new ApiError(503, `model '${e!.name}' is still loading`, "service_unavailable_error", null, "not_ready", this.retryAfter);
        return { name: e!.name, engine: e!.engine };
    }

    /** Runs generations for one HTTP request: tracks them for draining and aborts them if the client goes. */
    private async serve(req: FastifyRequest, reply: FastifyReply, model: string | undefined,
        start: (engine: Engine, signal: AbortSignal) => Generation[],
        respond: (name: string, engine: Engine, gens: Generation[]) => Promise<unknown>): Promise<unknown> {
        // a model name the server does not have is not a label value: clients could mint series at will
        let name = model !== undefined && this.entries.has(model) ? model : "unknown";
        let queued = false;
        try {
            const picked = this.pick(model);
            name = picked.name;
            this.info.set(req, { model: name });
            const ac = new AbortController();
            setMaxListeners(0, ac.signal); // one listener per generation: a list of prompts has many
            this.inflight++;
            this.controllers.add(ac);
            const onClose = () => {
                if (!reply.raw.writableFinished && !ac.signal.aborted) {
                    this.metrics.disconnect(name);
                    ac.abort();
                }
            };
            reply.raw.on("close", onClose);
            try {
                const gens = start(picked.engine, ac.signal);
                try {
                    // a generation that fails to queue names its field in the route's terms (the index: which prompt)
                    await Promise.all(gens.map((g, index) => g.queued().catch((e: unknown) => {
                        throw toApiError(e, { ...scopeOf(req), index }, this.retryAfter);
                    })));
                } catch (e) {
                    ac.abort();
                    throw e;
                }
                queued = true;
                return await respond(name, picked.engine, gens);
            } finally {
                // whatever ended the response (done, error, disconnect), nothing of it runs on unread
                ac.abort();
                this.inflight--;
                this.controllers.delete(ac);
            }
        } catch (e) {
            if (!queued) {
                const api = e instanceof ApiError ? e : toApiError(e, scopeOf(req));
                this.metrics.reject(name, api.code ?? String(api.status));
            }
            throw e;
        }
    }

    private record(req: FastifyRequest, name: string, results: GenerateResult[], stream: boolean): void {
        for (const r of results) this.metrics.observe(name, r);
        const u = usage(results);
        const ttft = results.map((r) => r.timings.ttftMs).filter((t) => t >= 0); // -1: ended before a token
        this.info.set(req, {
            model: name, stream, promptTokens: u.prompt_tokens, completionTokens: u.completion_tokens, cachedTokens: u.prompt_tokens_details.cached_tokens,
            ttftMs: ttft.length > 0 ? Math.round(Math.min(...ttft)) : undefined,
            finishReasons: results.flatMap((r) => r.choices.map((c) => c.finishReason)),
        });
    }

    /**
     * Streams generations as server-sent events: `opening` chunks, then each event's choices (null: none),
     * an error event for a choice that failed, the usage chunk when asked for, and [DONE].
     */
    private stream(req: FastifyRequest, reply: FastifyReply, name: string, head: { id: string; object: string; created: number },
        gens: Generation[], includeUsage: boolean, choices: (prompt: number, ev: StreamEvent) => unknown[] | null, opening: unknown[][] = []): Promise<unknown> {
        const sse = new Sse(reply, req.id);
        const scope = scopeOf(req);
        return sse.guard(req, scope, async () => {
            const chunk = (cs: unknown[]) => ({ ...head, model: name, choices: cs, ...(includeUsage && { usage: null }) });
            for (const cs of opening) sse.send(chunk(cs));
            const results = await Promise.all(gens.map((g, p) => pump(g, (ev) => {
                if (ev.type === "finish" && ev.finishReason === "error") return sse.send(choiceError(ev.error, { ...scope, index: p }).body());
                const cs = choices(p, ev);
                if (cs) sse.send(chunk(cs));
            })));
            this.record(req, name, results, true);
            if (includeUsage) sse.send({ ...head, model: name, choices: [], usage: usage(results) });
            sse.end();
        });
    }

    private completions(req: FastifyRequest<{ Body: CompletionBody }>, reply: FastifyReply): Promise<unknown> {
        const b = req.body;
        const id = `cmpl-${req.id}`;
        const created = Math.floor(Date.now() / 1000);
        const n = b.n ?? 1;
        let requests: ReturnType<typeof completionRequests>;
        return this.serve(req, reply, b.model, (engine, signal) => {
            requests = completionRequests(b);
            // every prompt's choices wait in the engine's queue together: a request the queue can never hold is a 400
            if (requests.length * n > engine.maxQueued) {
                throw badRequest(`${requests.length} prompts x 'n' ${n} is ${requests.length * n} sequences, more than the server queues at once (${engine.maxQueued})`, "n");
            }
            return requests.map((r) => engine.generate({ ...r, signal }));
        }, async (name, engine, gens) => {
            const echoes = b.echo
                ? await Promise.all(requests.map((r) => (typeof r.prompt === "string" ? r.prompt : engine.detokenize(Array.from(r.prompt)))))
                : requests.map(() => "");
            if (b.stream) {
                const offsets = new Map<number, number>(); // text streamed so far per choice; present once its echo went out
                return this.stream(req, reply, name, { id, object: "text_completion", created }, gens, b.stream_options?.include_usage === true, (p, ev) => {
                    const index = p * n + ev.index;
                    const sent = offsets.get(index);
                    if (ev.type === "finish") return [{ index, text: sent === undefined ? echoes[p] : "", logprobs: null, finish_reason: ev.finishReason }];
                    const text = sent === undefined ? echoes[p] + ev.text : ev.text;
                    if (text.length === 0 && !ev.logprobs) return null;
                    offsets.set(index, (sent ?? 0) + text.length);
                    return [{ index, text, logprobs: ev.logprobs ? completionLogprobs(engine, ev.logprobs, sent ?? 0) : null, finish_reason: null }];
                });
            }
            const results = await Promise.all(gens.map((g) => g.result()));
            this.record(req, name, results, false);
            failIfErrored(results, scopeOf(req));
            return {
                id, object: "text_completion", created, model: name,
                choices: results.flatMap((r, p) => r.choices.map((c) => ({
                    index: p * n + c.index,
                    text: echoes[p] + c.text,
                    logprobs: c.logprobs ? completionLogprobs(engine, c.logprobs, echoes[p].length) : null,
                    finish_reason: c.finishReason,
                }))),
                usage: usage(results),
            };
        });
    }

    private chat(req: FastifyRequest<{ Body: ChatBody }>, reply: FastifyReply): Promise<unknown> {
        const b = req.body;
        const id = `chatcmpl-${req.id}`;
        const created = Math.floor(Date.now() / 1000);
        return this.serve(req, reply, b.model, (engine, signal) => [engine.chat({ ...chatRequest(b), signal })], async (name, engine, gens) => {
            const gen = gens[0];
            if (b.stream) {
                const opening = Array.from({ length: b.n ?? 1 }, (_, index) => [{ index, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }]);
                return this.stream(req, reply, name, { id, object: "chat.completion.chunk", created }, [gen], b.stream_options?.include_usage === true, (_p, ev) => {
                    if (ev.type === "finish") return [{ index: ev.index, delta: {}, logprobs: null, finish_reason: ev.finishReason }];
                    if (ev.text.length === 0 && !ev.logprobs) return null;
                    return [{ index: ev.index, delta: { content: ev.text }, logprobs: ev.logprobs ? chatLogprobs(engine, ev.logprobs) : null, finish_reason: null }];
                }, opening);
            }
            const result = await gen.result();
            this.record(req, name, [result], false);
            failIfErrored([result], scopeOf(req));
            return {
                id, object: "chat.completion", created, model: name,
                choices: result.choices.map((c) => ({
                    index: c.index,
                    message: { role: "assistant", content: c.text },
                    logprobs: c.logprobs ? chatLogprobs(engine, c.logprobs) : null,
                    finish_reason: c.finishReason,
                })),
                usage: usage([result]),
            };
        });
    }
}

/** Starts a server: listening at once, models loading in the background (await server.ready()). */
export function createServer(options: ServerOptions): Promise<BatchwiseServer> {
    return BatchwiseServer.start(options);
}

// ---- helpers ------------------------------------------------------------------------------------

/** The client's x-request-id when it is sane, else a new UUID. */
function requestId(header: string | string[] | undefined): string {
    return typeof header === "string" && SANE_ID.test(header) ? header : randomUUID();
}

/** The x-request-id of a request the HTTP parser refused, read from its raw bytes, when sane. */
function idFromRawRequest(raw: Buffer | undefined): string | undefined {
    if (!raw) return undefined;
    const m = /\r\nx-request-id:[ \t]*([^\r\n]*?)[ \t]*\r\n/i.exec(raw.toString("latin1"));
    return m && SANE_ID.test(m[1]) ? m[1] : undefined;
}

/** What a 'clientError' from node's HTTP server means, in the API's shape. */
function clientError(err: Error & { code?: string; reason?: string }, headersTimeoutMs: number): ApiError {
    switch (err.code) {
        case "ERR_HTTP_REQUEST_TIMEOUT":
            return new ApiError(408, `the request's headers did not arrive within ${headersTimeoutMs / 1000} s`, "invalid_request_error", null, "request_timeout");
        case "HPE_HEADER_OVERFLOW":
            return new ApiError(431, `the request's headers are larger than the server accepts (${Math.round(maxHeaderSize / 1024)} KiB in all)`, "invalid_request_error", null, "headers_too_large");
        case "HPE_CHUNK_EXTENSIONS_OVERFLOW":
            return new ApiError(413, "the request's chunk extensions are too large", "invalid_request_error", null, "request_too_large");
        default: {
            // llhttp's reason is a fixed text ("Invalid header value char", "Content-Length can't be present with Transfer-Encoding", ...)
            const why = typeof err.reason === "string" ? err.reason : err.message;
            return badRequest(`malformed HTTP request: ${why}${err.code ? ` (${err.code})` : ""}`, null, "malformed_request");
        }
    }
}

/** An origin as browsers send it (scheme://host[:port], no default port), or undefined for what is not one. */
function canonicalOrigin(s: string): string | undefined {
    let u: URL;
    try {
        u = new URL(s);
    } catch {
        return undefined;
    }
    if (!u.host || (u.pathname !== "" && u.pathname !== "/") || u.search || u.hash || u.username || u.password) return undefined;
    // URL.origin is "null" for schemes it does not know (chrome-extension://, vscode-webview://)
    return u.origin !== "null" ? u.origin : `${u.protocol}//${u.host}`;
}

/** A `corsOrigins` entry: "*", or an origin such as http://localhost:3000 (a trailing slash is dropped). */
export function parseOrigin(s: string): string {
    const t = typeof s === "string" ? s.trim() : "";
    if (t === "*") return t;
    const o = canonicalOrigin(t);
    if (!o) throw new BatchwiseError(ErrorCode.InvalidArgument, `'${s}' is not an origin: expected '*' or scheme://host[:port], such as http://localhost:3000`);
    return o;
}

function timeoutOption(name: string, v: number | undefined, fallback: number): number {
    if (v === undefined) return fallback;
    if (!(Number.isFinite(v) && v >= 0)) throw new BatchwiseError(ErrorCode.InvalidArgument, `${name} must be a number of milliseconds >= 0 (got ${v})`);
    return Math.floor(v);
}

function modelNotFound(model: string, served: string[]): ApiError {
    return new ApiError(404, `The model '${model}' does not exist (this server has: ${served.join(", ")})`, "not_found_error", "model", "model_not_found");
}

/** The error a failed choice answers with: a sampler the native side refused is the request's fault, anything else the server's. */
function choiceError(error: unknown, scope: ErrorScope): ApiError {
    if (error instanceof BatchwiseError && (error.code === ErrorCode.SamplerInvalid || error.code === ErrorCode.InvalidArgument)) return toApiError(error, scope);
    return new ApiError(500, `generation failed: ${error instanceof Error ? error.message : String(error)}`, "server_error");
}

function failIfErrored(results: GenerateResult[], scope: ErrorScope): void {
    for (const [index, r] of results.entries()) {
        const c = r.choices.find((x) => x.finishReason === "error");
        if (c) throw choiceError(c.error, { ...scope, index });
    }
}

type StreamEvent = Exclude<GenerateEvent, { type: "done" }>;

/** Feeds a generation's events to `on` and resolves with its result. */
async function pump(gen: Generation, on: (ev: StreamEvent) => void): Promise<GenerateResult> {
    for await (const ev of gen) {
        if (ev.type === "done") return ev;
        on(ev);
    }
    return gen.result();
}

/** A server-sent-events response, written straight to the socket. */
class Sse {
    private readonly res: ServerResponse;

    constructor(reply: FastifyReply, requestId: string) {
        reply.hijack();
        this.res = reply.raw;
        this.res.writeHead(200, {
            ...(reply.getHeaders() as OutgoingHttpHeaders), // the hooks' (CORS)
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            connection: "keep-alive",
            "x-accel-buffering": "no",
            "x-request-id": requestId,
        });
    }

    send(data: unknown): void {
        if (!this.res.writableEnded && !this.res.destroyed) this.res.write(`data: ${JSON.stringify(data)}\n\n`);
    }

    end(): void {
        if (!this.res.writableEnded && !this.res.destroyed) this.res.end("data: [DONE]\n\n");
    }

    /** Runs the stream's body; a failure after the headers went out ends the stream with an error event. */
    async guard<T>(req: FastifyRequest, scope: ErrorScope, body: () => Promise<T>): Promise<T | undefined> {
        try {
            return await body();
        } catch (e) {
            req.log.error({ err: e }, "stream failed");
            this.send(toApiError(e, scope).body());
            this.end();
            return undefined;
        }
    }
}

/** One of Ajv's errors, with `verbose` on (the schema and the value at the error). */
interface AjvError {
    instancePath: string;
    schemaPath: string;
    keyword: string;
    params: Record<string, unknown>;
    message?: string;
    schema?: unknown;
    parentSchema?: Schema;
    data?: unknown;
}

interface ValidationFailure {
    validation: AjvError[];
}

type Schema = {
    type?: string; description?: string; anyOf?: Schema[]; oneOf?: Schema[]; enum?: unknown[]; items?: Schema; required?: string[];
    minimum?: number; maximum?: number; exclusiveMinimum?: number; exclusiveMaximum?: number; minLength?: number; maxLength?: number;
    minItems?: number; maxItems?: number; propertyNames?: Schema;
};

/**
 * Ajv's errors as one 400 a person can read: one message per bad field, saying what the field must be
 * and what it got ("'temperature' must be a number between 0 and 2 (got \"hot\")"), the first bad
 * field in `param`. A field that may take several shapes (anyOf, oneOf) is explained by the shape its
 * value has, or by listing the shapes when its value has none of them.
 */
function validationError(err: ValidationFailure): ApiError {
    const errors = err.validation;
    const dropped = new Set<AjvError>();
    const said = new Map<AjvError, { param: string | null; text: string }>();
    // raised within c's branches, for the same value (messages[0].content and messages[1].content share a schema path)
    const inside = (e: AjvError, c: AjvError) => e !== c && e.schemaPath.startsWith(c.schemaPath + "/") &&
        (e.instancePath === c.instancePath || e.instancePath.startsWith(c.instancePath + "/"));
    // the outer alternatives first: an inner one is only looked at when the outer picks its branch
    const combos = errors.filter((e) => e.keyword === "anyOf" || e.keyword === "oneOf").sort((a, b) => a.schemaPath.length - b.schemaPath.length);
    for (const c of combos) {
        if (dropped.has(c)) continue;
        const branches = (Array.isArray(c.schema) ? c.schema : []) as Schema[];
        const field = fieldName(c.instancePath);
        const within = errors.filter((e) => inside(e, c));
        // { oneOf: [{ required: [a] }, { required: [b] }] }: one of these fields, and only one
        const names = branches.map((b) => (b.required?.length === 1 && Object.keys(b).length === 1 ? b.required[0] : undefined));
        if (names.length > 0 && names.every((n) => n !== undefined)) {
            const list = names.map((n) => `'${field ? field + "." : ""}${n}'`).join(" or ");
            const both = Array.isArray(c.params.passingSchemas);
            said.set(c, { param: (field ? field + "." : "") + names[0], text: both ? `give only one of ${list}` : `one of ${list} is required` });
            for (const e of within) dropped.add(e);
            continue;
        }
        const fits = branches.map((b, i) => ({ b, i })).filter(({ b }) => b.type !== "null" && fitsType(b, c.data));
        if (fits.length === 1) {
            // the value has the shape of one branch: that branch's own errors say what is wrong with it
            const keep = `${c.schemaPath}/${fits[0].i}/`;
            for (const e of within) if (!e.schemaPath.startsWith(keep)) dropped.add(e);
            dropped.add(c);
            continue;
        }
        const shapes = c.parentSchema?.description ?? oneOfList(branches.filter((b) => b.type !== "null").map(describe));
        said.set(c, { param: field || null, text: `${subject(field)} must be ${shapes} (got ${shown(c.data)})` });
        for (const e of within) dropped.add(e);
    }
    const byField = new Map<string, { param: string | null; text: string }>();
    for (const e of errors) {
        if (dropped.has(e)) continue;
        const m = said.get(e) ?? explain(e, errors);
        if (!m) continue;
        const key = m.param ?? "";
        if (!byField.has(key)) byField.set(key, m);
    }
    const all = [...byField.values()];
    return badRequest(all.map((m) => m.text).join("; ") || "the request body is invalid", all[0]?.param ?? null);
}

/** One (non-alternative) Ajv error as a sentence about its field; undefined for one another error explains. */
function explain(e: AjvError, all: AjvError[]): { param: string | null; text: string } | undefined {
    let field = fieldName(e.instancePath);
    const p = e.params, s = e.parentSchema ?? {};
    let what: string;
    switch (e.keyword) {
        case "required":
            field = (field ? field + "." : "") + String(p.missingProperty);
            return { param: field, text: `'${field}' is required` };
        case "type":
            if (p.type === "null") return undefined; // a nullable field's other branch says what is wrong
            if (!field && (e.data === undefined || e.data === null)) return { param: null, text: "the request body is missing: send a JSON object" };
            what = `must be ${describe(s)} (got ${shown(e.data)})`;
            break;
        case "minimum": case "maximum": case "exclusiveMinimum": case "exclusiveMaximum":
            what = `must be ${describe(s)} (got ${shown(e.data)})`;
            break;
        case "enum":
            what = `must be one of ${(p.allowedValues as unknown[]).map((v) => (typeof v === "string" ? v : JSON.stringify(v))).join(", ")} (got ${shown(e.data)})`;
            break;
        case "minLength":
            what = p.limit === 1 ? "must not be empty" : `must be at least ${p.limit} characters long (got ${String(e.data).length})`;
            break;
        case "maxLength":
            what = `must be at most ${p.limit} characters long (got ${String(e.data).length})`;
            break;
        case "minItems":
            what = p.limit === 1 ? "must not be empty" : `must have at least ${p.limit} items (got ${(e.data as unknown[]).length})`;
            break;
        case "maxItems":
            what = `must have at most ${p.limit} items (got ${(e.data as unknown[]).length})`;
            break;
        case "maxProperties":
            what = `must have at most ${p.limit} entries (got ${Object.keys(e.data as object).length})`;
            break;
        case "propertyNames":
            what = `has a key that is not ${s.propertyNames?.description ?? "allowed"}: ${shown(p.propertyName)}`;
            break;
        default:
            // the name check's own error ("must match pattern") is said better by its propertyNames error
            if (all.some((o) => o.keyword === "propertyNames" && e.schemaPath.startsWith(o.schemaPath + "/"))) return undefined;
            what = `${e.message ?? "is invalid"}${e.data !== undefined && typeof e.data !== "object" ? ` (got ${shown(e.data)})` : ""}`;
    }
    return { param: field || null, text: `${subject(field)} ${what}` };
}

/** Ajv's instance path as the request writes it: /messages/0/role is messages[0].role. */
function fieldName(instancePath: string): string {
    return instancePath.replace(/^\//, "").replace(/\/(\d+)(?=\/|$)/g, "[$1]").replace(/\//g, ".").replace(/~1/g, "/").replace(/~0/g, "~");
}

function subject(field: string): string {
    return field ? `'${field}'` : "the request body";
}

/** Whether a value has the JSON type a schema asks for (ignoring its other constraints). */
function fitsType(s: Schema, v: unknown): boolean {
    const alts = s.anyOf ?? s.oneOf;
    if (alts) return alts.some((b) => fitsType(b, v));
    if (s.enum) return s.enum.some((x) => typeof x === typeof v);
    switch (s.type) {
        case undefined: return true;
        case "null": return v === null;
        case "integer": return typeof v === "number" && Number.isInteger(v);
        case "number": return typeof v === "number";
        case "array": return Array.isArray(v);
        case "object": return typeof v === "object" && v !== null && !Array.isArray(v);
        default: return typeof v === s.type;
    }
}

/** What a schema asks for, in words: "an integer between 1 and 128", "a non-empty string", "an array of integers >= 0". */
function describe(s: Schema): string {
    if (s.description) return s.description;
    const alts = s.anyOf ?? s.oneOf;
    if (alts) return oneOfList(alts.filter((b) => b.type !== "null").map(describe));
    if (s.enum) return `one of ${s.enum.map((v) => (typeof v === "string" ? v : JSON.stringify(v))).join(", ")}`;
    switch (s.type) {
        case "integer":
        case "number": {
            const base = s.type === "integer" ? "an integer" : "a number";
            if (s.minimum !== undefined && s.maximum !== undefined) return `${base} between ${s.minimum} and ${s.maximum}`;
            const bounds = [
                s.minimum !== undefined && `>= ${s.minimum}`, s.exclusiveMinimum !== undefined && `> ${s.exclusiveMinimum}`,
                s.maximum !== undefined && `<= ${s.maximum}`, s.exclusiveMaximum !== undefined && `< ${s.exclusiveMaximum}`,
            ].filter(Boolean);
            return bounds.length > 0 ? `${base} ${bounds.join(" and ")}` : base;
        }
        case "string": {
            const base = s.minLength === 1 ? "a non-empty string" : "a string";
            return s.maxLength !== undefined ? `${base} of at most ${s.maxLength} characters` : base;
        }
        case "boolean": return "true or false";
        case "object": return "an object";
        case "null": return "null";
        case "array": {
            const of = s.items ? ` of ${plural(describe(s.items))}` : "";
            return s.minItems === 1 ? `a non-empty array${of}` : `an array${of}`;
        }
        default: return "valid";
    }
}

/** "an integer >= 0" as "integers >= 0", "a string" as "strings". */
function plural(d: string): string {
    return d.replace(/^(?:an?|one of) (non-empty )?(\w+)/, (_m, ne: string | undefined, w: string) => `${ne ?? ""}${w}s`);
}

function oneOfList(items: string[]): string {
    const u = [...new Set(items)];
    return u.length <= 1 ? (u[0] ?? "valid") : `${u.slice(0, -1).join(", ")} or ${u.at(-1)}`;
}

/** A value as an error message shows it: short scalars as JSON, the rest by kind. */
function shown(v: unknown): string {
    if (v === undefined) return "nothing";
    if (Array.isArray(v)) return v.length === 0 ? "an empty array" : `an array of ${v.length}`;
    if (typeof v === "object" && v !== null) return "an object";
    if (typeof v === "string" && v.length > 40) return `a string of ${v.length} characters`;
    return JSON.stringify(v);
}
