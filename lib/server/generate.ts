// Serving generations for an HTTP request, shared by every generation route (completions, chat, and
// the API dialects to come): the model lookup and the 503 while not ready, the abort when the client
// goes, the count a drain waits for, the metrics and log line of the results, and the SSE stream.
// A route brings its request's mapping (openai.ts) and its response's shape.
import { createHash } from "node:crypto";
import { setMaxListeners } from "node:events";
import { readFileSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { FastifyReply, FastifyRequest } from "fastify";
import { BatchwiseError, ErrorCode, systemInfo, type Engine, type GenerateEvent, type GenerateResult, type Generation } from "../index.js";
import type { ServerContext } from "./context.js";
import { ApiError, toApiError, type ErrorScope } from "./errors.js";
import { engineTrouble } from "./lifecycle.js";
import { usage } from "./openai.js";
import { scopeOf } from "./plugins/errors.js";
import { Sse } from "./sse.js";

export type StreamEvent = Exclude<GenerateEvent, { type: "done" }>;

/**
 * Runs generations for one HTTP request: `start` makes them on the model's engine; once all are queued,
 * `respond` answers. They count as in flight for a drain, and are aborted when the response ends
 * (done, failed, or the client gone). A generation that fails before it is queued fails the request,
 * its error naming the request's field as the route's API writes it (the index says which prompt).
 */
export async function serve(ctx: ServerContext, req: FastifyRequest, reply: FastifyReply, model: string | undefined,
    start: (engine: Engine, signal: AbortSignal) => Generation[],
    respond: (name: string, engine: Engine, gens: Generation[]) => Promise<unknown>): Promise<unknown> {
    const scope = scopeOf(req);
    // a model name the server does not have is not a label value: clients could mint series at will
    let name = model !== undefined && ctx.models.has(model) ? model : "unknown";
    let queued = false;
    try {
        ctx.lifecycle.admit();
        const picked = ctx.models.lookup(model);
        name = picked.name;
        // an engine that stopped or is stuck would fail or hold the request: 503 at once, so that a balancer
        // retries it on another replica (as /ready already sends it none)
        const trouble = engineTrouble(picked.engine.health(), ctx.settings.livenessTimeoutMs);
        if (trouble !== null) {
            throw new ApiError(503, `model '${name}' cannot serve requests now: ${trouble}`, "service_unavailable_error", null, "engine_unhealthy", ctx.settings.retryAfter);
        }
        ctx.requests.note(req, { model: name });
        const ac = new AbortController();
        setMaxListeners(0, ac.signal); // one listener per generation: a list of prompts has many
        ctx.lifecycle.begin(ac);
        reply.raw.on("close", () => {
            if (!reply.raw.writableFinished && !ac.signal.aborted) {
                ctx.metrics.disconnect(name);
                ac.abort();
            }
        });
        try {
            const gens = start(picked.engine, ac.signal);
            try {
                await Promise.all(gens.map((g, index) => g.queued().catch((e: unknown) => {
                    throw toApiError(e, { ...scope, index }, ctx.settings.retryAfter);
                })));
            } catch (e) {
                ac.abort();
                throw e;
            }
            queued = true;
            return withFingerprint(await respond(name, picked.engine, gens), systemFingerprint(ctx, name));
        } finally {
            // whatever ended the response (done, error, disconnect), nothing of it runs on unread
            ac.abort();
            ctx.lifecycle.end(ac);
        }
    } catch (e) {
        if (!queued) {
            const api = e instanceof ApiError ? e : toApiError(e, scope);
            ctx.metrics.reject(name, api.code ?? String(api.status));
        }
        throw e;
    }
}

/** The results' metrics, and what the request's log line says of them. */
export function record(ctx: ServerContext, req: FastifyRequest, name: string, results: GenerateResult[], stream: boolean): void {
    for (const r of results) ctx.metrics.observe(name, r);
    const u = usage(results);
    const ttft = results.map((r) => r.timings.ttftMs).filter((t) => t >= 0); // -1: ended before a token
    ctx.requests.note(req, {
        model: name, stream, promptTokens: u.prompt_tokens, completionTokens: u.completion_tokens, cachedTokens: u.prompt_tokens_details.cached_tokens,
        ttftMs: ttft.length > 0 ? Math.round(Math.min(...ttft)) : undefined,
        finishReasons: results.flatMap((r) => r.choices.map((c) => c.finishReason)),
    });
}

/**
 * The error a failed choice answers with: a sampler the native side refused is the request's fault, an engine that
 * stopped after an internal error the replica's (503: retry elsewhere), anything else the server's.
 */
export function choiceError(error: unknown, scope: ErrorScope, retryAfter = 1): ApiError {
    if (error instanceof BatchwiseError && (error.code === ErrorCode.SamplerInvalid || error.code === ErrorCode.InvalidArgument ||
        error.code === ErrorCode.EngineFailed)) {
        return toApiError(error, scope, retryAfter);
    }
    return new ApiError(500, `generation failed: ${error instanceof Error ? error.message : String(error)}`, "server_error");
}

/** Throws the error of the first choice that failed (the index of its generation says which prompt). */
export function failIfErrored(req: FastifyRequest, results: GenerateResult[], retryAfter = 1): void {
    for (const [index, r] of results.entries()) {
        const c = r.choices.find((x) => x.finishReason === "error");
        if (c) throw choiceError(c.error, { ...scopeOf(req), index }, retryAfter);
    }
}

/** Feeds a generation's events to `on` and resolves with its result. */
export async function pump(gen: Generation, on: (ev: StreamEvent) => void): Promise<GenerateResult> {
    for await (const ev of gen) {
        if (ev.type === "done") return ev;
        on(ev);
    }
    return gen.result();
}

// ---- system_fingerprint ----------------------------------------------------------------------------

let packageVersion: string | undefined;

function version(): string {
    if (packageVersion === undefined) {
        try {
            // dist/lib/server/generate.js (and lib/server/generate.ts under a loader) sit three folders below the package
            const here = dirname(fileURLToPath(import.meta.url));
            const pkg = [join(here, "..", "..", "..", "package.json"), join(here, "..", "..", "package.json")].find((p) => {
                try {
                    return (JSON.parse(readFileSync(p, "utf8")) as { name?: string }).name === "batchwise";
                } catch {
                    return false;
                }
            });
            packageVersion = pkg ? (JSON.parse(readFileSync(pkg, "utf8")) as { version: string }).version : "unknown";
        } catch {
            packageVersion = "unknown";
        }
    }
    return packageVersion;
}

const fingerprints = new WeakMap<Engine, string>();

/**
 * OpenAI's system_fingerprint for a served model: "fp_" and 12 hex digits of a hash of what decides the
 * output besides the request: the batchwise version, the llama.cpp tag and build (CUDA or CPU), the
 * engine's options, and the model (its file's path, size and modification time when served from a path,
 * and its GGUF metadata and chat template). Stable for a server's life; another build, version,
 * configuration or model file gives another.
 */
export function systemFingerprint(ctx: ServerContext, name: string): string | undefined {
    const entry = ctx.models.has(name) ? ctx.models.get(name) : undefined;
    const engine = entry?.engine;
    if (!engine) return undefined;
    let fp = fingerprints.get(engine);
    if (fp === undefined) {
        const h = createHash("sha256");
        let build: unknown;
        try {
            const info = systemInfo();
            build = { llama: info.llamaTag, cuda: info.cuda, gpuOffload: info.gpuOffload };
        } catch {
            build = null; // an engine on a test backend, without the addon
        }
        h.update(JSON.stringify({ version: version(), build }));
        if (entry.spec.path) {
            const path = resolve(entry.spec.path);
            let file = "";
            try {
                const st = statSync(path);
                file = `${st.size}:${st.mtimeMs}`;
            } catch {
                // gone since it was loaded: the metadata below still tells models apart
            }
            h.update(JSON.stringify({ path, file }));
        }
        // the engine's configuration (its KV types, flash attention, a chat template given in place of the GGUF's, ...):
        // plain values only, functions and objects such as a loaded model or a logger left out
        h.update(JSON.stringify(engine.options ?? null, (_k, v: unknown) =>
            typeof v === "function" || (typeof v === "object" && v !== null && !Array.isArray(v) && Object.getPrototypeOf(v) !== Object.prototype) ? undefined : v));
        const m = engine.metadata as Partial<typeof engine.metadata> | undefined;
        h.update(JSON.stringify({
            sizeBytes: m?.sizeBytes, parameters: m?.parameters, template: m?.chatTemplate,
            gguf: Object.entries(m?.gguf ?? {}).sort(([a], [b]) => (a < b ? -1 : 1)),
        }));
        fp = "fp_" + h.digest("hex").slice(0, 12);
        fingerprints.set(engine, fp);
    }
    return fp;
}

/** A response object with its system_fingerprint after its model (a streamed response, already sent, is passed as it is). */
function withFingerprint(out: unknown, fp: string | undefined): unknown {
    if (fp === undefined || out === null || typeof out !== "object" || Array.isArray(out) || !("choices" in out)) return out;
    const o: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(out)) {
        o[k] = v;
        if (k === "model") o.system_fingerprint = fp;
    }
    o.system_fingerprint ??= fp;
    return o;
}

export interface StreamHead {
    id: string;
    object: string;
    created: number;
}

/**
 * Streams generations as server-sent events: `opening` chunks, then the chunks each event makes (a list
 * of chunks, each a list of choices; null: none), an error event for a choice that failed, the usage chunk
 * when asked for, and [DONE].
 */
export function stream(ctx: ServerContext, req: FastifyRequest, reply: FastifyReply, name: string, head: StreamHead,
    gens: Generation[], includeUsage: boolean, chunks: (prompt: number, ev: StreamEvent) => unknown[][] | null, opening: unknown[][] = []): Promise<unknown> {
    const sse = new Sse(reply, req.id);
    const scope = scopeOf(req);
    return sse.guard(req, scope, async () => {
        const fp = systemFingerprint(ctx, name);
        const chunk = (cs: unknown[]) => ({ ...head, model: name, system_fingerprint: fp, choices: cs, ...(includeUsage && { usage: null }) });
        for (const cs of opening) sse.send(chunk(cs));
        const results = await Promise.all(gens.map((g, p) => pump(g, (ev) => {
            if (ev.type === "finish" && ev.finishReason === "error") return sse.send(choiceError(ev.error, { ...scope, index: p }).body());
            for (const cs of chunks(p, ev) ?? []) sse.send(chunk(cs));
        })));
        record(ctx, req, name, results, true);
        if (includeUsage) sse.send({ ...head, model: name, system_fingerprint: fp, choices: [], usage: usage(results) });
        sse.end();
    });
}
