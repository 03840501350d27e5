// What happens below the routes, on the connection: errors node's HTTP parser raises (a malformed
// request, headers too large, a headers timeout), the body timeout (slowloris), an Expect other than
// 100-continue, and HTTP/1.1 without Host. Each is answered in the API's error shape with an
// x-request-id; what no route saw is written as raw HTTP on the socket, which is then closed.
import { randomUUID } from "node:crypto";
import { maxHeaderSize, STATUS_CODES, type IncomingMessage, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { FastifyReply, FastifyRequest } from "fastify";
import type { Logger } from "pino";
import { shared, type ServerContext } from "../context.js";
import { ApiError, badRequest } from "../errors.js";
import { requestId, SANE_ID } from "./request-log.js";

export class RawHttp {
    /** The response in flight on each socket, so that an error the HTTP parser raises mid-request answers with its id. */
    private readonly inFlight = new WeakMap<Duplex, { id: string; res: ServerResponse }>();
    private readonly answered = new WeakSet<Duplex>();

    constructor(private readonly ctx: ServerContext, private readonly log: () => Logger | undefined) {}

    /**
     * An error node's HTTP parser raised ('clientError'): a malformed request, headers too large, a
     * headers timeout. No route saw it, so it is answered here, in raw HTTP on the socket, in the API's
     * shape with an x-request-id (the request's own when one was in flight on the socket).
     */
    onClientError(err: Error & { code?: string; reason?: string; rawPacket?: Buffer }, socket: Duplex): void {
        if (err.code === "ECONNRESET" || socket.destroyed) return;
        const live = this.inFlight.get(socket);
        // a response already under way: nothing can be written in its middle (node does the same)
        if (live?.res.headersSent) {
            socket.destroy();
            return;
        }
        const e = clientError(err, this.ctx.settings.headersTimeoutMs);
        const id = live?.id ?? idFromRawRequest(err.rawPacket) ?? randomUUID();
        if (live) this.ctx.requests.rawStatus.set(live.res, e.status); // logged and counted when its response closes
        else this.ctx.metrics.httpRequest("unknown", e.status);
        // the request's own line comes when its response closes; one that never reached a route gets this one
        if (!live) this.log()?.info({ reqId: id, status: e.status, code: err.code, reason: err.reason }, "request refused by the HTTP parser");
        this.answerOnSocket(socket, e, id);
    }

    /** An Expect other than 100-continue: node would answer a bare 417. */
    onCheckExpectation(req: IncomingMessage, res: ServerResponse): void {
        const e = new ApiError(417, `the server does not support 'Expect: ${String(req.headers.expect).slice(0, 100)}' (only 100-continue)`,
            "invalid_request_error", null, "expectation_failed");
        this.ctx.metrics.httpRequest("unknown", 417);
        const body = JSON.stringify(e.body());
        res.writeHead(417, { "content-type": "application/json; charset=utf-8", "content-length": Buffer.byteLength(body), "x-request-id": requestId(req.headers["x-request-id"]), connection: "close" });
        res.end(body);
    }

    /** Remembers the response in flight on its socket until it closes. */
    track(req: FastifyRequest, reply: FastifyReply): void {
        this.inFlight.set(req.raw.socket, { id: req.id, res: reply.raw });
        reply.raw.once("close", () => {
            if (this.inFlight.get(req.raw.socket)?.res === reply.raw) this.inFlight.delete(req.raw.socket);
        });
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
    watchBody(req: FastifyRequest, reply: FastifyReply): void {
        const { bodyTimeoutMs, bodyMinRate } = this.ctx.settings;
        const raw = req.raw;
        const length = req.headers["content-length"];
        if (raw.complete || (req.headers["transfer-encoding"] === undefined && (length === undefined || length === "0"))) return;
        const socket = raw.socket;
        const start = performance.now();
        const read0 = socket.bytesRead;
        let timer: NodeJS.Timeout | undefined;
        const check = () => {
            if (raw.complete || socket.destroyed) return;
            const deadline = start + bodyTimeoutMs + ((socket.bytesRead - read0) / bodyMinRate) * 1000;
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
            const e = new ApiError(408, `the request body did not arrive in time: a body gets ${bodyTimeoutMs / 1000} s plus 1 s per ${bodyMinRate} bytes sent ` +
                `(${socket.bytesRead - read0} bytes came in ${((now - start) / 1000).toFixed(1)} s)`, "invalid_request_error", null, "request_timeout");
            this.ctx.requests.rawStatus.set(reply.raw, 408);
            req.log.info({ bytes: socket.bytesRead - read0, ms: Math.round(now - start) }, "request body timed out");
            this.answerOnSocket(socket, e, req.id);
        };
        timer = setTimeout(check, bodyTimeoutMs);
        // listeners on the request, not the socket: a keep-alive socket outlives its requests, and one listener
        // per request on it piled up (and held every request's closures) for as long as the client stayed
        const stop = () => clearTimeout(timer);
        raw.once("end", stop);
        raw.once("close", stop);
    }
}

/** The connection-level hooks; `raw` also answers the Fastify options clientErrorHandler (see app.ts). */
export function rawHttp(raw: RawHttp) {
    return shared("batchwise-raw-http", async (app, { ctx }) => {
        app.server.on("checkExpectation", (req: IncomingMessage, res: ServerResponse) => raw.onCheckExpectation(req, res));
        app.addHook("onRequest", async (req, reply) => {
            raw.track(req, reply);
            if (ctx.settings.bodyTimeoutMs > 0) raw.watchBody(req, reply);
            if (req.raw.httpVersion === "1.1" && req.headers.host === undefined) {
                throw badRequest("an HTTP/1.1 request needs a Host header", null, "malformed_request");
            }
        });
    });
}

/** The x-request-id of a request the HTTP parser refused, read from its raw bytes, when sane. */
function idFromRawRequest(raw: Buffer | undefined): string | undefined {
    if (!raw) return undefined;
    const m = /\r\nx-request-id:[ \t]*([^\r\n]*?)[ \t]*\r\n/i.exec(raw.toString("latin1"));
    return m && SANE_ID.test(m[1]) ? m[1] : undefined;
}

/** What a 'clientError' from node's HTTP server means, in the API's shape (told apart by node's code). */
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
