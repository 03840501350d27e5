// Readiness and draining: the server's state (loading, warming, ready, draining, stopped, failed), the
// models' load and warm-up that move it to ready, the generations in flight that a drain waits for,
// and the 503 that a generation request gets while the server is not ready or a model's engine is unhealthy.
import type { Logger } from "pino";
import { BatchwiseError, Engine, ErrorCode, type EngineStats } from "../index.js";
import { ApiError } from "./errors.js";
import type { ServerMetrics } from "./metrics.js";
import type { ModelRegistry } from "./models.js";
import type { ServerOptions, ServerState } from "./options.js";
import { warmUp } from "./warmup.js";

/**
 * Why an engine cannot serve, or null: its loop stopped after an internal error, or it has had work and
 * finished no step for `livenessTimeoutMs` (a stuck decode). /health and /ready report it; a generation
 * request for that model gets 503 with it.
 */
export function engineTrouble(s: Pick<EngineStats, "healthy" | "stalledMs">, livenessTimeoutMs: number): string | null {
    if (!s.healthy) return "the engine loop stopped after an internal error";
    if (s.stalledMs > livenessTimeoutMs) return `no step finished for ${Math.round(s.stalledMs / 1000)} s with work waiting`;
    return null;
}

export class Lifecycle {
    private stateValue: ServerState = "loading";
    /** Why loading failed, for /health. */
    failure: unknown = null;
    private startup: Promise<void> | undefined;
    private stopping: Promise<void> | null = null;
    private inflight = 0;
    private readonly controllers = new Set<AbortController>();

    constructor(
        private readonly models: ModelRegistry,
        private readonly metrics: ServerMetrics,
        private readonly options: Pick<ServerOptions, "warmup" | "onLoadProgress">,
        private readonly retryAfter: number,
        private readonly livenessTimeoutMs: number,
        private readonly log: () => Logger | undefined,
    ) {}

    get state(): ServerState {
        return this.stateValue;
    }

    /** The models whose engine cannot serve (engineTrouble), and why: /health, /ready and batchwise_ready read it. */
    failedModels(): { model: string; reason: string }[] {
        const failed: { model: string; reason: string }[] = [];
        for (const e of this.models.list()) {
            const reason = e.engine ? engineTrouble(e.engine.health(), this.livenessTimeoutMs) : null;
            if (reason !== null) failed.push({ model: e.name, reason });
        }
        return failed;
    }

    /** Ready for traffic (/ready 200, batchwise_ready 1): loaded, warmed up, not draining, and every engine able to serve. */
    readyForTraffic(): boolean {
        return this.stateValue === "ready" && this.failedModels().length === 0;
    }

    /** Starts loading and warming the models; ready() resolves when they are. */
    boot(): void {
        this.startup = this.load();
        this.startup.catch(() => {});
    }

    /** Resolves when every model is loaded and warmed up; rejects if one failed to load. */
    ready(): Promise<void> {
        return this.startup ?? Promise.resolve();
    }

    private async load(): Promise<void> {
        try {
            for (const e of this.models.list()) {
                if (!e.engine) {
                    const report = this.options.onLoadProgress;
                    const onProgress = report ? (p: number) => report(e.name, p) : undefined;
                    e.engine = await Engine.load({ ...e.spec.options, model: e.spec.path!, ...(onProgress && { onProgress }) });
                    if (this.stopping) throw new BatchwiseError(ErrorCode.EngineClosed, "the server stopped while loading");
                }
            }
            this.stateValue = "warming";
            const w = this.options.warmup ?? true;
            for (const e of this.models.list()) {
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

    /** A generation request may start only when the server is ready: 503 (with Retry-After) otherwise. */
    admit(): void {
        if (this.stateValue === "ready") return;
        const why = this.stateValue === "draining" || this.stateValue === "stopped"
            ? "the server is shutting down and takes no new requests"
            : this.stateValue === "failed" ? "the server failed to load its models" : `the server is not ready yet (${this.stateValue})`;
        throw new ApiError(503, why, "service_unavailable_error", null, this.stateValue === "draining" ? "draining" : "not_ready", this.retryAfter);
    }

    /** Counts a request's generations as in flight until end(): a drain waits for them, and aborts them at its deadline. */
    begin(ac: AbortController): void {
        this.inflight++;
        this.controllers.add(ac);
    }

    end(ac: AbortController): void {
        this.inflight--;
        this.controllers.delete(ac);
    }

    /**
     * Graceful stop: /ready turns 503 and new generation requests get 503 at once; requests in flight
     * finish, for up to `timeoutMs`, and are aborted after it; then `closeHttp` and the engines close.
     */
    drain(timeoutMs: number, closeHttp: () => Promise<void>): Promise<void> {
        this.stopping ??= (async () => {
            this.stateValue = "draining";
            const deadline = performance.now() + timeoutMs;
            while (this.inflight > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
            for (const c of this.controllers) c.abort();
            // aborted requests end at the engine's next step; a wedged decode must not hold the stop forever
            const hard = performance.now() + 10_000;
            while (this.inflight > 0 && performance.now() < hard) await new Promise((r) => setTimeout(r, 5));
            await this.startup?.catch(() => {});
            await closeHttp();
            await this.models.closeAll();
            this.stateValue = "stopped";
        })();
        return this.stopping;
    }
}
