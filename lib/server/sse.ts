// A server-sent-events response, written straight to the socket (the reply is hijacked: fastify's
// serializers and onSend hooks do not run; the headers its hooks set, CORS's, are carried over).
//
// Backpressure: events are not held back for a slow reader. The socket buffers them and generation
// does not wait (the buffer is bounded by the request's max_tokens), so one slow client never stalls
// the batch it decodes in. Disconnect: once the client is gone, writes are dropped; the generations'
// abort is the serving code's (generate.ts aborts them when the response closes unfinished).
import type { OutgoingHttpHeaders, ServerResponse } from "node:http";
import type { FastifyReply, FastifyRequest } from "fastify";
import { anthropicError, toApiError, type ApiError, type ErrorScope } from "./errors.js";

/**
 * How events are framed: OpenAI's (`data:` lines, an error as an {"error"} data event, `data: [DONE]` at
 * the end) or Anthropic's (each event named in an `event:` line, an error as `event: error` with Anthropic's
 * error body, nothing after its last event).
 */
export type SseDialect = "openai" | "anthropic";

export class Sse {
    private readonly res: ServerResponse;

    constructor(reply: FastifyReply, private readonly requestId: string, private readonly dialect: SseDialect = "openai") {
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

    /** Whether the stream ended, or its client went away. */
    get closed(): boolean {
        return this.res.writableEnded || this.res.destroyed;
    }

    send(data: unknown): void {
        if (!this.closed) this.res.write(`data: ${JSON.stringify(data)}\n\n`);
    }

    /** A named event (Anthropic's framing). */
    event(name: string, data: unknown): void {
        if (!this.closed) this.res.write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);
    }

    /** An error after the headers went out, in the dialect's shape (the stream goes on; end() ends it). */
    error(e: ApiError): void {
        if (this.dialect === "anthropic") this.event("error", anthropicError(e, this.requestId).body);
        else this.send(e.body());
    }

    end(): void {
        if (!this.closed) {
            if (this.dialect === "anthropic") this.res.end();
            else this.res.end("data: [DONE]\n\n");
        }
    }

    /** Runs the stream's body; a failure after the headers went out ends the stream with an error event. */
    async guard<T>(req: FastifyRequest, scope: ErrorScope, body: () => Promise<T>): Promise<T | undefined> {
        try {
            return await body();
        } catch (e) {
            req.log.error({ err: e }, "stream failed");
            this.error(toApiError(e, scope));
            this.end();
            return undefined;
        }
    }
}
