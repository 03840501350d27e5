// Every error a request meets, answered in OpenAI's shape (errors.ts), or in Anthropic's on the routes
// whose API says so (errorShape): schema validation failures (validation.ts), fastify's own (told apart
// by code), and what the routes throw, whose engine fields are named in the route's terms: the route's
// API comes from its registration (config.api).
import type { FastifyReply, FastifyRequest } from "fastify";
import { shared, type ServerContext } from "../context.js";
import { anthropicError, ApiError, toApiError, unsupportedMediaType, type ErrorScope } from "../errors.js";
import { validationError, type ValidationFailure } from "../validation.js";

/** The error of a request in its route's terms: its API's field names, its body. */
export function scopeOf(req: FastifyRequest): ErrorScope {
    return { api: req.routeOptions?.config?.api, body: req.body };
}

export const errorHandling = shared("batchwise-errors", async (app, { ctx }) => {
    app.setErrorHandler((err, req, reply) => {
        let e: ApiError;
        if ((err as { validation?: unknown }).validation) e = validationError(err as unknown as ValidationFailure);
        else if ((err as { code?: string }).code === "FST_ERR_CTP_INVALID_MEDIA_TYPE") e = unsupportedMediaType(req.headers["content-type"] ?? "");
        else e = toApiError(err, scopeOf(req), ctx.settings.retryAfter);
        if (e.status >= 500) req.log.error({ err }, "request failed");
        if (e.retryAfter !== undefined) reply.header("retry-after", String(e.retryAfter));
        if (req.routeOptions?.config?.api?.errorShape === "anthropic") {
            // the Anthropic routes (/v1/messages): Anthropic's body and statuses
            const a = anthropicError(e, req.id);
            void reply.code(a.status).send(a.body);
            return;
        }
        void reply.code(e.status).send(e.body());
    });
    app.setNotFoundHandler((req, reply) => {
        void reply.code(404).send(new ApiError(404, `no route ${req.method} ${req.url.split("?")[0]}`, "not_found_error", null, "not_found").body());
    });
});

/** Fastify's `frameworkErrors` option: a URL that does not decode, or too long a path segment (no route, no hooks ran). */
export function frameworkErrors(ctx: ServerContext) {
    return (err: Error, req: FastifyRequest, reply: FastifyReply) => {
        const e = toApiError(err);
        ctx.metrics.httpRequest("unknown", e.status);
        req.log.info({ method: req.method, url: req.url, status: e.status }, "request");
        void reply.code(e.status).header("x-request-id", req.id).send(e.body());
    };
}
