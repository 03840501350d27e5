// A server-sent-events response, written straight to the socket (the reply is hijacked: fastify's
// serializers and onSend hooks do not run; the headers its hooks set, CORS's, are carried over).
//
// Backpressure: events are not held back for a slow reader. The socket buffers them and generation
// does not wait (the buffer is bounded by the request's max_tokens), so one slow client never stalls
// the batch it decodes in. Disconnect: once the client is gone, writes are dropped; the generations'
// abort is the serving code's (generate.ts aborts them when the response closes unfinished).
import type { OutgoingHttpHeaders, ServerResponse } from "node:http";
import type { FastifyReply, FastifyRequest } from "fastify";
import { toApiError, type ApiError, type ErrorScope } from "./errors.js";

/**
 * How a dialect frames its stream, where it is not OpenAI's chat and completions framing (data lines,
 * an error as {"error": ...}, a last "data: [DONE]"): the Responses and Messages APIs name each event
 * (an `event:` line), end without [DONE], and send an error as an event of their own.
 */
export interface SseFraming {
    /** Whether the stream ends with "data: [DONE]" (default true). */
    done?: boolean;
    /** The event an error after the headers went out is sent as (default: its OpenAI body, unnamed). */
    error?: (e: ApiError) => { event?: string; data: unknown };
}

export class Sse {
    private readonly res: ServerResponse;
    private readonly framing: SseFraming;

    constructor(reply: FastifyReply, requestId: string, framing: SseFraming = {}) {
        this.framing = framing;
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

    /** One event: its data as JSON, named by an `event:` line when `event` is given. */
    send(data: unknown, event?: string): void {
        if (!this.closed) this.res.write(`${event !== undefined ? `event: ${event}\n` : ""}data: ${JSON.stringify(data)}\n\n`);
    }

    end(): void {
        if (!this.closed) this.res.end(this.framing.done === false ? undefined : "data: [DONE]\n\n");
    }

    /** Runs the stream's body; a failure after the headers went out ends the stream with an error event. */
    async guard<T>(req: FastifyRequest, scope: ErrorScope, body: () => Promise<T>): Promise<T | undefined> {
        try {
            return await body();
        } catch (e) {
            req.log.error({ err: e }, "stream failed");
            const api = toApiError(e, scope);
            if (this.framing.error) {
                const ev = this.framing.error(api);
                this.send(ev.data, ev.event);
            } else {
                this.send(api.body());
            }
            this.end();
            return undefined;
        }
    }
}
