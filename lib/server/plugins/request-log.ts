// One structured log line per request (and its count in batchwise_http_requests_total), an
// x-request-id on every response, and status 499 for a client that went away before its response
// ended. Routes add what they know (model, tokens, TTFT) with note().
import { randomUUID } from "node:crypto";
import type { ServerResponse } from "node:http";
import type { FastifyRequest } from "fastify";
import { shared } from "../context.js";
import type { ServerMetrics } from "../metrics.js";

/** A client's x-request-id is echoed when it is this sane (no header injection, no log spam). */
export const SANE_ID = /^[\w.:-]{1,128}$/;

/** The client's x-request-id when it is sane, else a new UUID. */
export function requestId(header: string | string[] | undefined): string {
    return typeof header === "string" && SANE_ID.test(header) ? header : randomUUID();
}

/** What a generation route adds to its request's log line. */
export interface RequestInfo {
    model?: string;
    promptTokens?: number;
    completionTokens?: number;
    cachedTokens?: number;
    ttftMs?: number;
    finishReasons?: string[];
    stream?: boolean;
}

export class RequestLog {
    private readonly info = new WeakMap<FastifyRequest, RequestInfo>();
    private readonly started = new WeakMap<FastifyRequest, number>();
    private readonly logged = new WeakSet<FastifyRequest>();
    /** Responses written straight on the socket (a body timeout, a parse error mid-body), with their status, for the log line. */
    readonly rawStatus = new WeakMap<ServerResponse, number>();

    constructor(private readonly metrics: ServerMetrics) {}

    start(req: FastifyRequest): void {
        this.started.set(req, performance.now());
    }

    note(req: FastifyRequest, info: RequestInfo): void {
        this.info.set(req, info);
    }

    /** The request's one line and count, once, whatever ended it. */
    line(req: FastifyRequest, status: number): void {
        if (this.logged.has(req)) return;
        this.logged.add(req);
        const route = req.routeOptions?.url ?? "unknown";
        this.metrics.httpRequest(route, status);
        const t0 = this.started.get(req);
        const line = { method: req.method, url: req.url, status, ms: t0 === undefined ? 0 : Math.round(performance.now() - t0), ...this.info.get(req) };
        if (req.routeOptions?.config?.probe) req.log.debug(line, "request");
        else req.log.info(line, "request");
    }
}

export const requestLog = shared("batchwise-request-log", async (app, { ctx }) => {
    app.addHook("onRequest", async (req, reply) => {
        ctx.requests.start(req);
        reply.header("x-request-id", req.id);
        // a client that goes away before the response ends gets its line too (status 499, as nginx logs
        // it), unless the server cut it off itself (408 for a body that trickled)
        reply.raw.once("close", () => {
            if (!reply.raw.writableFinished) ctx.requests.line(req, ctx.requests.rawStatus.get(reply.raw) ?? 499);
        });
    });
    app.addHook("onResponse", async (req, reply) => ctx.requests.line(req, reply.statusCode));
});
