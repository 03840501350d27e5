// The OpenAI-compatible HTTP server: fastify routes over one engine per served model. It listens at
// once, so that /health and /ready answer while the models load and warm up; /ready turns 200 only
// when every model is loaded and warmed, and back to 503 when draining starts.
import { createHash, randomUUID, timingSafeEqual } from "node:crypto";
import { setMaxListeners } from "node:events";
import type { ServerResponse } from "node:http";
import { basename } from "node:path";
import Fastify, { LogController, type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import type { Logger } from "pino";
import { BatchwiseError, Engine, ErrorCode, type EngineOptions, type GenerateEvent, type GenerateResult, type Generation } from "../index.js";
import { ApiError, badRequest, toApiError } from "./errors.js";
import { ServerMetrics } from "./metrics.js";
import {
    chatLogprobs, chatRequest, completionLogprobs, completionRequests, usage,
    type ChatBody, type CompletionBody,
} from "./openai.js";
import { chatBody, completionBody, detokenizeBody, tokenizeBody } from "./schemas.js";
import { warmUp, type WarmupOptions } from "./warmup.js";

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
    url = "";

    private constructor(private readonly options: ServerOptions) {
        this.retryAfter = options.retryAfterSeconds ?? 1;
        this.keyDigests = (options.apiKeys ?? []).map((k) => createHash("sha256").update(k).digest());
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
            await this.app.close();
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
            genReqId: (req: { headers: Record<string, string | string[] | undefined> }) => {
                const h = req.headers["x-request-id"];
                return typeof h === "string" && /^[\w.:-]{1,128}$/.test(h) ? h : randomUUID();
            },
            ajv: { customOptions: { allErrors: true, coerceTypes: false, removeAdditional: false, useDefaults: false } },
            return503OnClosing: false,
        } as Parameters<typeof Fastify>[0]) as unknown as FastifyInstance;

        // curl -d sends form content type; every body here is JSON
        app.addContentTypeParser("*", { parseAs: "string" }, (req, body, done) => {
            try {
                done(null, body === "" ? undefined : JSON.parse(body as string));
            } catch {
                done(badRequest("the request body is not valid JSON"), undefined);
            }
        });

        app.addHook("onRequest", async (req, reply) => {
            (req as unknown as { bwStart: number }).bwStart = performance.now();
            reply.header("x-request-id", req.id);
            // the route fastify matched (after decoding the path), not the raw URL: /%761/completions is /v1/completions
            if (this.keyDigests.length > 0 && PROTECTED.test(req.routeOptions.url ?? req.url)) this.authorize(req);
            // a client that goes away before the response ends gets its line too (status 499, as nginx logs it)
            reply.raw.once("close", () => {
                if (!reply.raw.writableFinished) this.logRequest(req, 499);
            });
        });
        app.addHook("onResponse", async (req, reply) => this.logRequest(req, reply.statusCode));

        app.setErrorHandler((err, req, reply) => {
            const e = (err as { validation?: unknown }).validation ? validationError(err as ValidationFailure) : toApiError(err, req.url.includes("chat") ? "messages" : "prompt", this.retryAfter);
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
        app.post<{ Body: CompletionBody }>("/v1/completions", { schema: { body: completionBody } }, (req, reply) => this.completions(req, reply));
        app.post<{ Body: ChatBody }>("/v1/chat/completions", { schema: { body: chatBody } }, (req, reply) => this.chat(req, reply));
        app.post<{ Body: { model?: string; prompt?: string; messages?: ChatBody["messages"]; add_special_tokens?: boolean; add_generation_prompt?: boolean } }>(
            "/tokenize", { schema: { body: tokenizeBody } }, async (req) => {
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
        app.post<{ Body: { model?: string; tokens: number[] } }>("/detokenize", { schema: { body: detokenizeBody } }, async (req) => {
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
                    await Promise.all(gens.map((g) => g.queued()));
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
                const api = e instanceof ApiError ? e : toApiError(e);
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
        return sse.guard(req, async () => {
            const chunk = (cs: unknown[]) => ({ ...head, model: name, choices: cs, ...(includeUsage && { usage: null }) });
            for (const cs of opening) sse.send(chunk(cs));
            const results = await Promise.all(gens.map((g, p) => pump(g, (ev) => {
                if (ev.type === "finish" && ev.finishReason === "error") return sse.send(choiceError(ev.error).body());
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
            failIfErrored(results);
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
            failIfErrored([result]);
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

function modelNotFound(model: string, served: string[]): ApiError {
    return new ApiError(404, `The model '${model}' does not exist (this server has: ${served.join(", ")})`, "not_found_error", "model", "model_not_found");
}

/** The error a failed choice answers with: a sampler the native side refused is the request's fault, anything else the server's. */
function choiceError(error: unknown): ApiError {
    if (error instanceof BatchwiseError && (error.code === ErrorCode.SamplerInvalid || error.code === ErrorCode.InvalidArgument)) return toApiError(error);
    return new ApiError(500, `generation failed: ${error instanceof Error ? error.message : String(error)}`, "server_error");
}

function failIfErrored(results: GenerateResult[]): void {
    for (const r of results) {
        const c = r.choices.find((x) => x.finishReason === "error");
        if (c) throw choiceError(c.error);
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
    async guard<T>(req: FastifyRequest, body: () => Promise<T>): Promise<T | undefined> {
        try {
            return await body();
        } catch (e) {
            req.log.error({ err: e }, "stream failed");
            this.send(toApiError(e).body());
            this.end();
            return undefined;
        }
    }
}

interface ValidationFailure {
    validation: { instancePath: string; message?: string; keyword: string; params: Record<string, unknown> }[];
}

/** Ajv's errors as one 400 that names each bad field once. */
function validationError(err: ValidationFailure): ApiError {
    const byField = new Map<string, string>();
    for (const v of err.validation) {
        let field = v.instancePath.replace(/^\//, "").replace(/\/(\d+)(?=\/|$)/g, "[$1]").replace(/\//g, ".");
        let msg = v.message ?? "is invalid";
        if (v.keyword === "required") {
            field = (field ? field + "." : "") + String(v.params.missingProperty);
            msg = "is required";
        }
        if (v.keyword === "anyOf" || v.keyword === "oneOf") msg = "has the wrong type or value";
        // "must be null" comes from the nullable branch: the other branch says what was wrong
        if (v.keyword === "type" && v.params.type === "null") continue;
        if (!byField.has(field) || byField.get(field) === "has the wrong type or value") byField.set(field, msg);
    }
    const parts = [...byField].map(([f, m]) => (f ? `'${f}' ${m}` : m));
    const first = byField.keys().next().value;
    return badRequest(parts.join("; ") || "the request body is invalid", first || null);
}
