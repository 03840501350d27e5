// The OpenAI-compatible HTTP server: fastify routes over one engine per served model. It listens at
// once, so that /health and /ready answer while the models load and warm up; /ready turns 200 only
// when every model is loaded and warmed, and back to 503 when draining starts.
//
// This file is the public face (createServer, BatchwiseServer) and puts the pieces together: the
// settings (options.ts), the models (models.ts), readiness and draining (lifecycle.ts), the metrics
// (metrics.ts) and the fastify app (app.ts: shared plugins in plugins/, route families in routes/).
import type { FastifyInstance } from "fastify";
import type { Logger } from "pino";
import { BatchwiseError, ErrorCode, type Engine } from "../index.js";
import { buildApp } from "./app.js";
import type { ServerContext } from "./context.js";
import { Lifecycle } from "./lifecycle.js";
import { ServerMetrics } from "./metrics.js";
import { ModelRegistry } from "./models.js";
import { resolveSettings, type ServerOptions, type ServerSettings, type ServerState } from "./options.js";
import { RequestLog } from "./plugins/request-log.js";

export type { ServedModel, ServerOptions, ServerState } from "./options.js";
export { parseOrigin } from "./plugins/cors.js";

export class BatchwiseServer {
    readonly app: FastifyInstance;
    readonly metrics: ServerMetrics;
    private readonly settings: ServerSettings;
    private readonly models: ModelRegistry;
    private readonly lifecycle: Lifecycle;
    url = "";

    private constructor(options: ServerOptions) {
        this.settings = resolveSettings(options);
        this.models = new ModelRegistry(options.models, this.settings.retryAfter);
        this.metrics = new ServerMetrics(() => this.models.list(), () => this.lifecycle.readyForTraffic(), this.settings.livenessTimeoutMs);
        const log = () => (options.logger === false ? undefined : (this.app.log as unknown as Logger));
        this.lifecycle = new Lifecycle(this.models, this.metrics, options, this.settings.retryAfter, this.settings.livenessTimeoutMs, log);
        const ctx: ServerContext = {
            settings: this.settings, models: this.models, lifecycle: this.lifecycle, metrics: this.metrics, requests: new RequestLog(this.metrics),
        };
        this.app = buildApp(ctx, options.logger);
    }

    /** Builds the server, starts listening, and starts loading and warming the models (see ready()). */
    static async start(options: ServerOptions): Promise<BatchwiseServer> {
        if (options === null || typeof options !== "object" || !Array.isArray(options.models)) {
            throw new BatchwiseError(ErrorCode.InvalidArgument, "the server needs { models: [{ path | engine, name? }] }");
        }
        const server = new BatchwiseServer(options);
        try {
            server.url = await server.app.listen({ host: options.host ?? "127.0.0.1", port: options.port ?? 8000 });
        } catch (e) {
            await server.models.closeAll();
            throw e;
        }
        server.lifecycle.boot();
        return server;
    }

    get state(): ServerState {
        return this.lifecycle.state;
    }

    /** Resolves when every model is loaded and warmed up; rejects if one failed to load. */
    ready(): Promise<void> {
        return this.lifecycle.ready();
    }

    /** The engine serving a model (undefined while it loads). */
    engine(name: string): Engine | undefined {
        return this.models.has(name) ? this.models.get(name).engine : undefined;
    }

    get modelNames(): string[] {
        return this.models.names;
    }

    /** What each model uses, for the startup summary. */
    summary(): { name: string; engine: Engine; warmupMs: number }[] {
        return this.models.list().filter((e) => e.engine).map((e) => ({ name: e.name, engine: e.engine!, warmupMs: e.warmupMs }));
    }

    /**
     * Graceful stop: /ready turns 503 and new generation requests get 503 at once; requests in flight
     * finish, for up to `timeoutMs`, and are aborted after it; then the engines and the listener close.
     */
    drain(timeoutMs = this.settings.drainTimeoutMs): Promise<void> {
        return this.lifecycle.drain(timeoutMs, async () => {
            // close() ends the connections idle at that moment; one whose request was in flight goes idle later and
            // would hold the listener open for the keep-alive timeout (72 s), past any drain deadline: end those too
            const closing = this.app.close();
            const idle = setInterval(() => this.app.server.closeIdleConnections(), 50);
            // the drain has waited for the requests in flight: a connection still busy now is one still sending a
            // request (a slow body, half its headers) that no one will serve, and close() would wait for its own
            // timeout (the body's 30 s, past a soak's or a pod's grace): after a second, every connection goes
            const rest = setTimeout(() => this.app.server.closeAllConnections(), 1000);
            try {
                await closing;
            } finally {
                clearInterval(idle);
                clearTimeout(rest);
            }
        });
    }

    /** Stops now: requests in flight are aborted. */
    close(): Promise<void> {
        return this.drain(0);
    }
}

/** Starts a server: listening at once, models loading in the background (await server.ready()). */
export function createServer(options: ServerOptions): Promise<BatchwiseServer> {
    return BatchwiseServer.start(options);
}
