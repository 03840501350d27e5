// The infrastructure endpoints, registered as probes (no API key, logged at debug level): /health
// (liveness), /ready (readiness: loaded, warmed, not draining) and /metrics (Prometheus).
import type { ServerPlugin } from "../context.js";

export const probeRoutes: ServerPlugin = async (app, { ctx }) => {
    const probe = { config: { probe: true } };
    app.get("/health", probe, async (_req, reply) => {
        const failed = ctx.lifecycle.failedModels();
        if (failed.length > 0 || ctx.lifecycle.state === "failed") {
            const failure = ctx.lifecycle.failure;
            return reply.code(503).send({ status: "error", failed, error: failure ? String(failure) : undefined });
        }
        return { status: "ok", state: ctx.lifecycle.state };
    });
    app.get("/ready", probe, async (_req, reply) => {
        // a replica whose engine stopped or is stuck takes no traffic until liveness restarts it
        const failed = ctx.lifecycle.state === "ready" ? ctx.lifecycle.failedModels() : [];
        if (ctx.lifecycle.state === "ready" && failed.length === 0) return { status: "ready", models: ctx.models.names };
        void reply.header("retry-after", String(ctx.settings.retryAfter));
        return reply.code(503).send(failed.length > 0 ? { status: "unhealthy", failed } : { status: ctx.lifecycle.state });
    });
    app.get("/metrics", probe, async (_req, reply) => {
        const text = await ctx.metrics.text();
        return reply.header("content-type", ctx.metrics.registry.contentType).send(text);
    });
};
